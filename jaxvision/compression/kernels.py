"""Which parameters compression touches (conv, dense and attention kernels) and their axes.

Biases, norms, the patch embedding and position embeddings stay float and dense: they are
small, and pruning or quantizing them costs accuracy for almost no bytes.
"""

from collections.abc import Callable
from typing import Any

import jax

# DenseGeneral kernels of flax's attention: [in, heads, head_dim] and [heads, head_dim, out].
_QKV = ("query", "key", "value")


def path_names(path: tuple) -> list[str]:
    """The string keys of a pytree path."""
    return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def layer_name(path: tuple) -> str:
    """The "/"-joined path of a parameter, e.g. "conv0/kernel"."""
    return "/".join(path_names(path))


def output_axes(path: tuple, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The output-channel axes of a compressible kernel, or None for any other parameter."""
    names = path_names(path)
    if not names or names[-1] != "kernel" or len(shape) < 2:
        return None
    if any("embedding" in n for n in names):
        return None
    if len(shape) == 3 and len(names) >= 2 and names[-2] in _QKV:
        return (1, 2)
    return (len(shape) - 1,)


def map_kernels(fn: Callable[[tuple, Any], Any], tree: Any, other: Callable = lambda x: x) -> Any:
    """`fn(path, leaf)` on every compressible kernel of `tree`, `other(leaf)` elsewhere."""

    def visit(path, leaf):
        if output_axes(path, leaf.shape) is None:
            return other(leaf)
        return fn(path, leaf)

    return jax.tree_util.tree_map_with_path(visit, tree)


def kernel_leaves(tree: Any) -> list[tuple[tuple, Any]]:
    """(path, leaf) of every compressible kernel of `tree`, in tree order."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [(p, x) for p, x in leaves if output_axes(p, x.shape) is not None]
