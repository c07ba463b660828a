"""Annotator votes (FER+'s `votes.csv`): per-image label distributions for training and evaluation.

A `votes.csv` beside a dataset's splits has a `file` column (the image's path relative to the
dataset folder, e.g. `train/happy/fer0000007.png`) and one column of vote counts per class,
plus optional `unknown` and `not_face` columns, as `python3 -m data.prepare ferplus` writes it.
"""
import logging
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from common.errors import UserError

from .classes import normalize_class_name
from .layout import CsvReader

log = logging.getLogger(__name__)

VOTES = "votes.csv"
# Vote columns that name no expression: left out of every distribution.
NON_EMOTIONS = ("unknown", "not_face", "nf")


def read_votes(path: Path) -> Dict[str, Dict[str, int]]:
    """{relative image path: {canonical class or non-emotion column: votes}} from a votes CSV.

    Raises:
        UserError: the file is missing, has no `file` column or holds counts that are not whole numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"votes file {path} not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = CsvReader(f, path)
        columns = [c for c in (reader.fieldnames or []) if c != "file"]
        if "file" not in (reader.fieldnames or []) or not columns:
            raise UserError(f"{path} needs a 'file' column and one column of vote counts per class")
        names = {c: normalize_class_name(c) for c in columns}
        votes = {}
        for row in reader:
            try:
                votes[row["file"]] = {names[c]: int(row[c] or 0) for c in columns}
            except ValueError:
                raise UserError(f"{path}:{reader.line_num}: vote counts must be whole numbers") from None
    return votes


def vote_distribution(counts: Dict[str, int], classes: Sequence[str], min_votes: int = 2) -> Optional[np.ndarray]:
    """The annotators' distribution over `classes`, or None where no vote is left.

    FER+'s outlier rule: a class with fewer than `min_votes` votes (a single stray vote, by
    default) gets none; votes for classes outside `classes` (unknown, not_face) are left out;
    the rest is renormalised to sum to 1.
    """
    dist = np.array([counts.get(c, 0) for c in classes], dtype=np.float64)
    dist[dist < min_votes] = 0
    total = dist.sum()
    return dist / total if total > 0 else None


def soft_targets(paths: Sequence[str], labels: Sequence[int], classes: Sequence[str],
                 votes: Dict[str, Dict[str, int]], min_votes: int = 2) -> Tuple[np.ndarray, np.ndarray]:
    """Each image's vote distribution where `votes` has one, else its one-hot label (images of
    datasets without votes, or whose votes are all outliers).

    Args:
        paths: the images' keys into `votes` (relative paths).
        labels: class index of each image.
        votes: as `read_votes` returns.

    Returns:
        (targets (N, C) float32, whether each row came from votes (N,) bool).
    """
    targets = np.zeros((len(paths), len(classes)), dtype=np.float32)
    from_votes = np.zeros(len(paths), dtype=bool)
    for i, (key, label) in enumerate(zip(paths, labels)):
        dist = vote_distribution(votes[key], classes, min_votes) if key in votes else None
        if dist is None:
            targets[i, label] = 1.0
        else:
            targets[i] = dist
            from_votes[i] = True
    return targets, from_votes


def majority_agreement(targets: np.ndarray, labels: np.ndarray) -> float:
    """Share of images whose folder label is the top class of their distribution (a check that
    votes and folders describe the same images)."""
    return float((targets.argmax(1) == labels).mean()) if len(labels) else 1.0
