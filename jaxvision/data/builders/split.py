"""A fixed, stratified train/test split shared by the offline builders."""

import numpy as np


def stratified_split(
    labels: np.ndarray, test_per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (train_idx, test_idx): `test_per_class` examples of each class go to test."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test.extend(rng.choice(idx, size=test_per_class, replace=False).tolist())
    test_idx = np.sort(np.asarray(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx
