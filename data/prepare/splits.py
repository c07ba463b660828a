"""Train/val/test assignment: official splits kept, missing ones carved, by subject where known.

Carving is stratified by class and seeded, so the same arguments give the same split.
Where subjects are known, a subject's images all land in one split (and one fold).
"""
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from common.errors import UserError
from data.layout import CsvReader
from data.prepare.common import Problems, Sample, require_columns


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
    val_fold: Optional[int] = None


def assign_splits(samples: list[Sample], options: SplitOptions, problems: Problems) -> list[Sample]:
    """Give every sample a split.

    Samples without a split (ckplus, folder) first get test/ held out: fold `options.fold`
    of `options.folds` (or of --folds-csv), else `options.test_fraction` of the images;
    with `val_fold`, that fold becomes val/. Then val/ is the test fold itself with
    `val_is_test`, or carved from train/ when the dataset has no val/ of its own.

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
    if options.val_fold is not None:
        if not (options.folds or options.folds_csv):
            raise UserError("--val-fold needs --folds K or --folds-csv FILE")
        if options.val_fold == options.fold or options.val_is_test:
            raise UserError("--val-fold must differ from --fold and cannot go with --val-is-test")
    if options.folds_csv:
        samples, folds = _folds_from_csv(samples, options, problems)
    elif options.folds:
        if options.folds < 2 or not 0 <= options.fold < options.folds:
            raise UserError(f"--folds {options.folds} --fold {options.fold}: need folds >= 2 and 0 <= fold < folds")
        if options.val_fold is not None and not 0 <= options.val_fold < options.folds:
            raise UserError(f"--val-fold {options.val_fold}: need 0 <= val-fold < folds")
        folds = split_bins(samples, [1 / options.folds] * options.folds, random.Random(f"{options.seed}-folds"))
    elif options.fold:
        raise UserError("--fold needs --folds K or --folds-csv FILE")
    elif options.test_fraction > 0:
        shares = [1 - options.test_fraction, options.test_fraction]
        folds = split_bins(samples, shares, random.Random(f"{options.seed}-test"))  # bin 1 is held out
        options = replace(options, fold=1)
    else:
        folds = [-1] * len(samples)
    for sample, fold in zip(samples, folds):
        sample.split = "test" if fold == options.fold else "val" if fold == options.val_fold else "train"
    return samples


def _folds_from_csv(samples: list[Sample], options: SplitOptions, problems: Problems):
    """(samples whose subject has a fold, the fold of each)."""
    if not all(s.subject for s in samples):
        raise UserError("--folds-csv needs each image's subject: pass --subject-regex (e.g. '^(S\\d+)_')")
    fold_of = read_folds_csv(options.folds_csv, problems)
    if options.fold not in set(fold_of.values()):
        raise UserError(f"--fold {options.fold} is not a fold of {options.folds_csv}: "
                        f"pick one of {sorted(set(fold_of.values()))}")
    if options.val_fold is not None and options.val_fold not in set(fold_of.values()):
        raise UserError(f"--val-fold {options.val_fold} is not a fold of {options.folds_csv}: "
                        f"pick one of {sorted(set(fold_of.values()))}")
    kept = []
    for sample in samples:
        if sample.subject in fold_of:
            kept.append(sample)
        else:
            problems.report(sample.original, f"subject {sample.subject!r} is not in {options.folds_csv}")
    return kept, [fold_of[s.subject] for s in kept]


def read_folds_csv(path: Path, problems: Problems) -> dict[str, int]:
    """Subject → fold from a CSV with the columns `subject,fold`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--folds-csv {path} does not exist: give a CSV with the columns subject,fold")
    fold_of = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = CsvReader(f, path)
        require_columns(reader, ("subject", "fold"), path, "give a CSV with the columns subject,fold")
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
    """Deal images class by class (each class shuffled), each to the bin furthest below its share.

    Dealing the classes one after another in a single pass keeps every class within one
    image of its shares and the totals exact, even for classes too small to give every
    bin an image.
    """
    by_class = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    bins, filled, dealt = [0] * len(labels), [0] * len(shares), 0
    for label in sorted(by_class):
        members = by_class[label]
        rng.shuffle(members)
        for i in members:
            dealt += 1
            best = max(range(len(shares)), key=lambda b: (shares[b] * dealt - filled[b], -b))
            filled[best] += 1
            bins[i] = best
    return bins


def _subject_bins(samples: list[Sample], shares: list[float], rng: random.Random) -> list[int]:
    """Deal whole subjects, biggest first (shuffled among equals), each to the bin it fits best.

    "Fits best" is the smallest rise in a chi-square distance between each bin's counts
    and its share: of every class, and of the total, so that small bins are filled too.
    """
    groups = defaultdict(list)
    for i, sample in enumerate(samples):
        groups[f"{sample.source}/{sample.subject}" if sample.subject else f"\0{i}"].append(i)
    keys = sorted(groups)
    rng.shuffle(keys)
    keys.sort(key=lambda k: -len(groups[k]))  # stable: equal sizes stay shuffled
    totals = Counter(s.label for s in samples)
    totals[None] = len(samples)  # the bin's size, as one more "class"
    filled = [Counter() for _ in shares]
    chosen = {}
    for key in keys:
        counts = Counter(samples[i].label for i in groups[key])
        counts[None] = len(groups[key])
        chosen[key] = min((b for b, share in enumerate(shares) if share > 0),
                          key=lambda b: _chi_square_rise(filled[b], counts, shares[b], totals))
        filled[chosen[key]].update(counts)
    _fill_empty_bins(chosen, groups, shares)
    bins = [0] * len(samples)
    for key, b in chosen.items():
        for i in groups[key]:
            bins[i] = b
    return bins


def _fill_empty_bins(chosen: dict, groups: dict, shares: list[float]) -> None:
    """Give each empty bin with a share the smallest subject of the fullest bin.

    With few, large subjects the best fit can leave a small bin (val/) empty; an empty
    val/ is worse than a slightly uneven one.
    """
    for b, share in enumerate(shares):
        members = Counter(chosen.values())
        donors = [d for d in members if members[d] > 1]
        if share <= 0 or members[b] or not donors:
            continue
        size = Counter()
        for key, d in chosen.items():
            size[d] += len(groups[key])
        donor = max(donors, key=lambda d: (size[d], -d))
        smallest = min((key for key, d in chosen.items() if d == donor), key=lambda k: len(groups[k]))
        chosen[smallest] = b


def _chi_square_rise(filled: Counter, counts: Counter, share: float, totals: Counter) -> float:
    """Rise of sum (filled - target)^2 / target over classes when `counts` join the bin (halved)."""
    return sum(n * (filled[c] + n / 2 - share * totals[c]) / (share * totals[c]) for c, n in counts.items())
