"""Class imbalance: per-class loss weights and class-balanced epochs.

A balanced epoch repeats each example a whole number of times so that every class that
has examples contributes exactly `m = ceil(n / k)` of them: rare classes are repeated,
common ones subsampled. Which examples get the extra (or the only) copy rotates from
epoch to epoch, and epochs have a fixed length, so the stream stays a pure function of
(seed, position) and a resumed run sees the same batches.
"""

import math

import numpy as np
import tensorflow as tf

WEIGHTINGS = ("none", "inverse", "inverse_sqrt")


def class_weights(counts: np.ndarray, mode: str) -> np.ndarray:
    """Per-class loss weights with mean 1 over the training examples (0 for absent classes).

    "inverse" makes every class weigh the same in total (sklearn's "balanced");
    "inverse_sqrt" is the milder square-root version.
    """
    if mode not in WEIGHTINGS:
        raise ValueError(f"dataset.class_weighting must be one of {WEIGHTINGS}, got {mode!r}.")
    counts = np.asarray(counts, np.float64)
    present = counts > 0
    if mode == "none":
        return np.ones_like(counts, np.float32)
    power = 1.0 if mode == "inverse" else 0.5
    raw = np.where(present, 1.0 / np.maximum(counts, 1) ** power, 0.0)
    # Normalise so the average weight of a training example is 1: the loss scale stays.
    scale = counts.sum() / (counts * raw).sum()
    return (raw * scale).astype(np.float32)


class BalancedEpochs:
    """Repeat counts per (example, epoch) that make every epoch class-balanced."""

    def __init__(self, labels: np.ndarray, num_classes: int):
        labels = np.asarray(labels, np.int64)
        if labels.size == 0:
            raise ValueError("Class-balanced sampling needs a non-empty training split.")
        counts = np.bincount(labels, minlength=num_classes)
        present = counts > 0
        self.per_class = math.ceil(len(labels) / int(present.sum()))
        self.epoch_length = self.per_class * int(present.sum())
        safe = np.maximum(counts, 1)
        # Rank of each example among its class, in storage order.
        order = np.argsort(labels, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.empty(len(labels), np.int64)
        rank[order] = np.arange(len(labels)) - starts[labels[order]]
        self._labels = tf.constant(labels)
        self._rank = tf.constant(rank)
        self._count = tf.constant(safe.astype(np.int64))
        self._base = tf.constant((self.per_class // safe).astype(np.int64))
        self._extra = tf.constant((self.per_class % safe).astype(np.int64))

    def repeats(self, index: tf.Tensor, epoch: tf.Tensor) -> tf.Tensor:
        """How often example `index` (storage order) appears in `epoch`."""
        c = tf.gather(self._labels, index)
        n, extra = tf.gather(self._count, c), tf.gather(self._extra, c)
        # The window of examples that get one more copy moves by `extra` each epoch.
        shifted = tf.math.floormod(tf.gather(self._rank, index) - epoch * extra, n)
        return tf.gather(self._base, c) + tf.cast(shifted < extra, tf.int64)

    def epoch(self, examples: tf.data.Dataset, epoch: tf.Tensor) -> tf.data.Dataset:
        """The balanced (not yet shuffled) epoch `epoch` of `examples` in storage order."""

        def expand(index, example):
            return tf.data.Dataset.from_tensors(example).repeat(self.repeats(index, epoch))

        return examples.enumerate().flat_map(expand)
