"""1x1 convolutions as matrix products on CPU: [N*H*W, C] x [C, K], strided by a slice.

A 1x1 convolution is a matmul over the pixels. Written as `lax.dot_general`, its forward
pass, input gradient and kernel gradient are three plain matmuls that XLA:CPU runs as
dots, where the convolution form goes through Eigen's convolution kernels and, for the
kernel gradient, a transposed copy of the activations. A stride-2 1x1 convolution (a
ResNet's projection shortcut) reads every other pixel: the same matmul on a strided slice.
Same function, same [1, 1, C, K] kernel layout, so parameters and checkpoints do not change;
on GPU and TPU (whose libraries choose their own algorithms) this is never used.
"""

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

_enabled = True


@contextlib.contextmanager
def enabled(on: bool) -> Iterator[None]:
    """Within the block, models traced rewrite 1x1 convolutions as matmuls or not (A/B:
    `benchmarks/interleaved_ab.py`'s `pointwise=0`)."""
    global _enabled
    saved, _enabled = _enabled, on
    try:
        yield
    finally:
        _enabled = saved


def _no_padding(padding: Any) -> bool:
    if isinstance(padding, str):
        return padding in ("SAME", "VALID")  # a 1x1 window never pads
    return all(tuple(p) == (0, 0) for p in padding)


def applies(kernel_shape: Sequence[int], padding: Any) -> bool:
    """Whether this (plain NHWC) convolution is a 1x1 one this platform runs as a dot."""
    return (
        _enabled
        and jax.default_backend() == "cpu"
        and tuple(kernel_shape[:2]) == (1, 1)
        and _no_padding(padding)
    )


def conv1x1(
    x: jnp.ndarray, kernel: jnp.ndarray, window_strides: Sequence[int], precision: Any = None
) -> jnp.ndarray:
    """The 1x1 NHWC convolution of `x` by the HWIO `kernel` [1, 1, C, K] as a dot."""
    sh, sw = window_strides
    if (sh, sw) != (1, 1):
        x = x[:, ::sh, ::sw, :]
    return lax.dot_general(x, kernel[0, 0], (((3,), (0,)), ((), ())), precision=precision)
