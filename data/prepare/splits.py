"""Train/val/test assignment: official splits kept, missing ones carved, by subject where known.

Carving is stratified by class and seeded, so the same arguments give the same split.
Where subjects are known, a subject's images all land in one split (and one fold).
"""
import csv
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from data.prepare.common import Problems, Sample
from utils.errors import UserError


@dataclass(frozen=True)
class SplitOptions:
    """How to split a dataset; see `python3 -m data.prepare folder --help`."""

    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    folds: int = 0
    fold: int = 0
    folds_csv: Optional[Path] = None
    val_is_test: bool = False


def assign_splits(samples: list[Sample], options: SplitOptions, problems: Problems) -> list[Sample]:
    """Give every sample a split.

    Samples without a split (ckplus, folder) first get test/ held out: fold `options.fold`
    of `options.folds` (or of --folds-csv), else `options.test_fraction` of the images.
    Then val/ is the test fold itself with `val_is_test`, or carved from train/ when the
    dataset has no val/ of its own.

    Returns:
        The samples (val copies added with `val_is_test`; samples whose subject is not
        in the folds CSV left out).
    """
    if any(s.split is None for s in samples):
        samples = _hold_out_test(samples, options, problems)
    elif options.folds or options.folds_csv:
        raise UserError("--folds and --folds-csv are for datasets without official splits (ckplus, folder)")
    present = {s.split for s in samples}
    if options.val_is_test:
        if "test" not in present or "val" in present:
            raise UserError("--val-is-test needs a dataset with a test split and no val split of its own")
        return samples + [replace(s, split="val") for s in samples if s.split == "test"]
    if "val" not in present and options.val_fraction > 0:
        train = [s for s in samples if s.split == "train"]
        shares = [1 - options.val_fraction, options.val_fraction]
        for sample, part in zip(train, split_bins(train, shares, random.Random(f"{options.seed}-val"))):
            if part == 1:
                sample.split = "val"
    return samples


def _hold_out_test(samples: list[Sample], options: SplitOptions, problems: Problems) -> list[Sample]:
    if options.folds_csv:
        fold_of = read_folds_csv(options.folds_csv, problems)
        if options.fold not in set(fold_of.values()):
            raise UserError(f"--fold {options.fold} is not a fold of {options.folds_csv}: "
                            f"pick one of {sorted(set(fold_of.values()))}")
        kept = []
        for sample in samples:
            if sample.subject not in fold_of:
                problems.report(sample.original, f"subject {sample.subject!r} is not in {options.folds_csv}")
                continue
            kept.append(sample)
        folds = [fold_of[s.subject] for s in kept]
        samples = kept
    elif options.folds:
        if options.folds < 2 or not 0 <= options.fold < options.folds:
            raise UserError(f"--folds {options.folds} --fold {options.fold}: need folds >= 2 and 0 <= fold < folds")
        folds = split_bins(samples, [1 / options.folds] * options.folds, random.Random(f"{options.seed}-folds"))
    elif options.test_fraction > 0:
        shares = [1 - options.test_fraction, options.test_fraction]
        parts = split_bins(samples, shares, random.Random(f"{options.seed}-test"))
        folds = [0 if part == 1 else 1 for part in parts]  # the held-out part plays fold 0
    else:
        folds = [None] * len(samples)
    test_fold = options.fold if (options.folds or options.folds_csv) else 0
    for sample, fold in zip(samples, folds):
        sample.split = "test" if fold == test_fold else "train"
    return samples


def read_folds_csv(path: Path, problems: Problems) -> dict[str, int]:
    """Subject → fold from a CSV with the columns `subject,fold`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--folds-csv {path} does not exist: give a CSV with the columns subject,fold")
    fold_of = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"subject", "fold"} <= set(reader.fieldnames or ()):
            raise UserError(f"{path} needs the columns subject,fold; it has {reader.fieldnames}")
        for row in reader:
            try:
                fold_of[row["subject"].strip()] = int(row["fold"])
            except (TypeError, ValueError):
                problems.report(f"{path}:{reader.line_num}", f"fold {row['fold']!r} is not a whole number")
    return fold_of


def split_bins(samples: list[Sample], shares: list[float], rng: random.Random) -> list[int]:
    """Deal samples into bins of the given shares, stratified by class.

    Where any subject is known, whole subjects are dealt (images of an unknown subject
    count as subjects of their own), so no subject is in two bins.

    Returns:
        The bin index of each sample, in the order of `samples`.
    """
    if any(s.subject for s in samples):
        return _subject_bins(samples, shares, rng)
    return _image_bins([s.label for s in samples], shares, rng)


def _image_bins(labels: list[str], shares: list[float], rng: random.Random) -> list[int]:
    by_class = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    bins, offset = [0] * len(labels), 0
    for label in sorted(by_class):
        members = by_class[label]
        rng.shuffle(members)
        start = 0
        for b, quota in enumerate(_apportion(len(members), shares, offset)):
            for i in members[start:start + quota]:
                bins[i] = b
            start += quota
        offset += 1  # rotate who gets the rounding, so folds stay the same size
    return bins


def _apportion(n: int, shares: list[float], offset: int) -> list[int]:
    """Split n into whole quotas proportional to shares (largest remainder; ties rotate)."""
    exact = [n * share for share in shares]
    quotas = [math.floor(x + 1e-9) for x in exact]
    order = sorted(range(len(shares)), key=lambda b: (-(exact[b] - quotas[b]), (b - offset) % len(shares)))
    for b in order[:n - sum(quotas)]:
        quotas[b] += 1
    return quotas


def _subject_bins(samples: list[Sample], shares: list[float], rng: random.Random) -> list[int]:
    groups = defaultdict(list)
    for i, sample in enumerate(samples):
        groups[sample.subject or f"\0{i}"].append(i)
    keys = sorted(groups)
    rng.shuffle(keys)
    keys.sort(key=lambda k: -len(groups[k]))  # big subjects first pack best; equal sizes stay shuffled
    totals = Counter(s.label for s in samples)
    targets = [{label: share * n for label, n in totals.items()} for share in shares]
    filled = [Counter() for _ in shares]
    bins = [0] * len(samples)
    for key in keys:
        counts = Counter(samples[i].label for i in groups[key])
        best = min(range(len(shares)), key=lambda b: (
            _added_error(filled[b], targets[b], counts),
            sum(filled[b].values()) / (shares[b] * len(samples)) if shares[b] else math.inf))
        filled[best].update(counts)
        for i in groups[key]:
            bins[i] = best
    return bins


def _added_error(filled: Counter, target: dict, counts: Counter) -> float:
    """How much adding `counts` to a bin moves its class counts away from the target."""
    return sum(abs(filled[c] + n - target[c]) - abs(filled[c] - target[c]) for c, n in counts.items())
