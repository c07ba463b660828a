"""predict.py end to end over a labelled ImageFolder: accuracy, per-class recall and faces found.

    python3 benchmarks/bench_folder.py --data ../shared/data/sfew --split val
    python3 benchmarks/bench_folder.py --data ../shared/data/sfew --split val --checkpoint runs/x/best.safetensors \
        --fallback none --json runs/sfew_val_e2e.json

Each photo goes through EmotionRecognizer.predict, as `predict.py --params PHOTO` does (detector,
fallbacks, alignment, margin, flip TTA, temperature), and the largest face found is its answer. A
photo with no face counts as wrong. Reported: faces found (and how: the detector, the padded
retry, the whole photo), accuracy over all photos and over the answered ones, per-class recall
and its mean over the classes present. The model's answer is its top class among all it knows
(a 7-class set read by an 8-class model can be answered "contempt", which is wrong), as a user sees it.
"""
import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.errors import ArgumentParser, UserError, run_cli  # noqa: E402
from data.classes import normalize_class_name  # noqa: E402
from data.layout import is_image_file  # noqa: E402
from inference.detectors import DETECTORS  # noqa: E402
from inference.fallback import PAD_MODES, Fallback  # noqa: E402
from inference.recognizer import EmotionRecognizer  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="predict.py end to end over a labelled ImageFolder.")
    p.add_argument("--data", required=True, help="a dataset folder (<split>/<class>/...) or a split folder")
    p.add_argument("--split", default="val", help="split under --data ('' when --data is the split itself)")
    p.add_argument("--checkpoint", default=None, help="model file (default: the shipped default model)")
    p.add_argument("--detector", default="auto", choices=sorted(DETECTORS))
    p.add_argument("--fallback", default="all", choices=["all", "pad", "none"],
                   help="all: padded retry, then the whole photo; pad: the retry only; none: the detector alone")
    p.add_argument("--pad", type=float, default=Fallback.pad, help="padding of the retry, a fraction of the side")
    p.add_argument("--pad-mode", default=Fallback.pad_mode, choices=sorted(PAD_MODES))
    p.add_argument("--no-tta", action="store_true")
    p.add_argument("--limit", type=int, default=0, help="at most this many photos per class (0: all)")
    p.add_argument("--json", default=None, help="write the figures and every photo's answer here")
    return p


def list_photos(folder: Path, limit: int = 0):
    """[(path, class name)] under folder/<class>/, sorted; at most `limit` per class."""
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder")
    photos = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and is_image_file(p))
        photos += [(p, normalize_class_name(class_dir.name)) for p in files[:limit or None]]
    if not photos:
        raise UserError(f"no labelled images under {folder} (expected <class>/<image> folders)")
    return photos


def largest(faces):
    return max(faces, key=lambda f: f.box[2] * f.box[3]) if faces else None


def summarize(rows, classes):
    """Figures from [{"label", "prediction" or None, "box_source" or None}]."""
    n = len(rows)
    answered = [r for r in rows if r["prediction"] is not None]
    correct = sum(r["prediction"] == r["label"] for r in answered)
    present = [c for c in classes if any(r["label"] == c for r in rows)]
    recall = {}
    for c in present:
        of_c = [r for r in rows if r["label"] == c]
        recall[c] = sum(r["prediction"] == c for r in of_c) / len(of_c)
    return {"photos": n, "answered": len(answered), "answered_rate": len(answered) / n,
            "box_sources": dict(Counter(r["box_source"] for r in answered)),
            "accuracy": correct / n, "accuracy_answered": correct / len(answered) if answered else 0.0,
            "mean_class_recall": float(np.mean(list(recall.values()))), "recall": recall,
            "support": dict(Counter(r["label"] for r in rows))}


def format_report(name: str, figures: dict) -> str:
    f = figures
    sources = ", ".join(f"{k}: {v}" for k, v in sorted(f["box_sources"].items()))
    lines = [f"{name}: {f['photos']} photos, a face answered for {f['answered']} ({100 * f['answered_rate']:.1f} %; "
             f"{sources or 'none'})",
             f"  accuracy {100 * f['accuracy']:.2f} % of all photos, {100 * f['accuracy_answered']:.2f} % of those "
             f"answered; mean per-class recall {100 * f['mean_class_recall']:.2f} %",
             "  recall: " + "  ".join(f"{c} {100 * r:.1f} % ({f['support'][c]})" for c, r in f["recall"].items())]
    return "\n".join(lines)


def main(args) -> dict:
    folder = Path(args.data) / args.split if args.split else Path(args.data)
    photos = list_photos(folder, args.limit)
    fallback = Fallback(pad=0.0 if args.fallback == "none" else args.pad, pad_mode=args.pad_mode,
                        whole_image=args.fallback == "all")
    recognizer = EmotionRecognizer(args.checkpoint, detector=args.detector, tta=not args.no_tta, fallback=fallback)
    unknown = sorted({label for _, label in photos} - set(recognizer.classes))
    if unknown:
        raise UserError(f"{folder} has classes {unknown} that the model does not know")
    rows, start = [], time.perf_counter()
    for path, label in photos:
        face = largest(recognizer.predict(str(path)))
        rows.append({"path": str(path), "label": label, "prediction": face.emotion if face else None,
                     "box_source": face.box_source if face else None})
    seconds = time.perf_counter() - start
    figures = summarize(rows, recognizer.classes)
    print(format_report(str(folder), figures))
    print(f"  ({seconds:.0f} s, {1000 * seconds / len(rows):.0f} ms per photo; model {recognizer.checkpoint}, "
          f"detector {args.detector}, fallback {args.fallback}"
          f"{'' if args.fallback == 'none' else f' (pad {args.pad} {args.pad_mode})'})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"data": str(folder), "checkpoint": str(recognizer.checkpoint),
                                               "args": vars(args), **figures, "rows": rows}, indent=1))
    return figures


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())
