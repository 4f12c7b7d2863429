"""Eval-mode BatchNorm folded into the convolution before it, for any Flax Linen model.

In eval mode a BatchNorm is a per-channel affine map, y = (x - mean) * s + beta with
s = scale / sqrt(var + eps); after a convolution it folds into the weights:
conv(x, W * s) + (beta - mean * s). That removes the normalisation's arithmetic from the
forward pass and leaves one bias add where the next elementwise op can take it.

The pairs are found without model code: the forward is traced once (shapes only) with a
Flax method interceptor that records which BatchNorm receives a plain `nn.Conv`'s output
as its input. The folded forward then runs with the scaled kernels and each folded
BatchNorm replaced by its shift. Used for inference only: training normalises with the
batch's statistics. Assumes a paired conv's output feeds only its BatchNorm (true of
conv-BN-ReLU networks such as ResNets); a conv output that two modules read is not folded.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Path = tuple[str, ...]


def _is_eval_norm(module: nn.Module, args: tuple, kwargs: dict) -> bool:
    """A BatchNorm over the last axis that normalises with its running statistics."""
    if type(module) is not nn.BatchNorm or kwargs.get("mask") is not None:
        return False
    running = kwargs.get("use_running_average", args[1] if len(args) > 1 else None)
    running = module.use_running_average if running is None else running
    return bool(running) and module.axis in (-1, args[0].ndim - 1)


def conv_norm_pairs(apply: Callable[[dict, Any], Any], variables: dict, images: Any) -> dict:
    """{BatchNorm path: conv path} of the pairs to fold in `apply(variables, images)`.

    Traced on shapes only (`jax.eval_shape`): nothing is computed.
    """
    conv_outputs: dict[int, Path] = {}  # id(output) -> the conv that made it
    readers: dict[int, int] = {}  # id(output) -> how many module calls read it
    candidates: dict[Path, int] = {}
    keep_alive = []  # ids stay unique only while the objects live

    def record(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not args:
            return next_fun(*args, **kwargs)
        if id(args[0]) in conv_outputs:
            readers[id(args[0])] = readers.get(id(args[0]), 0) + 1
            if _is_eval_norm(module, args, kwargs):
                candidates[tuple(module.path)] = id(args[0])
        out = next_fun(*args, **kwargs)
        # Only plain convolutions: a subclass may transform its kernel (weight standardisation).
        if type(module) is nn.Conv:
            conv_outputs[id(out)] = tuple(module.path)
            keep_alive.append(out)
        return out

    def traced(v, x):
        with nn.intercept_methods(record):
            return apply(v, x)

    jax.eval_shape(traced, variables, images)
    return {bn: conv_outputs[out] for bn, out in candidates.items() if readers[out] == 1}


def _get(tree: dict, path: Path) -> dict:
    for name in path:
        tree = tree[name]
    return tree


def _set(tree: dict, path: Path, leaf: dict) -> dict:
    """A copy of nested dict `tree` with `leaf` at `path` (other branches shared)."""
    if not path:
        return leaf
    return {**tree, path[0]: _set(tree[path[0]], path[1:], leaf)}


def fold(variables: dict, pairs: dict, epsilons: dict) -> tuple[dict, dict]:
    """Variables with each paired conv's kernel (and bias) scaled, and {BatchNorm path: shift}.

    `epsilons` is {BatchNorm path: its epsilon}. Computed in float32 from the float32
    parameters, whatever the model's compute dtype.
    """
    params, stats = variables["params"], variables["batch_stats"]
    shifts = {}
    for bn_path, conv_path in pairs.items():
        bn, bn_stats, conv = _get(params, bn_path), _get(stats, bn_path), _get(params, conv_path)
        mean, var = bn_stats["mean"], bn_stats["var"]
        s = jax.lax.rsqrt(var.astype(jnp.float32) + epsilons[bn_path])
        if "scale" in bn:
            s = s * bn["scale"]
        shift = -mean * s + bn.get("bias", 0.0)
        new_conv = {**conv, "kernel": conv["kernel"] * s.astype(conv["kernel"].dtype)}
        if "bias" in conv:
            new_conv["bias"] = conv["bias"] * s
        params = _set(params, conv_path, new_conv)
        shifts[bn_path] = shift
    return {**variables, "params": params}, shifts


def fold_forward(
    apply: Callable[[dict, Any], Any], variables: dict, images: Any
) -> tuple[dict, Callable[[dict, Any], Any]]:
    """`(variables', apply')`: `apply'(variables', images)` is the eval-mode forward
    `apply(variables, images)` with its conv-BatchNorm pairs folded (same function up to
    float32 rounding). Without such pairs, `(variables, apply)` unchanged.

    `images` only gives the shapes to trace; `apply'` takes any batch of that image size.
    """
    if not variables.get("batch_stats"):
        return variables, apply
    epsilons: dict[Path, float] = {}

    def note_epsilon(next_fun, args, kwargs, context):
        if type(context.module) is nn.BatchNorm:
            epsilons[tuple(context.module.path)] = context.module.epsilon
        return next_fun(*args, **kwargs)

    def with_epsilons(v, x):
        with nn.intercept_methods(note_epsilon):
            return apply(v, x)

    pairs = conv_norm_pairs(with_epsilons, variables, images)
    # Only float kernels held as plain arrays can be scaled (not e.g. quantized arrays).
    pairs = {
        bn: conv
        for bn, conv in pairs.items()
        if isinstance(_get(variables["params"], conv).get("kernel"), jax.Array | np.ndarray)
    }
    if not pairs:
        return variables, apply
    new_variables, shifts = fold(variables, pairs, epsilons)

    def shift_only(next_fun, args, kwargs, context):
        path = tuple(context.module.path)
        if context.method_name == "__call__" and path in shifts:
            x = args[0]
            dtype = context.module.dtype or jnp.result_type(x, jnp.float32)
            return (x + shifts[path]).astype(dtype)
        return next_fun(*args, **kwargs)

    def folded_apply(v, x):
        with nn.intercept_methods(shift_only):
            return apply(v, x)

    return new_variables, folded_apply
