"""PNG figures: training curves, confusion matrices and t-SNE of features."""
from pathlib import Path
from typing import Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_history(history: List[Dict], path: Path) -> None:
    """Loss and accuracy per epoch, train and val, from the per-epoch log records."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss (train: total, val: cross-entropy)", title="Loss")
    ax_acc.plot(epochs, [100 * h["train_acc"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [100 * h["val_acc"] for h in history], "o-", label="val")
    ax_acc.plot(epochs, [100 * h["val_balanced_acc"] for h in history], "--", label="val (balanced)")
    sources = history[-1].get("val_acc_per_source", {})
    if len(sources) > 1:
        for name in sources:
            ax_acc.plot(epochs, [100 * h.get("val_acc_per_source", {}).get(name, float("nan")) for h in history],
                        ":", label=f"val {name}")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_confusion(cm: np.ndarray, classes: Sequence[str], path: Path, title: str = "") -> None:
    """Counts and row-normalised (recall) confusion matrices side by side; counts that are not whole
    numbers (soft labels, vote-weighted counts) are written with one decimal."""
    cm = np.asarray(cm)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    n = len(classes)
    whole = bool(np.all(cm == np.round(cm)))  # integer dtypes included
    fig, axes = plt.subplots(1, 2, figsize=(6 + 1.2 * n, 0.6 * n + 3))
    counts = cm.astype(np.int64) if whole else cm
    for ax, data, fmt, name in ((axes[0], counts, "d" if whole else ".1f", "counts"),
                                (axes[1], norm, ".2f", "row-normalised")):
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, format(data[i, j], fmt), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks(range(n), classes, rotation=45, ha="right")
        ax.set_yticks(range(n), classes)
        ax.set(xlabel="predicted", ylabel="true", title=f"{title} {name}".strip())
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_tsne(features: np.ndarray, labels: np.ndarray, classes: Sequence[str], path: Path,
              max_points: int = 3000, seed: int = 0) -> None:
    """2-D t-SNE of pooled features, coloured by true class (a seeded subsample when large)."""
    from sklearn.manifold import TSNE  # scikit-learn takes about a second to import: only for t-SNE

    rng = np.random.default_rng(seed)
    if len(features) > max_points:
        keep = rng.choice(len(features), max_points, replace=False)
        features, labels = features[keep], labels[keep]
    perplexity = float(min(30, max(2, (len(features) - 1) // 3)))
    emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
        features.astype(np.float32))
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab10")
    for i, name in enumerate(classes):
        sel = labels == i
        if sel.any():
            ax.scatter(emb[sel, 0], emb[sel, 1], s=6, color=cmap(i % 10), label=name)
    ax.legend(markerscale=3, fontsize=8)
    ax.set(title="t-SNE of pooled features", xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_reliability(bins: Dict[str, np.ndarray], path: Path, title: str = "", ece: float = None) -> None:
    """Reliability diagram: accuracy against confidence per bin (the diagonal is perfect calibration),
    with how many predictions fall in each bin below."""
    edges, count = bins["edges"], bins["count"]
    centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    used = count > 0
    ax.bar(centers[used], bins["accuracy"][used], width=width * 0.95, color="tab:blue", label="accuracy")
    ax.bar(centers[used], bins["confidence"][used] - bins["accuracy"][used], bottom=bins["accuracy"][used],
           width=width * 0.95, color="tab:red", alpha=0.35, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title=f"{title} ECE {100 * ece:.2f}%" if ece is not None else title)
    ax.legend(loc="upper left", fontsize=8)
    ax_n.bar(centers, count, width=width * 0.95, color="grey")
    ax_n.set(xlabel="confidence (top probability)", ylabel="images")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
