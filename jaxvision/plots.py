"""PNG figures of a run: confusion matrix, ROC curves, reliability diagram, training curves."""

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn import metrics as skm

from jaxvision import workdir_files

# Above this many classes per-class labels and curves become unreadable.
_MAX_LABELED_CLASSES = 30


def _figure(*args: Any, figsize: tuple[float, float], **kwargs: Any) -> tuple[Figure, Any]:
    """A figure outside pyplot's global state, so notebooks keep their own backend."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def _save(fig: Any, path: str) -> str:
    kind = path.rsplit(".", 1)[-1] if "." in path.rsplit("/", 1)[-1] else "png"
    workdir_files.write_with(
        path, lambda buffer: fig.savefig(buffer, format=kind, dpi=110, bbox_inches="tight")
    )
    return path


def confusion_matrix(matrix: Sequence[Sequence[int]], class_names: list[str], path: str) -> str:
    """Row-normalised confusion matrix (true rows, predicted columns) with counts."""
    cm = np.asarray(matrix, np.float64)
    k = len(cm)
    normalised = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1.0)
    size = min(4 + 0.45 * k, 20)
    fig, ax = _figure(figsize=(size, size))
    im = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if k <= _MAX_LABELED_CLASSES:
        ax.set_xticks(range(k), class_names, rotation=90)
        ax.set_yticks(range(k), class_names)
        for i in range(k):
            for j in range(k):
                colour = "white" if normalised[i, j] > 0.5 else "black"
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7, color=colour)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix")
    return _save(fig, path)


def roc_curves(labels: np.ndarray, probs: np.ndarray, class_names: list[str], path: str) -> str:
    """One-vs-rest ROC curve per class (or only the micro average for many classes)."""
    fig, ax = _figure(figsize=(6, 6))
    k = probs.shape[1]
    if k <= _MAX_LABELED_CLASSES:
        for c in range(k):
            positives = labels == c
            if positives.all() or not positives.any():
                continue
            fpr, tpr, _ = skm.roc_curve(positives, probs[:, c])
            ax.plot(fpr, tpr, lw=1, label=f"{class_names[c]} ({skm.auc(fpr, tpr):.3f})")
    onehot = np.eye(k)[labels]
    fpr, tpr, _ = skm.roc_curve(onehot.ravel(), probs.ravel())
    ax.plot(fpr, tpr, "k--", lw=2, label=f"micro-average ({skm.auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC curves (one vs rest)")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def reliability_diagram(calibration: dict[str, list[float]], ece: float, path: str) -> str:
    """Accuracy against top-1 confidence per bin, with the bin counts underneath."""
    edges = np.asarray(calibration["edges"])
    count = np.asarray(calibration["count"])
    accuracy = np.asarray(calibration["accuracy"])
    centres = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    fig, (ax, ax_count) = _figure(
        2, 1, figsize=(6, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    used = count > 0
    ax.bar(centres[used], accuracy[used], width=width, edgecolor="black", label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram (ECE {ece:.4f})")
    ax.legend(loc="upper left")
    ax_count.bar(centres, count, width=width, color="grey")
    ax_count.set_xlabel("top-1 confidence")
    ax_count.set_ylabel("examples")
    return _save(fig, path)


def training_curves(records: list[dict[str, float]], path: str) -> str | None:
    """Train loss, eval loss and accuracies over steps from metrics.jsonl records."""
    panels = [
        ("loss", ["train/loss", "eval/loss"]),
        ("accuracy", ["train/accuracy", "eval/accuracy", "eval/accuracy_top5"]),
        ("learning rate", ["train/learning_rate"]),
    ]
    present = [(t, [k for k in keys if any(k in r for r in records)]) for t, keys in panels]
    present = [(t, keys) for t, keys in present if keys]
    if not present:
        return None
    fig, axes = _figure(1, len(present), figsize=(5 * len(present), 4), squeeze=False)
    for ax, (title, keys) in zip(axes[0], present):
        for key in keys:
            points = [(r["step"], r[key]) for r in records if key in r]
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o" if len(points) < 20 else None, ms=3, label=key)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def overlay(image: np.ndarray, heatmap: np.ndarray, path: str, title: str = "") -> str:
    """The image with a heatmap (same H, W; values 0..1) blended on top, side by side."""
    fig, axes = _figure(1, 2, figsize=(6, 3.2))
    shown = image[..., 0] if image.shape[-1] == 1 else image
    cmap = "gray" if shown.ndim == 2 else None
    axes[0].imshow(shown, cmap=cmap)
    axes[1].imshow(shown, cmap=cmap)
    axes[1].imshow(heatmap, cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)
