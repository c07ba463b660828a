"""What every converter shares: the sample record, bad-input reporting and the writer.

A converter turns a release into a list of `Sample`s; `splits.assign_splits` fills in
their splits; `write_dataset` writes them as `<dst>/<split>/<class>/<name>` next to a
`manifest.csv` (and a `votes.csv` where samples carry annotators' votes), in a temporary
folder that is moved into place only when all went well.
"""
import csv
import json
import logging
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from PIL import Image
from tqdm import tqdm

from common.errors import UserError
from data.layout import MANIFEST, MANIFEST_COLUMNS, CsvReader, check_path_part, is_image_file
from data.votes import VOTES

log = logging.getLogger("data.prepare")

# How many skipped items are logged one by one before the rest are only counted.
_LOGGED_PROBLEMS = 20
# Crops that must be re-encoded as JPEG (AffectNet) keep most of their detail at this quality.
JPEG_QUALITY = 95


@dataclass
class Sample:
    """One image of a dataset being prepared.

    Exactly one of `path` (a file copied or linked as it is) and `load` (a function
    that makes the image, e.g. a crop or pixels from a CSV row) is set.

    Attributes:
        name: file name in the prepared dataset, e.g. "train_00001_aligned.jpg".
        label: canonical class name, e.g. "happy".
        split: "train", "val" or "test"; None until the splits are assigned.
        source: dataset the image comes from, e.g. "rafdb".
        original: where it came from: an image file, or "file:line" for CSV pixels.
        subject: person shown, "" when unknown.
        votes: annotators' raw vote counts by column (canonical class, `unknown`, `not_face`),
            e.g. FER+'s; None when the dataset has none. Written to votes.csv.
    """

    name: str
    label: str
    split: Optional[str]
    source: str
    original: str
    subject: str = ""
    path: Optional[Path] = None
    load: Optional[Callable[[], Image.Image]] = None
    votes: Optional[dict[str, int]] = None

    @property
    def relpath(self) -> str:
        """Path inside the prepared dataset, e.g. "train/happy/x.jpg"."""
        return f"{self.split}/{self.label}/{self.name}"


class Problems:
    """Collects bad input: each item is reported with its place, then skipped and counted.

    With `strict`, the first report raises a UserError instead.
    """

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.skipped: list[str] = []
        self.dropped: Counter = Counter()
        self._seen: set[str] = set()

    def report(self, where: str, message: str) -> None:
        """Report a bad item at `where` ("file:line" or a file); raises under --strict."""
        text = f"{where}: {message}"
        if self.strict:
            raise UserError(f"{text} (fix it, or drop --strict to skip such items)")
        if text in self._seen:  # the same image in val/ and test/ is reported once
            return
        self._seen.add(text)
        if len(self.skipped) < _LOGGED_PROBLEMS:
            log.warning("skipped %s", text)
        self.skipped.append(text)

    def drop(self, reason: str) -> None:
        """Count an item left out on purpose (e.g. AffectNet's 'no face' label)."""
        self.dropped[reason] += 1

    def summary(self) -> str:
        """One paragraph on what was dropped and skipped, '' when nothing was."""
        lines = [f"dropped {n} ({reason})" for reason, n in sorted(self.dropped.items())]
        if self.skipped:
            more = len(self.skipped) - _LOGGED_PROBLEMS
            lines.append(f"skipped {len(self.skipped)} bad items (listed above"
                         + (f", {more} more not shown)" if more > 0 else ")"))
        return "\n".join(lines)


def source_name(text: str) -> str:
    """A name usable as a file-name prefix: lower case, [a-z0-9_+-], no '__' inside."""
    name = re.sub(r"[^a-z0-9_+-]+", "_", text.strip().lower())
    name = re.sub(r"_{2,}", "_", name).strip("_")
    return name or "data"


def find_file(root: Path, candidates: list[str], what: str) -> Path:
    """The first of `candidates` (paths relative to `root`) that exists.

    Raises:
        UserError: none exists; the message names what was looked for.
    """
    for candidate in candidates:
        if (root / candidate).exists():
            return root / candidate
    looked = ", ".join(candidates)
    raise UserError(f"no {what} under {root} (looked for {looked}): point --src at the folder that holds it")


def image_files(folder: Path) -> list[Path]:
    """Image files under `folder` (any depth), sorted, hidden files left out."""
    return sorted(p for p in folder.rglob("*")
                  if is_image_file(p) and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def sub_folders(folder: Path) -> list[Path]:
    """Non-hidden sub-folders of `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_manifest(root: Path) -> dict[str, dict]:
    """Rows of `root/manifest.csv` by path; {} when the dataset has none."""
    path = root / MANIFEST
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = CsvReader(f, path)
        require_columns(reader, MANIFEST_COLUMNS, path, "re-create it with python3 -m data.prepare")
        return {row["path"]: row for row in reader}


def require_columns(reader: CsvReader, columns, path: Path, hint: str, kind: str = "columns") -> None:
    """Raise a UserError naming the `columns` the CSV at `path` lacks, followed by `hint`."""
    missing = set(columns) - set(reader.fieldnames or ())
    if missing:
        raise UserError(f"{path} lacks the {kind} {sorted(missing)}: {hint}")


def check_destination(dst: Path, scanned: list[Path]) -> None:
    """Refuse a destination that holds something other than a prepared dataset.

    Re-running replaces an earlier output of this tool (it has a manifest.csv), never
    a folder of the user's own files. `scanned` are the source folders read as a whole
    (a prepared dataset inside one would be read back in on the next run).
    """
    if dst.exists() and not dst.is_dir():
        raise UserError(f"--dst {dst} is a file: give a folder to create")
    if dst.is_dir() and any(dst.iterdir()) and not (dst / MANIFEST).is_file():
        raise UserError(f"--dst {dst} is not empty and is not a prepared dataset: give a new folder")
    for src in scanned:
        if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
            raise UserError(f"--dst {dst} is inside --src {src}: write the prepared dataset elsewhere")


def write_dataset(samples: list[Sample], dst: Path, *, link: bool, problems: Problems,
                  info: dict) -> Counter:
    """Write samples as `<dst>/<split>/<class>/<name>` with manifest.csv and prepare.json,
    and votes.csv (see data/votes.py) when any written sample carries votes.

    Everything goes to a hidden temporary folder next to `dst`, which replaces `dst`
    only at the end, so a failure never leaves a half-prepared dataset.

    Args:
        samples: samples with their splits assigned.
        dst: dataset folder to create or replace.
        link: hard-link (or, across file systems, symlink) files instead of copying.
        problems: where unreadable images are reported.
        info: what to record in prepare.json (kind and arguments).

    Returns:
        Counter of written images by (split, class).
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        written = _write_images(samples, tmp, link, problems)
        if not written:
            raise UserError(f"no image could be written to {dst}: check --src and the warnings above")
        rows = [{"path": s.relpath, "class": s.label, "split": s.split, "source": s.source, "subject": s.subject,
                 "original": s.original} for s in written]
        _write_manifest(tmp / MANIFEST, rows)
        if any(s.votes is not None for s in written):
            _write_votes(tmp / VOTES, written)
        counts = Counter((row["split"], row["class"]) for row in rows)
        _write_info(tmp / "prepare.json", info, counts, problems)
        _replace(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return counts


def _write_images(samples: list[Sample], root: Path, link: bool, problems: Problems) -> list[Sample]:
    """The samples written, in the order of their paths."""
    written, taken = [], set()
    for sample in tqdm(sorted(samples, key=lambda s: s.relpath), desc="writing", unit="img", disable=None):
        if sample.relpath in taken:
            problems.report(sample.original, f"another image is already written as {sample.relpath}")
            continue
        for value, what in ((sample.split, "split"), (sample.label, "class"), (sample.name, "file name")):
            check_path_part(value, what, sample.original)  # names from data never leave the destination
        target = root / sample.relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            _write_image(sample, target, link)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            problems.report(sample.original, f"unreadable image ({err})")
            continue
        taken.add(sample.relpath)
        written.append(sample)
    return written


def _write_image(sample: Sample, target: Path, link: bool) -> None:
    if sample.load is not None:
        image = sample.load()
        if target.suffix.lower() in (".jpg", ".jpeg"):
            image.convert("RGB").save(target, quality=JPEG_QUALITY)
        else:
            image.save(target)
        return
    with Image.open(sample.path) as image:
        image.load()  # a truncated or corrupt file fails here, not in training
    if link:
        try:
            os.link(sample.path, target)
        except OSError:  # another file system, or links not allowed: fall back to a symlink
            os.symlink(Path(sample.path).resolve(), target)
    else:
        shutil.copyfile(sample.path, target)


def _write_manifest(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _write_votes(path: Path, samples: list[Sample]) -> None:
    """One row per sample with votes: its path, then its counts (0 for a column it lacks)."""
    columns = list(dict.fromkeys(name for s in samples if s.votes for name in s.votes))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["file", *columns])
        writer.writerows([s.relpath, *(s.votes.get(name, 0) for name in columns)]
                         for s in samples if s.votes is not None)


def _write_info(path: Path, info: dict, counts: Counter, problems: Problems) -> None:
    table: dict = {}
    for (split, label), n in sorted(counts.items()):
        table.setdefault(split, {})[label] = n
    record = dict(info, counts=table, dropped=dict(sorted(problems.dropped.items())),
                  skipped=len(problems.skipped))
    path.write_text(json.dumps(record, indent=2) + "\n")


def _replace(tmp: Path, dst: Path) -> None:
    """Move `tmp` to `dst`, replacing an earlier prepared dataset there."""
    if not dst.exists():
        tmp.rename(dst)
        return
    old = dst.parent / f".{dst.name}.old-{os.getpid()}"
    dst.rename(old)
    tmp.rename(dst)
    shutil.rmtree(old)
