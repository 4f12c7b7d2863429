"""What a compressed model costs and gains: top-1, agreement with the float model, and
inference img/s of both measured side by side on the same batch in one process."""

import statistics
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

Forward = Callable[[Any, jax.Array], jax.Array]  # (variables, images) -> logits


def predictions(forward: Forward, variables: Any, eval_data) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 predictions and labels over the eval split (padding examples dropped)."""
    preds, labels = [], []
    for batch in eval_data:
        logits = forward(variables, batch["image"])
        mask = np.asarray(batch["mask"]) > 0
        preds.append(np.asarray(jax.device_get(logits)).argmax(-1)[mask])
        labels.append(np.asarray(batch["label"])[mask])
    return np.concatenate(preds), np.concatenate(labels)


def accuracy_and_agreement(
    float_fn: Forward, float_vars: Any, comp_fn: Forward, comp_vars: Any, eval_data
) -> dict[str, float]:
    """Top-1 of both models and the share of examples where their top-1 agrees."""
    float_preds, labels = predictions(float_fn, float_vars, eval_data)
    comp_preds, _ = predictions(comp_fn, comp_vars, eval_data)
    return {
        "float_top1": float(np.mean(float_preds == labels)),
        "compressed_top1": float(np.mean(comp_preds == labels)),
        "agreement": float(np.mean(float_preds == comp_preds)),
        "num_examples": int(labels.size),
    }


def side_by_side_speed(
    models: dict[str, tuple[Forward, Any]], images: jax.Array, *, rounds: int, calls: int
) -> dict[str, float]:
    """Median img/s of each model on `images`, alternating models round by round so both
    see the same machine load."""
    from jaxvision.benchmark import time_calls

    seconds: dict[str, list[float]] = {name: [] for name in models}
    for fn, variables in models.values():
        jax.block_until_ready(fn(variables, images))  # compile outside the timing
    for _ in range(rounds):
        for name, (fn, variables) in models.items():
            seconds[name] += time_calls(lambda _, f=fn, v=variables: f(v, images), 1, calls)
    n = images.shape[0]
    return {name: n / statistics.median(s) for name, s in seconds.items()}
