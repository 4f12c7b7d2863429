"""Magnitude pruning: global unstructured and N:M masks, the cubic schedule, and the optax
transform that keeps pruned weights at exactly zero through training and resume.

The masks live in the optimizer state (`PruningState`), so they are checkpointed with
the run and a resumed run continues with the very same masks.
"""

import dataclasses
import math
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxvision.compression import kernels


@dataclasses.dataclass(frozen=True)
class Schedule:
    """What `config.pruning` asks for: the final sparsity or N:M, and when masks are set."""

    sparsity: float = 0.0
    n: int = 0  # N:M structure when m > 0
    m: int = 0
    start_step: int = 0
    end_step: int = 0  # > start_step: gradual (cubic) from start_step to end_step
    every_steps: int = 100

    @classmethod
    def from_config(cls, pruning: ml_collections.ConfigDict) -> "Schedule":
        """The schedule of a `config.pruning` section (checked by `check_config`)."""
        n, m = parse_structure(pruning.structure)
        return cls(
            sparsity=float(pruning.sparsity),
            n=n,
            m=m,
            start_step=int(pruning.start_step),
            end_step=int(pruning.end_step),
            every_steps=int(pruning.every_steps),
        )

    @property
    def gradual(self) -> bool:
        """Whether sparsity rises over steps rather than being set at once."""
        return self.end_step > self.start_step and not self.m


def parse_structure(structure: str) -> tuple[int, int]:
    """ "unstructured" -> (0, 0); "2:4" -> (2, 4); ValueError otherwise."""
    if structure == "unstructured":
        return 0, 0
    match = re.fullmatch(r"(\d+):(\d+)", str(structure))
    if not match or not 0 < int(match[1]) < int(match[2]):
        raise ValueError(
            f"pruning.structure must be 'unstructured' or 'N:M' with 0 < N < M (e.g. '2:4'), "
            f"got {structure!r}."
        )
    return int(match[1]), int(match[2])


def enabled(pruning: ml_collections.ConfigDict) -> bool:
    """Whether a `config.pruning` section prunes at all."""
    return pruning.sparsity > 0 or pruning.structure != "unstructured"


def check_config(pruning: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the `pruning.*` key that is out of range."""
    n, m = parse_structure(pruning.structure)
    if not 0 <= pruning.sparsity < 1:
        raise ValueError(f"pruning.sparsity must be in [0, 1), got {pruning.sparsity}.")
    if m and pruning.sparsity:
        raise ValueError(
            f"pruning.structure={pruning.structure!r} fixes the sparsity at {1 - n / m:g}; "
            "leave pruning.sparsity at 0."
        )
    if pruning.start_step < 0 or pruning.end_step < 0 or pruning.every_steps < 1:
        raise ValueError(
            "pruning.start_step and pruning.end_step must be >= 0 and pruning.every_steps >= 1, "
            f"got {pruning.start_step}, {pruning.end_step}, {pruning.every_steps}."
        )


def target_sparsity(step: jax.Array, schedule: Schedule) -> jax.Array:
    """Zhu & Gupta's cubic schedule: 0 before start, `sparsity` from end_step on."""
    if not schedule.gradual:
        return jnp.asarray(schedule.sparsity, jnp.float32)
    span = schedule.end_step - schedule.start_step
    frac = jnp.clip((step - schedule.start_step) / span, 0.0, 1.0)
    return schedule.sparsity * (1.0 - (1.0 - frac) ** 3)


def magnitude_masks(params: Any, sparsity: jax.Array | float) -> Any:
    """Global magnitude masks: the `sparsity` share of all kernel weights with the smallest
    |w| is False; other parameters get a scalar True."""
    leaves = kernels.kernel_leaves(params)
    flat = jnp.concatenate([jnp.abs(x).ravel() for _, x in leaves])
    k = jnp.floor(jnp.asarray(sparsity) * flat.size).astype(jnp.int32)
    sorted_abs = jnp.sort(flat)
    threshold = jnp.where(k > 0, sorted_abs[jnp.maximum(k - 1, 0)], -1.0)
    return kernels.map_kernels(
        lambda _, x: jnp.abs(x) > threshold, params, lambda x: jnp.ones((), jnp.bool_)
    )


def n_m_mask(kernel: jax.Array, out_axes: tuple[int, ...], n: int, m: int) -> jax.Array:
    """Keeps the `n` largest |w| of every `m` consecutive inputs of each output channel;
    a kernel whose input size is not a multiple of `m` stays dense (all True)."""
    inner = tuple(range(kernel.ndim - len(out_axes), kernel.ndim))
    moved = jnp.moveaxis(kernel, out_axes, inner)
    num_out = math.prod(moved.shape[kernel.ndim - len(out_axes) :])
    num_in = moved.size // num_out
    if num_in % m:
        return jnp.ones(kernel.shape, jnp.bool_)
    groups = jnp.abs(moved).reshape(num_in // m, m, num_out)
    rank = jnp.argsort(jnp.argsort(-groups, axis=1, stable=True), axis=1, stable=True)
    keep = (rank < n).reshape(moved.shape)
    return jnp.moveaxis(keep, inner, out_axes)


def n_m_masks(params: Any, n: int, m: int) -> Any:
    """N:M masks over the input dimension of every kernel; scalar True elsewhere."""
    return kernels.map_kernels(
        lambda path, x: n_m_mask(x, kernels.output_axes(path, x.shape), n, m),
        params,
        lambda x: jnp.ones((), jnp.bool_),
    )


def masks_for(params: Any, schedule: Schedule, step: jax.Array | int = 0) -> Any:
    """The masks `schedule` prescribes for `params` at `step`."""
    if schedule.m:
        return n_m_masks(params, schedule.n, schedule.m)
    return magnitude_masks(params, target_sparsity(jnp.asarray(step), schedule))


def apply_masks(params: Any, masks: Any) -> Any:
    """`params` with every masked weight set to zero."""
    return jax.tree.map(lambda p, k: jnp.where(k, p, jnp.zeros_like(p)), params, masks)


class PruningState(NamedTuple):
    """The optimizer-state part that pruning adds: its step count and current masks."""

    count: jax.Array
    masks: Any


def keep_pruned(schedule: Schedule) -> optax.GradientTransformation:
    """Appended to an optimizer: sets the masks when the schedule says, and turns each update
    into one that leaves every masked weight at exactly zero."""

    def init(params):
        ones = kernels.map_kernels(
            lambda _, x: jnp.ones(x.shape, jnp.bool_), params, lambda x: jnp.ones((), jnp.bool_)
        )
        return PruningState(jnp.zeros((), jnp.int32), ones)

    def update(updates, state, params):
        count = state.count
        due = count == schedule.start_step
        if schedule.gradual:
            in_window = (count >= schedule.start_step) & (count <= schedule.end_step)
            on_beat = (count - schedule.start_step) % schedule.every_steps == 0
            due = due | (in_window & on_beat) | (count == schedule.end_step)
        masks = jax.lax.cond(due, lambda: masks_for(params, schedule, count), lambda: state.masks)
        # p + (-p) is exactly 0, so a newly masked weight becomes zero in this very update.
        updates = jax.tree.map(lambda u, p, k: jnp.where(k, u, -p), updates, params, masks)
        return updates, PruningState(count + 1, masks)

    return optax.GradientTransformation(init, update)


def masks_of(opt_state: Any) -> Any | None:
    """The masks held in an optimizer state, or None when the run does not prune."""
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, PruningState))
        if isinstance(s, PruningState)
    ]
    return found[0].masks if found else None


def sparsity_per_layer(params: Any) -> dict[str, float]:
    """The share of exactly-zero weights of every compressible kernel, by layer name."""
    return {
        kernels.layer_name(path): float(np.mean(np.asarray(x) == 0))
        for path, x in kernels.kernel_leaves(params)
    }


def with_masks(opt_state: Any, masks: Any, count: int) -> Any:
    """`opt_state` with its PruningState holding `masks` at step `count`."""
    return jax.tree.map(
        lambda s: (
            PruningState(jnp.asarray(count, jnp.int32), masks) if isinstance(s, PruningState) else s
        ),
        opt_state,
        is_leaf=lambda s: isinstance(s, PruningState),
    )


def overall_sparsity(params: Any) -> float:
    """The share of exactly-zero weights over all compressible kernels together."""
    leaves = [np.asarray(x) for _, x in kernels.kernel_leaves(params)]
    return float(sum(int((x == 0).sum()) for x in leaves) / sum(x.size for x in leaves))
