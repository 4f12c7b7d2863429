"""Classification metrics from per-example probabilities, computed with scikit-learn.

Top-1/top-5 accuracy, cross-entropy, per-class precision/recall/F1 with macro and
weighted averages, the confusion matrix, one-vs-rest ROC-AUC and the expected
calibration error. Everything is plain numpy in, JSON-ready Python out.
"""

from typing import Any

import numpy as np
from sklearn import metrics as skm

ECE_BINS = 15


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable: the row max is subtracted first)."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def cross_entropy(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean softmax cross-entropy from logits, as the train/eval steps compute it."""
    z = np.asarray(logits, np.float64)
    m = z.max(axis=-1, keepdims=True)
    log_z = m[:, 0] + np.log(np.exp(z - m).sum(axis=-1))
    return float(np.mean(log_z - z[np.arange(len(labels)), labels]))


def calibration_bins(
    labels: np.ndarray, probs: np.ndarray, num_bins: int = ECE_BINS
) -> dict[str, list[float]]:
    """Top-1 confidence histogram: per equal-width bin its count, mean confidence, accuracy."""
    confidence = probs.max(axis=-1)
    correct = (probs.argmax(axis=-1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    # Bins are (lo, hi]; a confidence of exactly 0 cannot occur for a top-1 probability.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, num_bins - 1)
    count = np.bincount(index, minlength=num_bins).astype(np.float64)
    safe = np.maximum(count, 1.0)
    return {
        "edges": edges.tolist(),
        "count": count.tolist(),
        "confidence": (np.bincount(index, confidence, num_bins) / safe).tolist(),
        "accuracy": (np.bincount(index, correct, num_bins) / safe).tolist(),
    }


def expected_calibration_error(
    labels: np.ndarray, probs: np.ndarray, num_bins: int = ECE_BINS
) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over top-1 confidence bins.

    scikit-learn has no multi-class ECE, so this is the one metric written here.
    """
    bins = calibration_bins(labels, probs, num_bins)
    count = np.asarray(bins["count"])
    gap = np.abs(np.asarray(bins["accuracy"]) - np.asarray(bins["confidence"]))
    return float(np.sum(count * gap) / max(count.sum(), 1.0))


def roc_auc(labels: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """One-vs-rest ROC-AUC per class, and its macro and prevalence-weighted means.

    A class without both positives and negatives in `labels` has no ROC curve: its
    entry is None and the averages are over the remaining classes.
    """
    num_classes = probs.shape[1]
    per_class: list[float | None] = []
    for c in range(num_classes):
        positives = labels == c
        if positives.all() or not positives.any():
            per_class.append(None)
        else:
            per_class.append(float(skm.roc_auc_score(positives, probs[:, c])))
    defined = [c for c, v in enumerate(per_class) if v is not None]
    if not defined:
        return {"per_class": per_class, "macro": None, "weighted": None}
    support = np.bincount(labels, minlength=num_classes)[defined]
    values = np.asarray([per_class[c] for c in defined])
    return {
        "per_class": per_class,
        "macro": float(values.mean()),
        "weighted": float(np.average(values, weights=support)),
    }


def classification_report(
    labels: np.ndarray, logits: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """Every metric of an eval report for integer `labels` [N] and `logits` [N, K]."""
    labels = np.asarray(labels, np.int64)
    probs = softmax(logits)
    num_classes = probs.shape[1]
    classes = np.arange(num_classes)
    predicted = probs.argmax(axis=-1)
    k = min(5, num_classes)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predicted, labels=classes, zero_division=0
    )
    averages = {}
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(
            labels, predicted, labels=classes, average=avg, zero_division=0
        )
        averages[avg] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    per_class = [
        {
            "name": class_names[c],
            "precision": float(precision[c]),
            "recall": float(recall[c]),
            "f1": float(f1[c]),
            "support": int(support[c]),
        }
        for c in classes
    ]
    auc = roc_auc(labels, probs)
    for c, row in enumerate(per_class):
        row["roc_auc"] = auc["per_class"][c]
    return {
        "num_examples": len(labels),
        "num_classes": num_classes,
        "accuracy": float(skm.accuracy_score(labels, predicted)),
        # With K <= 5 classes every label is among the top K, as in `steps.eval_step`.
        "top5_accuracy": float(
            skm.top_k_accuracy_score(labels, probs, k=k, labels=classes) if k < num_classes else 1.0
        ),
        "top_k": k,
        "loss": cross_entropy(labels, logits),
        "log_loss": float(skm.log_loss(labels, probs, labels=classes)),
        "precision_recall_f1": averages,
        "per_class": per_class,
        "confusion_matrix": skm.confusion_matrix(labels, predicted, labels=classes).tolist(),
        "roc_auc": {"macro": auc["macro"], "weighted": auc["weighted"]},
        "ece": expected_calibration_error(labels, probs),
        "calibration": calibration_bins(labels, probs),
    }
