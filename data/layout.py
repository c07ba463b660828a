"""How a prepared dataset is laid out on disk: one place for the names every reader and writer uses.

    <root>/<split>/<class>/<file>       split in SPLITS; class folders named by (canonical) class
    <root>/manifest.csv                 MANIFEST_COLUMNS, one row per image (data.prepare writes it)
    <root>/votes.csv                    annotators' votes, where the dataset has them (FER+)

A merged dataset's files are named `<source><SOURCE_SEPARATOR><name>` where no manifest says
their source. `IMAGE_EXTENSIONS` is both what `data.prepare` copies and what `FaceFolder` loads.
"""
import csv
from pathlib import Path
from typing import Tuple, Union

from common.errors import UserError

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


class CsvReader:
    """csv.DictReader (or csv.reader, `dict_rows=False`) over an open text file whose bad bytes or
    over-long fields (csv's limit is 128 KB) are a UserError naming the file and the line, not a
    traceback. Manifests, votes and dataset CSVs are read through it."""

    def __init__(self, f, path, dict_rows: bool = True):
        self._reader = csv.DictReader(f) if dict_rows else csv.reader(f)
        self.path = path

    @property
    def fieldnames(self):
        return self._guard(lambda: self._reader.fieldnames)

    @property
    def line_num(self) -> int:
        return self._reader.line_num

    def __iter__(self):
        return self

    def __next__(self):
        return self._guard(lambda: next(self._reader))

    def _guard(self, step):
        try:
            return step()
        except UnicodeDecodeError:
            raise UserError(f"{self.path}, near line {self.line_num + 1}: not UTF-8 text; save the file as "
                            "UTF-8") from None
        except csv.Error as err:
            raise UserError(f"{self.path}, line {self.line_num}: {err}; is it the right file?") from None
