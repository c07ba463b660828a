"""Classification metrics from a confusion matrix, overall, per class and per source dataset.

Balanced accuracy and macro-F1 average over the classes present in the labels, so a test set
holding a subset of the model's classes (CK+ has no neutral) is scored on its own classes.
"""
from typing import Dict, List, Sequence

import numpy as np


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts; rows are true classes, columns predictions."""
    idx = np.asarray(labels, dtype=np.int64) * num_classes + np.asarray(preds, dtype=np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class(cm: np.ndarray) -> Dict[str, np.ndarray]:
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def summarize(cm: np.ndarray) -> Dict[str, float]:
    """accuracy, balanced_accuracy and macro_f1 (over classes with support) and the image count."""
    total = cm.sum()
    stats = per_class(cm)
    present = stats["support"] > 0
    return {
        "images": int(total),
        "accuracy": float(np.trace(cm) / total) if total else 0.0,
        "balanced_accuracy": float(stats["recall"][present].mean()) if present.any() else 0.0,
        "macro_f1": float(stats["f1"][present].mean()) if present.any() else 0.0,
    }


def full_report(labels: np.ndarray, preds: np.ndarray, sources: np.ndarray, classes: Sequence[str],
                source_names: Sequence[str]) -> Dict:
    """Everything test.py reports: overall metrics, per source, per class, confusion matrix."""
    c = len(classes)
    cm = confusion_matrix(labels, preds, c)
    report = summarize(cm)
    report["per_source"] = {
        name: summarize(confusion_matrix(labels[sources == i], preds[sources == i], c))
        for i, name in enumerate(source_names) if (sources == i).any()
    }
    stats = per_class(cm)
    report["per_class"] = {
        name: {"precision": float(stats["precision"][i]), "recall": float(stats["recall"][i]),
               "f1": float(stats["f1"][i]), "support": int(stats["support"][i])}
        for i, name in enumerate(classes)
    }
    report["classes"] = list(classes)
    report["confusion_matrix"] = cm.tolist()
    return report


def format_table(rows: List[List[str]], header: List[str]) -> str:
    """A plain monospace table, columns right-aligned except the first."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    def line(r):
        return "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
    sep = "-" * len(line(header))
    return "\n".join([line(header), sep] + [line(r) for r in rows])
