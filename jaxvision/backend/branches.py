"""Batch branches: a step over slices of the batch as independent sub-graphs (XLA:CPU).

XLA:CPU runs some kernels on one thread (a batched matmul's products one after another,
e.g. attention over short sequences); independent sub-graphs over slices of the batch let
one slice's such kernels run beside another's (docs/performance.md, "Batch branches").
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def auto_branches(platform: str, has_batch_norm: bool, examples: int, *, train: bool) -> int:
    """How many branches a step on `examples` examples runs when the config says 0 (auto).

    Only when the whole run is one CPU device: with several each core already has its own
    slice. Training: 2, or 1 with BatchNorm (which would see per-branch statistics).
    Inference: 4 (running statistics: exact for every model).
    """
    if platform != "cpu" or jax.device_count() != 1:
        return 1
    b = (1 if has_batch_norm else 2) if train else 4
    return b if examples % b == 0 else 1


def strided_slices(batch: Any, k: int) -> Any:
    """[N, ...] -> [k, N/k, ...]; slice i takes every k-th example from i, so each device's
    contiguous part of the batch contributes equally to every slice."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), batch)


def branched_loss(loss_fn: Callable, b: int) -> Callable:
    """`loss_fn(params, batch_stats, batch, rng) -> (loss, aux)` as the mean over `b` slices.

    Equal slices: the mean of their means is the batch mean. Every slice gets the same
    `rng`; per-example randomness comes from the examples' indices, which travel with them.
    """
    if b == 1:
        return loss_fn
    # Jitted, the branch is traced and differentiated once and called b times (XLA inlines
    # the calls), which keeps tracing a deep model's unrolled step fast.
    branch = jax.jit(loss_fn)

    def loss(params, batch_stats, batch, rng):
        parts = strided_slices(batch, b)
        outs = [
            branch(params, batch_stats, jax.tree.map(lambda x, i=i: x[i], parts), rng)
            for i in range(b)
        ]
        return jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs), 0), *outs)

    return loss


def branched_apply(apply_fn: Callable, b: int) -> Callable:
    """`apply_fn(variables, images) -> logits` over `b` consecutive slices of the images."""
    if b == 1:
        return apply_fn
    branch = jax.jit(apply_fn)

    def apply(variables, images):
        return jnp.concatenate([branch(variables, x) for x in jnp.split(images, b)])

    return apply
