"""`ferplus`: FER+ (FER2013's images relabelled by 10 annotators each), by the paper's majority protocol.

Reads Kaggle's `fer2013.csv` (--src: emotion, pixels, Usage) and Microsoft's `fer2013new.csv`
(--votes: one row of vote counts per FER2013 row, matched by its `Image name`, fer<row>.png;
rows without one are not faces and are left out). Barsoum et al. 2016 (arXiv 1608.01041): counts below
--min-votes are set to 0 as outliers; an image keeps the emotion with more than half of the
votes left (all 10 columns, unknown and not-a-face included); images without one, or whose
winner is unknown or not-a-face, are left out. Training, PublicTest and PrivateTest become
train/, val/ and test/; images are FER2013's own `fer<row>.png`. The raw counts of every image
written go to `votes.csv` (see data/votes.py), for training on the annotators' distributions.
"""
import argparse
from pathlib import Path
from typing import Optional

from data.classes import normalize_class_name
from data.prepare.common import Problems, Sample
from data.prepare.fer2013 import FERPLUS_VOTES, _csv_path, read_csv, read_ferplus_votes, votes_by_image
from data.votes import NON_EMOTIONS

# fer2013new.csv's columns → votes.csv's: canonical classes, then unknown and not_face.
COLUMNS = {name: "not_face" if name == "NF" else normalize_class_name(name) for name in FERPLUS_VOTES}


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return int(text)


def add_arguments(parser) -> None:
    """Options of the `ferplus` kind."""
    parser.add_argument("--votes", required=True, help="FER+'s fer2013new.csv, the votes of each fer2013.csv row")
    parser.add_argument("--min-votes", type=_positive_int, default=2,
                        help="FER+'s outlier rule: a class with fewer votes than this gets none (default: 2, "
                             "so single votes are dropped; 1 keeps every vote)")
    parser.add_argument("--no-majority", choices=("drop", "keep-argmax"), default="drop",
                        help="images without a strict majority: drop them (the paper's protocol, default), or "
                             "keep the column with the most votes left when no other has as many")


def read(args, problems: Problems) -> list[Sample]:
    """Samples of fer2013.csv labelled by their FER+ majority, each with its raw votes."""
    path = _csv_path(Path(args.src))
    samples = read_csv(path, problems)
    votes = votes_by_image(samples, read_ferplus_votes(Path(args.votes), problems, "--votes"), Path(args.votes),
                           str(path))
    kept = []
    for sample, row in zip(samples, votes):
        if sample is None or row is None:
            continue  # a bad row in either file, reported by its reader
        if not row:
            problems.drop("not a face: no Image name in fer2013new.csv")
            continue
        counts = {COLUMNS[name]: n for name, n in row.items()}
        label = majority(counts, args.min_votes, keep_argmax=args.no_majority == "keep-argmax")
        if label is None:
            problems.drop("no majority")
        elif label in NON_EMOTIONS:
            problems.drop(f"winner {label}")
        else:
            sample.label, sample.source, sample.votes = label, "ferplus", counts
            kept.append(sample)
    return kept


def majority(votes: dict[str, int], min_votes: int = 2, keep_argmax: bool = False) -> Optional[str]:
    """One image's FER+ label: the column with more than half of the votes left once counts
    below `min_votes` are set to 0 (FER+'s outliers), or None where no column has.

    Args:
        votes: counts by column, non-emotions (unknown, not_face) included: they count
            towards the total, and can win.
        keep_argmax: an image without such a majority takes the column with the most votes
            left instead, when no other column has as many.

    Returns:
        The winning column (an emotion, or a non-emotion the caller drops), or None.
    """
    left = {name: n if n >= min_votes else 0 for name, n in votes.items()}
    top = max(left.values(), default=0)
    winners = [name for name, n in left.items() if n == top]
    if top > 0 and (2 * top > sum(left.values()) or keep_argmax and len(winners) == 1):
        return winners[0]
    return None
