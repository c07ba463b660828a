"""`fer2013`: FER2013's `fer2013.csv` (or Kaggle's `icml_face_data.csv`), optionally relabelled by FER+.

Each row holds an emotion (0-6), 48x48 grey pixels and a Usage: Training, PublicTest and
PrivateTest become train/, val/ and test/. Images are written as PNG, so pixels survive exactly.
With --ferplus `fer2013new.csv` (10 annotator votes per row, same row order), each image
takes the label with the most votes (a plain plurality); images whose top vote is unknown or
not-a-face, or is tied, are dropped. The `ferplus` kind follows the FER+ paper's majority
protocol instead, and writes the votes to votes.csv.
"""
from functools import partial
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from common.errors import UserError
from data.classes import normalize_class_name
from data.layout import CsvReader
from data.prepare.common import Problems, Sample, log, require_columns

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
USAGE = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
SIZE = 48
_CSV_NAMES = ("fer2013.csv", "icml_face_data.csv", "fer2013/fer2013.csv")
FERPLUS_VOTES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                  "unknown", "NF")


def add_arguments(parser) -> None:
    """Options of the `fer2013` kind."""
    parser.add_argument("--ferplus", default=None,
                        help="FER+ fer2013new.csv: relabel each image by its annotators' plurality (8 classes); "
                             "the ferplus kind follows the FER+ paper's majority protocol and writes votes.csv")


def read(args, problems: Problems) -> list[Sample]:
    """Samples of fer2013.csv, labelled by FER2013 or, with --ferplus, by FER+."""
    path = _csv_path(Path(args.src))
    samples = read_csv(path, problems)
    if args.ferplus:
        samples = relabel_ferplus(samples, Path(args.ferplus), problems)
    return [s for s in samples if s is not None]


def _csv_path(src: Path) -> Path:
    if src.is_file():
        return src
    for name in _CSV_NAMES:
        if (src / name).is_file():
            return src / name
    raise UserError(f"no fer2013.csv or icml_face_data.csv at {src}: give the CSV file or its folder as --src")


def read_csv(path: Path, problems: Problems) -> list:
    """One entry per data row, in file order: a Sample, or None for a bad row (reported)."""
    samples = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = CsvReader(f, path, dict_rows=False)
        header = [name.strip() for name in next(reader, [])]
        if not {"emotion", "pixels"} <= set(header):
            raise UserError(f"{path} needs the columns emotion and pixels (and Usage); it has {header}")
        column = {name: i for i, name in enumerate(header)}
        if "Usage" not in column:
            log.warning("%s has no Usage column: every row is taken as Training, so FER2013's own PublicTest and "
                        "PrivateTest splits are lost (val/ is drawn at random by --val-fraction, and there is no "
                        "test/); use the fer2013.csv that has the Usage column to keep them", path)
        for index, row in enumerate(tqdm(reader, desc=path.name, unit="row", disable=None)):
            samples.append(_parse_row(row, column, index, f"{path}:{reader.line_num}", problems))
    return samples


def _parse_row(row: list[str], column: dict, index: int, where: str, problems: Problems):
    if len(row) != len(column):
        problems.report(where, f"expected {len(column)} fields, found {len(row)}")
        return None
    emotion = row[column["emotion"]].strip()
    if not emotion.isdigit() or int(emotion) >= len(LABELS):
        problems.report(where, f"emotion {emotion!r} is outside 0-6")
        return None
    usage = row[column["Usage"]].strip() if "Usage" in column else "Training"
    if usage not in USAGE:
        problems.report(where, f"Usage {usage!r} is none of {', '.join(USAGE)}")
        return None
    try:
        pixels = bytes(map(int, row[column["pixels"]].split()))
    except ValueError:
        problems.report(where, "pixels must be whole numbers 0-255 separated by spaces")
        return None
    if len(pixels) != SIZE * SIZE:
        problems.report(where, f"expected {SIZE * SIZE} pixels, found {len(pixels)}")
        return None
    # FER+ names the image of data row i fer{i:07d}.png; the same name links the two files.
    return Sample(name=f"fer{index:07d}.png", label=LABELS[int(emotion)], split=USAGE[usage],
                  source="fer2013", original=where, load=partial(pixels_to_image, pixels))


def pixels_to_image(pixels: bytes) -> Image.Image:
    """A 48x48 grey image from its 2,304 pixel values, row by row."""
    return Image.frombytes("L", (SIZE, SIZE), pixels)


def relabel_ferplus(samples: list, path: Path, problems: Problems) -> list:
    """Replace FER2013 labels by the FER+ plurality vote of the same row."""
    votes = votes_by_image(samples, read_ferplus_votes(path, problems, "--ferplus"), path)
    relabelled = []
    for sample, vote in zip(samples, votes):
        label = _majority(vote, problems) if sample is not None and vote is not None else None
        if label is not None:
            sample.label, sample.source = label, "ferplus"
            relabelled.append(sample)
    return relabelled


def read_ferplus_votes(path: Path, problems: Problems, option: str) -> list:
    """One (image name, votes) per data row of FER+'s fer2013new.csv (given as `option`), in file
    order: votes are {column of FERPLUS_VOTES: count}, or None for a bad row (reported); the name
    is "" for a row FER+ left out (not a face)."""
    if not path.is_file():
        raise UserError(f"{option} {path} does not exist: give FER+'s fer2013new.csv")
    votes = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = CsvReader(f, path)
        require_columns(reader, FERPLUS_VOTES, path, "is it FER+'s fer2013new.csv?", kind="vote columns")
        for row in reader:
            name = (row.get("Image name") or "").strip()
            if not name:
                votes.append(("", {}))
                continue
            try:
                votes.append((name, {column: int(row[column]) for column in FERPLUS_VOTES}))
            except (TypeError, ValueError):
                problems.report(f"{path}:{reader.line_num}", "votes must be whole numbers")
                votes.append((name, None))
    return votes


def votes_by_image(samples: list, votes: list, path: Path, csv_name: str = "the FER2013 CSV") -> list:
    """Each FER2013 sample's FER+ votes, matched by image name (FER+ names data row i
    fer<i>.png): {column: count}, {} for an image FER+ left out as not a face, None for a bad
    row. Row order is not trusted: a shifted votes file would relabel every image.

    Raises:
        UserError: names that are not images of the CSV, a name given twice, or images that
            neither a named row nor a not-a-face row accounts for; each with its count.
    """
    if len(votes) != len(samples):
        raise UserError(f"{path} has {len(votes)} rows but {csv_name} has {len(samples)}: "
                        "give the fer2013new.csv that goes with this fer2013.csv")
    names = {f"fer{i:07d}.png" for i in range(len(samples))}
    by_name, twice, unknown = {}, 0, 0
    for name, counts in votes:
        if not name:
            continue
        twice += name in by_name
        unknown += name not in names
        by_name[name] = counts
    unnamed = sum(1 for name, _ in votes if not name)
    missing = len(names) - len(set(by_name) & names)
    if unknown or twice or missing != unnamed:
        raise UserError(f"{path} does not match the FER2013 CSV by image name: {unknown} names are not its rows, "
                        f"{twice} are given twice, {missing} images have no named row against {unnamed} rows "
                        "without a name; give the fer2013new.csv that goes with this fer2013.csv")
    return [by_name.get(f"fer{i:07d}.png", {}) for i in range(len(samples))]


def _majority(votes: dict, problems: Problems):
    """The label with the most votes, or None (counted) for none, a tie, unknown or not-a-face."""
    if not votes:
        problems.drop("not in FER+")
        return None
    top = max(votes.values())
    winners = [name for name, n in votes.items() if n == top]
    if len(winners) > 1:
        problems.drop("FER+ tie")
        return None
    if winners[0] in ("unknown", "NF"):
        problems.drop(f"FER+ majority {winners[0]}")
        return None
    return normalize_class_name(winners[0])
