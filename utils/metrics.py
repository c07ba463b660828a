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


def calibration_bins(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> Dict[str, np.ndarray]:
    """Top-class confidence against accuracy in `bins` equal-width confidence bins.

    Returns:
        count, confidence (mean top probability) and accuracy of each bin (0 where empty), and
        the bin edges.
    """
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)  # bin (lo, hi]; 0 joins bin 0
    count = np.bincount(which, minlength=bins).astype(np.float64)
    total_conf = np.bincount(which, weights=conf, minlength=bins)
    total_correct = np.bincount(which, weights=correct, minlength=bins)
    safe = np.maximum(count, 1)
    return {"count": count, "confidence": total_conf / safe, "accuracy": total_correct / safe, "edges": edges}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): sum over bins of (bin size / N) * |accuracy - confidence|."""
    b = calibration_bins(probs, labels, bins)
    return float((b["count"] / max(len(labels), 1) * np.abs(b["accuracy"] - b["confidence"])).sum())


def mean_kl(targets: np.ndarray, probs: np.ndarray, eps: float = 1e-12) -> float:
    """Mean KL(q || p) in nats between target distributions q (the annotators') and predictions p."""
    q = targets.astype(np.float64)
    p = np.clip(probs.astype(np.float64), eps, None)
    terms = np.where(q > 0, q * (np.log(np.clip(q, eps, None)) - np.log(p)), 0.0)
    return float(terms.sum(axis=1).mean()) if len(q) else 0.0


def multi_target_accuracy(preds: np.ndarray, targets: np.ndarray, share: float = 0.3) -> float:
    """Share of predictions that name an emotion with at least `share` of the votes
    (FER+'s multi-target view: any emotion enough annotators saw counts as right)."""
    if not len(preds):
        return 0.0
    return float((targets[np.arange(len(preds)), preds] >= share - 1e-9).mean())


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T) from softmax(logits): log-probabilities differ from the logits by a
    per-row constant, which softmax ignores."""
    z = np.log(np.clip(probs.astype(np.float64), 1e-30, None)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-30, None)).mean())


def fit_temperature(probs: np.ndarray, labels: np.ndarray, low: float = 0.05, high: float = 20.0) -> float:
    """The temperature T minimising the negative log-likelihood of softmax(logits / T) (Guo et
    al. 2017), by golden-section search over log T (the NLL is convex in 1 / T)."""
    a, b = np.log(low), np.log(high)
    ratio = (np.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    f = {}
    def loss(t):
        if t not in f:
            f[t] = nll(apply_temperature(probs, float(np.exp(t))), labels)
        return f[t]
    for _ in range(60):
        if loss(c) < loss(d):
            b, d = d, c
            c = b - ratio * (b - a)
        else:
            a, c = c, d
            d = a + ratio * (b - a)
    return float(np.exp((a + b) / 2))


def calibration_report(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> Dict[str, float]:
    """ECE over `bins` confidence bins and the negative log-likelihood."""
    return {"ece": expected_calibration_error(probs, labels, bins), "nll": nll(probs, labels)}
