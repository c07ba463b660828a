"""Command line of `python3 -m data.prepare <kind> --src PATH --dst DIR [options]`."""
import argparse
import logging
from collections import Counter
from pathlib import Path

from data.prepare import affectnet, audit, ckplus, fer2013, ferplus, folder, merge, rafdb
from data.prepare.common import Problems, check_destination, write_dataset
from data.prepare.splits import SplitOptions, assign_splits

log = logging.getLogger("data.prepare")

KINDS = {"rafdb": rafdb, "affectnet": affectnet, "fer2013": fer2013, "ferplus": ferplus, "ckplus": ckplus,
         "folder": folder, "merge": merge}
# Kinds whose releases have no split: test/ is held out by subject fold or fraction.
_UNSPLIT = {"ckplus", "folder"}
# Kinds that read every image under --src, which must therefore not hold --dst.
_SCANNED = {"ckplus", "folder", "merge"}


def get_args_parser() -> argparse.ArgumentParser:
    """Parser with one sub-command per kind, plus `audit`."""
    parser = argparse.ArgumentParser(
        prog="python3 -m data.prepare",
        description="Convert FER dataset releases to <dst>/<split>/<class>/<image>, merge them, audit splits.")
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    for name, module in KINDS.items():
        sub = kinds.add_parser(name, help=_summary(module), description=module.__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_common_arguments(sub, many_sources=name == "merge", unsplit=name in _UNSPLIT)
        module.add_arguments(sub)
    audit.add_arguments(kinds.add_parser("audit", help=_summary(audit), description=audit.__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def _summary(module) -> str:
    """The first line of a kind's docstring without its "`kind`: " prefix."""
    return module.__doc__.splitlines()[0].split(": ", 1)[-1]


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in [0, 1)")
    return value


def _add_common_arguments(parser, *, many_sources: bool, unsplit: bool) -> None:
    if many_sources:
        parser.add_argument("--src", required=True, nargs="+", help="prepared datasets to merge")
    else:
        parser.add_argument("--src", required=True, help="the release as unpacked")
    parser.add_argument("--dst", required=True, help="dataset folder to create (an earlier output is replaced)")
    parser.add_argument("--link", action="store_true",
                        help="hard-link (or symlink) unchanged images instead of copying them")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad item instead of skipping it")
    parser.add_argument("--seed", type=int, default=0, help="seed of the carved splits (default: 0)")
    parser.add_argument("--val-fraction", type=_fraction, default=0.1,
                        help="share of train/ moved to val/ when there is no official val (default: 0.1)")
    if not unsplit:
        return
    parser.add_argument("--test-fraction", type=_fraction, default=0.1,
                        help="share held out as test/ when no --folds are given (default: 0.1; 0: no test/)")
    parser.add_argument("--folds", type=int, default=0,
                        help="cut the dataset into this many folds (by subject where known); --fold is test/")
    parser.add_argument("--folds-csv", default=None, help="CSV with the columns subject,fold, instead of --folds")
    parser.add_argument("--fold", type=int, default=0, help="fold held out as test/ (default: 0)")
    parser.add_argument("--val-fold", type=int, default=None,
                        help="fold used as val/ (e.g. CK+ fold 1 for model selection), instead of carving val/ "
                             "from the training folds")
    parser.add_argument("--val-is-test", action="store_true",
                        help="use the held-out fold as val/ too, instead of carving val/ from train/")


def main(argv=None) -> int:
    """Run one kind; returns the exit status (the audit's is 1 when --strict finds a leak)."""
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.kind == "audit":
        return audit.run(args)
    prepare(args)
    return 0


def prepare(args) -> None:
    """Read the release args.src, split it and write it to args.dst."""
    problems = Problems(strict=args.strict)
    dst = Path(args.dst)
    sources = args.src if isinstance(args.src, list) else [args.src]
    check_destination(dst, [Path(s) for s in sources] if args.kind in _SCANNED else [])
    samples = KINDS[args.kind].read(args, problems)
    samples = assign_splits(samples, _split_options(args), problems)
    info = {"kind": args.kind, "arguments": {k: v for k, v in sorted(vars(args).items()) if k != "kind"}}
    counts = write_dataset(samples, dst, link=args.link, problems=problems, info=info)
    per_split = Counter()
    for (split, _), n in counts.items():
        per_split[split] += n
    shown = ", ".join(f"{split} {per_split[split]:,}" for split in ("train", "val", "test") if split in per_split)
    log.info("wrote %s images to %s: %s", f"{sum(counts.values()):,}", dst, shown)
    if problems.summary():
        (log.warning if problems.skipped else log.info)("%s", problems.summary())


def _split_options(args) -> SplitOptions:
    return SplitOptions(seed=args.seed, val_fraction=args.val_fraction,
                        test_fraction=getattr(args, "test_fraction", 0.0), folds=getattr(args, "folds", 0),
                        fold=getattr(args, "fold", 0), folds_csv=getattr(args, "folds_csv", None),
                        val_is_test=getattr(args, "val_is_test", False), val_fold=getattr(args, "val_fold", None))
