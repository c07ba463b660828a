"""Evaluate a checkpoint: a table per source dataset, per-class metrics, plots and per-image predictions.

    python3 test.py --checkpoint runs/dan-.../best.pth --data Data/rafdb --split test
"""
import argparse
import csv
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from common.errors import ArgumentParser, UserError, number, run_cli
from common.meta import ModelMeta
from common.paths import DEFAULT_MODEL, ROOT
from data.datasets import FaceFolder, find_datasets
from data.loading import Batches, ShardedSampler, TensorCache
from data.transforms import Normalize
from utils.checkpoint import load_model, update_meta
from utils.engine import Precision, Runtime, evaluate
from utils.metrics import (apply_temperature, calibration_bins, calibration_report, expected_calibration_error,
                           fit_temperature, format_table, full_report, mean_kl, multi_target_accuracy)
from utils.misc import cpu_count, resolve_device, setup_backend, setup_logging
from utils.plots import plot_confusion, plot_reliability, plot_tsne

log = logging.getLogger("test")
MIN_TSNE = 5


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Evaluate a facial-expression model.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=str(DEFAULT_MODEL.relative_to(ROOT)),
                   help="a best.pth / last.pth from train.py, or a .safetensors model")
    p.add_argument("--data", nargs="+", default=None, help="dataset folders (default: every dataset under Data/)")
    p.add_argument("--split", default="test", help="split to evaluate (falls back to val where test/ is absent)")
    p.add_argument("--output", default=None, help="folder for metrics, plots and predictions "
                                                   "(default: <checkpoint folder>/test-<split>)")
    p.add_argument("--json", default=None, help="also write the metrics JSON here")
    p.add_argument("--skip-unknown-classes", action="store_true",
                   help="leave out class folders the model does not know (e.g. CK+'s contempt for a FER2013 model)")
    p.add_argument("--exclude-classes", nargs="+", default=[], metavar="CLASS",
                   help="leave these class folders out of the data while the model keeps every class (e.g. "
                        "contempt, to score CK+ on the 6 basic classes: a contempt or neutral answer counts wrong)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True,
                   help="average the prediction with its horizontal flip (--no-tta: one pass, as the FER2013 "
                        "model's published figures were measured)")
    p.add_argument("--calibrate", action="store_true",
                   help="fit the temperature on this split (val only) and store it in the checkpoint's "
                        "metadata if it lowers the calibration error")
    p.add_argument("--batch-size", type=number(int, 1), default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=number(int, -1), default=-1)
    p.add_argument("--no-tsne", action="store_true", help="skip the t-SNE plot (slow for large sets)")
    return p


class FlipTTA(torch.nn.Module):
    """Average a model's logits and features over the image and its mirror."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        a, b = self.model(x), self.model(x.flip(-1))
        return a._replace(logits=(a.logits + b.logits) / 2, features=(a.features + b.features) / 2)


def exclude_classes(dataset: FaceFolder, names) -> None:
    """Drop the images of the named classes from `dataset` (the model keeps predicting them)."""
    unknown = sorted(set(names) - set(dataset.classes))
    if unknown:
        raise UserError(f"--exclude-classes {' '.join(unknown)}: not classes of the model ({', '.join(dataset.classes)})")
    drop = {dataset.classes.index(name) for name in names}
    dataset.samples = [s for s in dataset.samples if s.label not in drop]
    if not dataset.samples:
        raise UserError("--exclude-classes leaves no image to evaluate")


def check_outputs(out: Path, json_path, calibrated: Path, split: str) -> None:
    """Refuse, before the evaluation runs, what would fail after it: an output folder that is a file or
    cannot be written, a --json path that cannot be, --calibrate off val or on a model file that
    cannot be rewritten. Creates `out`."""
    if calibrated is not None and split != "val":
        raise UserError(f"--calibrate fits on val only (this run evaluates {split}): a temperature fitted on "
                        "the test split would make its figures optimistic")
    if out.exists() and not out.is_dir():
        raise UserError(f"--output {out} is a file: give a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--output {out} cannot be created ({err.strerror})") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"--output {out} is not writable")
    if json_path:
        json_path = Path(json_path)
        if json_path.is_dir():
            raise UserError(f"--json {json_path} is a folder: give a file name")
        parent = json_path.parent
        if parent.exists() and not (parent.is_dir() and os.access(parent, os.W_OK)):
            raise UserError(f"--json {json_path}: its folder {parent} is not a writable folder")
    if calibrated is not None and not (os.access(calibrated, os.W_OK) and os.access(calibrated.parent, os.W_OK)):
        raise UserError(f"--calibrate stores the temperature in {calibrated}, which is read-only: copy it somewhere "
                        "writable, or drop --calibrate")


def calibrate(checkpoint: Path, meta: ModelMeta, result: dict, split: str) -> ModelMeta:
    """Fit the temperature on `split` (val only: check_outputs refused others before the evaluation);
    store it in the checkpoint if it lowers the ECE.

    Returns:
        The metadata to evaluate with (with the new temperature, or as it was).
    """
    before = expected_calibration_error(result["probs"], result["labels"])
    temperature = fit_temperature(result["probs"], result["labels"])
    after = expected_calibration_error(apply_temperature(result["probs"], temperature), result["labels"])
    print(f"temperature fitted on {split}: T = {temperature:.4f}; ECE {100 * before:.2f}% at T = 1 -> "
          f"{100 * after:.2f}% at T = {temperature:.4f}")
    if after >= before:
        print("the temperature does not lower the calibration error: the checkpoint is left as it was")
        return meta.replace(temperature=1.0)
    meta = meta.replace(temperature=round(temperature, 4), calibration={
        "fitted_on": split, "ece_before": round(before, 5), "ece_after": round(after, 5)})
    update_meta(checkpoint, meta)
    print(f"stored temperature {temperature:.4f} in {checkpoint}'s metadata (predict.py applies it)")
    return meta


def resolve_split(roots, split: str) -> str:
    if all((Path(r) / split).is_dir() for r in roots):
        return split
    if split == "test" and all((Path(r) / "val").is_dir() for r in roots):
        log.warning("no test/ split in %s: evaluating val/", ", ".join(map(str, roots)))
        return "val"
    raise UserError(f"split {split!r} not found in {', '.join(map(str, roots))}")


def print_report(report: dict, split: str) -> None:
    rows = [[name, m["images"], f"{100 * m['accuracy']:.2f}", f"{100 * m['balanced_accuracy']:.2f}",
             f"{100 * m['macro_f1']:.2f}"] for name, m in report["per_source"].items()]
    rows.append(["all", report["images"], f"{100 * report['accuracy']:.2f}",
                 f"{100 * report['balanced_accuracy']:.2f}", f"{100 * report['macro_f1']:.2f}"])
    print(f"\nResults on the {split} split")
    print(format_table(rows, ["dataset", "images", "accuracy %", "balanced acc %", "macro-F1 %"]))
    rows = [[name, f"{100 * m['precision']:.2f}", f"{100 * m['recall']:.2f}", f"{100 * m['f1']:.2f}", m["support"]]
            for name, m in report["per_class"].items()]
    print()
    print(format_table(rows, ["class", "precision %", "recall %", "F1 %", "images"]))
    cal = report["calibration"]
    line = f"\ncalibration (T = {cal['temperature']:g}): ECE {100 * cal['ece']:.2f}% (15 bins), NLL {cal['nll']:.4f}"
    if "vote_kl" in cal:
        line += (f"; against the annotators' votes ({cal['images_with_votes']} images): mean KL "
                 f"{cal['vote_kl']:.4f} nats, multi-target accuracy (an emotion with >= 30% of the votes) "
                 f"{100 * cal['multi_target_accuracy']:.2f}%")
    print(line)


def main(args) -> dict:
    setup_logging()
    device = resolve_device(args.device)
    setup_backend(device, cpu_count())
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file() and checkpoint == Path(DEFAULT_MODEL.relative_to(ROOT)):
        checkpoint = DEFAULT_MODEL
    if not checkpoint.is_file():
        raise UserError(f"checkpoint {args.checkpoint} not found; train one with python3 train.py "
                        "or pass --checkpoint")
    model, meta = load_model(checkpoint, device)
    roots = [Path(d) for d in args.data] if args.data else find_datasets(ROOT / "Data")
    if not roots:
        raise UserError("no dataset under Data/ and no --data given")
    split = resolve_split(roots, args.split)
    out = Path(args.output) if args.output else checkpoint.parent / f"test-{split}"
    check_outputs(out, args.json, checkpoint if args.calibrate else None, split)
    # A model trained grey reads colour photos grey, as prediction feeds them to it.
    dataset = FaceFolder(roots, split, meta.img_size, classes=meta.classes,
                         skip_unknown=args.skip_unknown_classes, grayscale=meta.grey_input)
    exclude_classes(dataset, args.exclude_classes)
    missing = sorted(set(meta.classes) - {dataset.classes[i] for i in np.unique(dataset.labels)})
    if missing:
        log.info("the data has no images of %s: scored on its %d classes", missing,
                 len(meta.classes) - len(missing))
    workers = args.workers if args.workers >= 0 else min(4, cpu_count())
    cache = TensorCache(dataset, torch.device("cpu"), workers, desc=f"loading {split}")
    batches = Batches(dataset, ShardedSampler(len(dataset), False), args.batch_size, cache)
    net = FlipTTA(model) if args.tta else model
    result = evaluate(net, batches, Normalize(meta.mean, meta.std),
                      Runtime(device, Precision.choose(device, None), channels_last=True), desc=split,
                      keep_features=not args.no_tsne)
    report = full_report(result["labels"], result["preds"], result["sources"], meta.classes, dataset.sources)
    report.update({"checkpoint": str(checkpoint), "split": split, "tta": args.tta,
                   "data": [str(r) for r in roots], "excluded_classes": args.exclude_classes})
    if args.calibrate:
        meta = calibrate(checkpoint, meta, result, split)
    probs = apply_temperature(result["probs"], meta.softmax_temperature)
    report["calibration"] = calibration_report(probs, result["labels"])
    targets, from_votes = dataset.vote_targets(min_votes=1)  # the annotators as they voted
    if targets is not None and from_votes.any():
        voted = from_votes[result["indices"]]
        report["calibration"].update(
            vote_kl=mean_kl(targets[result["indices"]][voted], probs[voted]),
            multi_target_accuracy=multi_target_accuracy(result["preds"][voted], targets[result["indices"]][voted]),
            images_with_votes=int(voted.sum()))
    report["calibration"]["temperature"] = meta.softmax_temperature
    print_report(report, split)

    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    plot_confusion(np.array(report["confusion_matrix"]), meta.classes, out / "confusion_matrix.png",
                   title=f"{split}:")
    plot_reliability(calibration_bins(probs, result["labels"]), out / "reliability.png", title=f"{split}:",
                     ece=report["calibration"]["ece"])
    if args.no_tsne:
        pass
    elif len(result["labels"]) < MIN_TSNE:  # t-SNE needs a perplexity below the number of points
        log.warning("t-SNE needs at least %d images and this split has %d: tsne.png is not drawn", MIN_TSNE,
                    len(result["labels"]))
    else:
        plot_tsne(result["features"], result["labels"], meta.classes, out / "tsne.png")
    with open(out / "predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "source", "label", "prediction", "confidence"] + list(meta.classes))
        for i, idx in enumerate(result["indices"]):
            sample = dataset.samples[idx]
            writer.writerow([sample.path, dataset.sources[sample.source], meta.classes[sample.label],
                             meta.classes[result["preds"][i]], f"{probs[i].max():.4f}"]
                            + [f"{p:.4f}" for p in probs[i]])
    print(f"\nwrote {out}/metrics.json, confusion_matrix.png, reliability.png, "
          f"{'' if args.no_tsne else 'tsne.png, '}predictions.csv")
    return report


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
