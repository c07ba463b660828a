"""`rafdb`: the RAF-DB basic release.

`EmoLabel/list_patition_label.txt` (sic) lists `train_00001.jpg 5`; images are
`Image/aligned/train_00001_aligned.jpg`, or `Image/original/train_00001.jpg` with --original.
The official test set becomes test/; val/ is carved from train.
"""
from pathlib import Path

from common.errors import UserError
from data.prepare.common import Problems, Sample, find_file

LABELS = {1: "surprise", 2: "fear", 3: "disgust", 4: "happy", 5: "sad", 6: "angry", 7: "neutral"}
_LABEL_FILES = ["EmoLabel/list_patition_label.txt", "EmoLabel/list_partition_label.txt",
                "basic/EmoLabel/list_patition_label.txt"]


def add_arguments(parser) -> None:
    """Options of the `rafdb` kind."""
    parser.add_argument("--original", action="store_true",
                        help="use Image/original/ (whole photos) instead of Image/aligned/ (100x100 faces)")


def read(args, problems: Problems) -> list[Sample]:
    """Samples of the RAF-DB basic release: official train and test."""
    label_file = find_file(Path(args.src), _LABEL_FILES, "RAF-DB label file")
    image_dir = label_file.parent.parent / "Image" / ("original" if args.original else "aligned")
    if not image_dir.is_dir():
        raise UserError(f"{image_dir} is missing: unpack the RAF-DB images next to EmoLabel/"
                        + ("" if args.original else " (or pass --original)"))
    samples = []
    lines = label_file.read_text(errors="replace").splitlines()
    for line_no, line in enumerate(lines, start=1):
        if line.strip():
            sample = _parse_line(line, f"{label_file}:{line_no}", image_dir, args.original, problems)
            if sample is not None:
                samples.append(sample)
    return samples


def _parse_line(line: str, where: str, image_dir: Path, original: bool, problems: Problems):
    fields = line.split()
    if len(fields) != 2 or not fields[1].isdigit():
        problems.report(where, f"expected '<image> <label 1-7>', found {line.strip()!r}")
        return None
    name, code = fields[0], int(fields[1])
    if code not in LABELS:
        problems.report(where, f"label {code} is outside 1-7")
        return None
    split = {"train": "train", "test": "test"}.get(name.split("_")[0])
    if split is None:
        problems.report(where, f"{name} starts with neither train_ nor test_")
        return None
    path = image_dir / (name if original else f"{Path(name).stem}_aligned.jpg")
    if not path.is_file():
        problems.report(where, f"image {path} is missing")
        return None
    return Sample(name=path.name, label=LABELS[code], split=split, source="rafdb", original=str(path), path=path)
