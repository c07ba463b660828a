"""`affectnet`: AffectNet's manually annotated release, or its smaller 8-class release.

Manual release: `training.csv` / `validation.csv` with the columns subDirectory_filePath,
face_x, face_y, face_width, face_height, facial_landmarks, expression, valence, arousal;
faces are cropped by the box. Smaller release: `train_set/` and `val_set/`, each
`images/<i>.jpg` with `annotations/<i>_exp.npy`. Official validation becomes test/.
"""
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image
from tqdm import tqdm

from common.errors import UserError
from data.layout import CsvReader
from data.prepare.common import Problems, Sample, image_files, require_columns

LABELS = {0: "neutral", 1: "happy", 2: "sad", 3: "surprise", 4: "fear", 5: "disgust", 6: "angry", 7: "contempt"}
# 8 none, 9 uncertain, 10 no face: not expressions, left out.
_NOT_EXPRESSIONS = {8: "none", 9: "uncertain", 10: "no face"}
_COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "expression")
_CSV_FOLDERS = ("", "Manually_Annotated_file_lists")
_IMAGE_FOLDERS = ("Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images",
                  "Manually_Annotated", "")


def add_arguments(parser) -> None:
    """Options of the `affectnet` kind."""
    parser.add_argument("--classes", type=int, choices=(7, 8), default=8,
                        help="8 keeps contempt, 7 drops it (default: 8)")
    parser.add_argument("--images", default=None,
                        help="folder that subDirectory_filePath is relative to "
                             "(default: Manually_Annotated_Images/ under --src)")


def read(args, problems: Problems) -> list[Sample]:
    """Samples of whichever AffectNet release --src holds."""
    root = Path(args.src)
    if not root.is_dir():
        raise UserError(f"--src {root} is not a folder: give the AffectNet folder")
    for folder in _CSV_FOLDERS:
        if (root / folder / "training.csv").is_file():
            return _read_manual(root / folder, _image_root(root, args.images), args.classes, problems)
    if (root / "train_set").is_dir():
        return _read_small(root, args.classes, problems)
    raise UserError(f"{root} holds neither training.csv (manually annotated release) nor train_set/ "
                    "(smaller release): point --src at the folder that does")


def _image_root(root: Path, images: Optional[str]) -> Path:
    if images:
        if not Path(images).is_dir():
            raise UserError(f"--images {images} is not a folder")
        return Path(images)
    return next(root / f for f in _IMAGE_FOLDERS if (root / f).is_dir())


def _label(code: int, classes: int, where: str, problems: Problems):
    """The class of an expression code, or None (dropped or reported)."""
    if code in _NOT_EXPRESSIONS:
        problems.drop(f"expression {code}, {_NOT_EXPRESSIONS[code]}")
        return None
    if code not in LABELS:
        problems.report(where, f"expression {code} is outside 0-10")
        return None
    if LABELS[code] == "contempt" and classes == 7:
        problems.drop("contempt, --classes 7")
        return None
    return LABELS[code]


def _read_manual(csv_dir: Path, image_root: Path, classes: int, problems: Problems) -> list[Sample]:
    samples = []
    for file_name, split in (("training.csv", "train"), ("validation.csv", "test")):
        path = csv_dir / file_name
        if not path.is_file():
            raise UserError(f"{path} is missing: the manually annotated release has training.csv and validation.csv")
        samples += _read_manual_csv(path, split, image_root, classes, problems)
    return samples


def _read_manual_csv(path: Path, split: str, image_root: Path, classes: int, problems: Problems) -> list[Sample]:
    samples = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = CsvReader(f, path)
        require_columns(reader, _COLUMNS, path, "is it AffectNet's training.csv?")
        for row in tqdm(reader, desc=path.name, unit="row", disable=None):
            where = f"{path}:{reader.line_num}"
            try:
                box = tuple(int(float(row[c])) for c in ("face_x", "face_y", "face_width", "face_height"))
                code = int(row["expression"])
            except (TypeError, ValueError):
                problems.report(where, "malformed row: face box and expression must be numbers")
                continue
            label = _label(code, classes, where, problems)
            if label is None:
                continue
            image = image_root / row["subDirectory_filePath"]
            if not image.is_file():
                problems.report(where, f"image {image} is missing")
                continue
            suffix = ".jpg" if image.suffix.lower() in (".jpg", ".jpeg") else ".png"
            name = row["subDirectory_filePath"].replace("/", "_").rsplit(".", 1)[0] + suffix
            samples.append(Sample(name=name, label=label, split=split, source="affectnet",
                                  original=str(image), load=partial(crop_face, image, box)))
    return samples


def crop_face(path: Path, box: tuple[int, int, int, int]) -> Image.Image:
    """The face box (x, y, width, height) of an image, clipped to the image."""
    with Image.open(path) as image:
        image = image.convert("RGB")
    x, y, w, h = box
    left, top = max(x, 0), max(y, 0)
    right, bottom = min(x + w, image.width), min(y + h, image.height)
    if right <= left or bottom <= top:
        raise ValueError(f"face box {box} lies outside the {image.width}x{image.height} image")
    return image.crop((left, top, right, bottom))


def _read_small(root: Path, classes: int, problems: Problems) -> list[Sample]:
    samples = []
    for folder, split in (("train_set", "train"), ("val_set", "test")):
        if not (root / folder / "images").is_dir():
            raise UserError(f"{root / folder / 'images'} is missing: the smaller AffectNet release has "
                            "train_set/images and val_set/images")
        for image in tqdm(image_files(root / folder / "images"), desc=folder, unit="img", disable=None):
            label = _small_label(root / folder / "annotations" / f"{image.stem}_exp.npy", classes, problems)
            if label is not None:
                samples.append(Sample(name=image.name, label=label, split=split, source="affectnet",
                                      original=str(image), path=image))
    return samples


def _small_label(path: Path, classes: int, problems: Problems):
    try:
        code = int(str(np.load(path, allow_pickle=False).reshape(-1)[0]))
    except FileNotFoundError:
        problems.report(str(path), "annotation file is missing")
        return None
    except (OSError, ValueError, IndexError) as err:
        problems.report(str(path), f"unreadable annotation ({err})")
        return None
    return _label(code, classes, str(path), problems)
