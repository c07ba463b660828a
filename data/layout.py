"""How a prepared dataset is laid out on disk: one place for the names every reader and writer uses.

    <root>/<split>/<class>/<file>       split in SPLITS; class folders named by (canonical) class
    <root>/manifest.csv                 MANIFEST_COLUMNS, one row per image (data.prepare writes it)
    <root>/votes.csv                    annotators' votes, where the dataset has them (FER+)

A merged dataset's files are named `<source><SOURCE_SEPARATOR><name>` where no manifest says
their source. `IMAGE_EXTENSIONS` is both what `data.prepare` copies and what `FaceFolder` loads.
"""
from pathlib import Path
from typing import Tuple, Union

from utils.errors import UserError

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("path", "class", "split", "source", "subject", "original")
SOURCE_SEPARATOR = "__"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".pgm", ".ppm")


def is_image_file(path: Union[str, Path]) -> bool:
    """Whether the name ends in one of IMAGE_EXTENSIONS (any case)."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def split_source_prefix(name: str) -> Tuple[str, str]:
    """(source, rest) of a merged dataset's file name `<source>__<rest>`, else ("", name).

    data.prepare's source names never contain the separator, so the first one ends the source.
    """
    source, separator, rest = name.partition(SOURCE_SEPARATOR)
    return (source, rest) if separator and source else ("", name)


def check_path_part(value: str, what: str, where: str) -> str:
    """`value` as one plain path component, or a UserError naming `what` it is and `where` it came from.

    Class, source, split and file names read from files (manifests, votes, CSVs) become folders and
    file names of a prepared dataset: a name such as `../../tmp/x` would write outside it.
    """
    if (not value or value in (".", "..") or "/" in value or "\\" in value or "\0" in value
            or Path(value).is_absolute()):
        raise UserError(f"{where}: the {what} {value!r} is not a plain name (no path separators, not '.' "
                        "or '..'); fix the file")
    return value
