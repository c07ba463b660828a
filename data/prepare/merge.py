"""`merge`: several prepared datasets into one, each image keeping its source and split.

File names become `<source>__<name>`, so the source survives without the manifest. A
class map renames or drops classes, e.g. the original DAN repository's six classes:
`--class-map neutral=-,contempt=-`. A dataset's votes.csv comes along, its rows under the
merged names, its columns renamed (or dropped) by the class map like the folders.
"""
import json
from pathlib import Path
from typing import Optional

from common.errors import UserError
from data.classes import normalize_class_name
from data.layout import SOURCE_SEPARATOR, SPLITS
from data.prepare.common import Problems, Sample, image_files, read_manifest, source_name, sub_folders
from data.votes import VOTES, read_votes


def add_arguments(parser) -> None:
    """Options of the `merge` kind."""
    parser.add_argument("--class-map", default=None,
                        help="rename or drop classes: 'old=new,...' ('old=-' drops old), or a JSON file "
                             "{old: new or null}; e.g. 'neutral=-,contempt=-,sadness=sad'")


def read(args, problems: Problems) -> list[Sample]:
    """Samples of every --src dataset, named `<source>__<name>`."""
    class_map = parse_class_map(args.class_map)
    samples = []
    for src in args.src:
        samples += _read_prepared(Path(src), class_map, problems)
    return samples


def parse_class_map(text) -> dict:
    """{canonical old name: canonical new name, or None to drop} from 'a=b,c=-' or a JSON file."""
    if not text:
        return {}
    if Path(text).is_file():
        try:
            pairs = json.loads(Path(text).read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"--class-map {text} is not valid JSON ({err})") from None
        if not isinstance(pairs, dict):
            raise UserError(f"--class-map {text} must hold a JSON object {{old: new or null}}")
        pairs = {old: (new or "-") for old, new in pairs.items()}
    else:
        pairs = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            old, sep, new = item.partition("=")
            if not sep or not old.strip():
                raise UserError(f"--class-map item {item!r} is not 'old=new' or 'old=-'")
            pairs[old] = new
    mapped, given = {}, {}
    for old, new in pairs.items():
        key = normalize_class_name(old)
        if key in mapped:  # e.g. happy=sad and joy=happy: joy is happy, so one would silently win
            raise UserError(f"--class-map maps {key} twice ({given[key]!r} and {old}={new}, synonyms of one "
                            "class): keep one")
        mapped[key] = None if new.strip() in ("", "-") else normalize_class_name(new)
        given[key] = f"{old}={new}"
    return mapped


def _read_prepared(root: Path, class_map: dict, problems: Problems) -> list[Sample]:
    split_dirs = [root / split for split in SPLITS if (root / split).is_dir()] if root.is_dir() else []
    if not split_dirs:
        raise UserError(f"{root} is not a prepared dataset (no train/, val/ or test/): "
                        "prepare it first with python3 -m data.prepare")
    manifest = read_manifest(root)
    votes = read_votes(root / VOTES) if (root / VOTES).is_file() else {}
    fallback_source = source_name(root.resolve().name)
    samples = []
    for split_dir in split_dirs:
        for class_dir in sub_folders(split_dir):
            for path in image_files(class_dir):
                relpath = path.relative_to(root).as_posix()
                sample = _merged_sample(path, split_dir.name, class_dir.name, manifest.get(relpath, {}),
                                        fallback_source, class_map, problems)
                if sample is not None:
                    sample.votes = _mapped_votes(votes.get(relpath), class_map)
                    samples.append(sample)
    return samples


def _mapped_votes(counts: Optional[dict], class_map: dict) -> Optional[dict]:
    """Vote counts with the class map applied to their columns: a renamed class's votes join
    its new class, a dropped class's votes go."""
    if counts is None:
        return None
    mapped = {}
    for name, n in counts.items():
        new = class_map.get(name, name)
        if new is not None:
            mapped[new] = mapped.get(new, 0) + n
    return mapped


def _merged_sample(path: Path, split: str, folder_class: str, row: dict, fallback_source: str,
                   class_map: dict, problems: Problems):
    label = normalize_class_name(row.get("class") or folder_class)
    if label in class_map:
        if class_map[label] is None:
            problems.drop(f"{label}, --class-map")
            return None
        label = class_map[label]
    source = source_name(row.get("source") or fallback_source)
    prefix = source + SOURCE_SEPARATOR
    name = path.name if path.name.startswith(prefix) else prefix + path.name
    return Sample(name=name, label=label, split=split, source=source, original=row.get("original") or str(path),
                  subject=row.get("subject", ""), path=path)
