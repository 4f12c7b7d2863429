"""3x3 convolutions by Winograd's minimal filtering F(4x4, 3x3) where it is faster on CPU.

A 3x3 stride-1 convolution computes each 4x4 block of outputs from a 6x6 input tile
with 36 products per channel pair instead of 144 (Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", 2016): the tiles and the kernel are transformed by small
constant matrices, multiplied as 36 independent [tiles, C] x [C, K] matmuls, and
transformed back. The same function up to fp32 round-off: about 1e-5 of the largest
output, where the direct convolution is at 1e-6 (tests/test_winograd.py); the kernel
keeps its [3, 3, C, K] layout, so parameters and checkpoints do not change.

Eigen's direct convolutions already run near the CPU's matmul peak, so the fewer products
pay only where the transforms (memory-bound passes over 2.25x the input) are small beside
them: from 128 channels on, with at least 128 tiles per matmul and more than one tile per
image. The kernel gradient by Winograd (36 [C, tiles] x [tiles, K] matmuls instead of 9
[C, positions] x [positions, K]) paid from 32 channels on, but not for a 3-channel stem.
`applies` decides per convolution (`backend/convolution.py` asks it); everywhere else, and
on GPU and TPU (whose libraries choose their own algorithms), `lax.conv_general_dilated`
runs. Per-shape timings: docs/performance.md, "Why each CPU option".
"""

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# F(4x4, 3x3) on the points 0, +-1, +-2 and infinity: input transform B^T (6x6), kernel
# transform G (6x3), output transform A^T (4x6).
_BT = np.array(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    np.float32,
)
_G = np.array(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    np.float32,
)
_AT = np.array(
    [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    np.float32,
)
_TILE, _OUT = _BT.shape[0], _AT.shape[0]  # 6x6 input tiles, 4x4 output blocks

# Below these, Eigen's direct convolution was as fast or faster (timings above).
MIN_CHANNELS = 128
MIN_TILES = 128
# The kernel gradient was faster by Winograd at every shape tried from 32 channels on
# (module docstring); with 3 input channels (a stem) the transforms cost more than they save.
KERNEL_GRADIENT_MIN_CHANNELS = 32

_NHWC = ("NHWC", "HWIO", "NHWC")


# Both tile axes at once: (B^T x B^T) maps a flattened 6x6 tile to its 36 transformed
# values, (A^T x A^T) 36 products to a flattened 4x4 block. As matmuls, the transforms
# read each value once; written as sums of slices, XLA fused them with the ops around
# them and recomputed those for every tap (ResNet-18 inference gained nothing).
_BT2 = np.kron(_BT, _BT)
_AT2 = np.kron(_AT, _AT)


def _input_transform(x: jnp.ndarray, precision: Any) -> jnp.ndarray:
    """[N, H, W, C] -> [36, N*H/4*W/4, C]: B^T d B of every 6x6 tile (stride 4, pad 1)."""
    n, h, w, c = x.shape
    th, tw = h // _OUT, w // _OUT
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    # Element (a, b) of every tile: xp[n, 4i + a, 4j + b, c].
    d = jnp.stack(
        [
            xp[:, a : a + _OUT * th : _OUT, b : b + _OUT * tw : _OUT, :]
            for a in range(_TILE)
            for b in range(_TILE)
        ]
    )
    v = jnp.matmul(_BT2, d.reshape(_TILE**2, -1), precision=precision)
    return v.reshape(_TILE**2, n * th * tw, c)


def _output_transform(m: jnp.ndarray, n: int, h: int, w: int, precision: Any) -> jnp.ndarray:
    """[36, N*H/4*W/4, K] -> [N, H, W, K]: A^T M A of every tile, blocks back in place."""
    th, tw, k = h // _OUT, w // _OUT, m.shape[-1]
    y = jnp.matmul(_AT2, m.reshape(_TILE**2, -1), precision=precision)
    y = y.reshape(_OUT, _OUT, n, th, tw, k).transpose(2, 3, 0, 4, 1, 5)
    return y.reshape(n, h, w, k)


def winograd_conv3x3(x: jnp.ndarray, kernel: jnp.ndarray, precision: Any = None) -> jnp.ndarray:
    """SAME 3x3 stride-1 convolution of NHWC `x` (H, W multiples of 4), HWIO `kernel`."""
    n, h, w, _ = x.shape
    u = jnp.einsum("ai,ijck,bj->abck", _G, kernel, _G, precision=precision)
    u = u.reshape(_TILE * _TILE, *kernel.shape[2:])
    m = jnp.einsum("tpc,tck->tpk", _input_transform(x, precision), u, precision=precision)
    return _output_transform(m, n, h, w, precision)


def winograd_kernel_gradient(
    x: jnp.ndarray, grad: jnp.ndarray, precision: Any = None
) -> jnp.ndarray:
    """Gradient for the HWIO kernel of `winograd_conv3x3(x, kernel)` given the output's `grad`.

    The forward pass is Y = A^T [(G g G^T) * (B^T d B)] A per tile, so the kernel's
    gradient is G^T [sum over tiles of (B^T d B) * (A dY A^T)] G: 36 [C, tiles] x
    [tiles, K] matmuls where the direct convolution's takes 9 over 16x as many positions.
    """
    n, h, w, c = x.shape
    th, tw, k = h // _OUT, w // _OUT, grad.shape[-1]
    v = _input_transform(x, precision)  # [36, tiles, C]
    # Every 4x4 block of the output gradient flattened, then A dY A^T: [36, tiles, K].
    blocks = grad.reshape(n, th, _OUT, tw, _OUT, k).transpose(2, 4, 0, 1, 3, 5)
    dm = jnp.matmul(_AT2.T, blocks.reshape(_OUT**2, -1), precision=precision)
    du = jnp.einsum("tpc,tpk->tck", v, dm.reshape(_TILE**2, n * th * tw, k), precision=precision)
    du = du.reshape(_TILE, _TILE, c, k)
    return jnp.einsum("ai,abck,bj->ijck", _G, du, _G, precision=precision)


def _direct(x: jnp.ndarray, kernel: jnp.ndarray, precision: Any) -> jnp.ndarray:
    return lax.conv_general_dilated(
        x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_NHWC, precision=precision
    )


def _conv(x: jnp.ndarray, kernel: jnp.ndarray, precision: Any) -> jnp.ndarray:
    faster = is_faster(x.shape, kernel.shape, x.dtype)
    return (winograd_conv3x3 if faster else _direct)(x, kernel, precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3(x: jnp.ndarray, kernel: jnp.ndarray, precision: Any = None) -> jnp.ndarray:
    """SAME 3x3 stride-1 NHWC conv: forward, input and kernel gradient by Winograd where faster.

    `is_faster` decides the forward pass and the input gradient (the same kind of conv),
    `kernel_gradient_is_faster` the kernel gradient; the rest is the direct convolution.
    Only `x` and `kernel` are kept for the backward pass, as for the direct convolution.
    Letting JAX differentiate the Winograd forward instead (transforms written as sums of
    slices at the time) made the ResNet-18 train step slower, about 0.95x.
    """
    return _conv(x, kernel, precision)


def _forward(x: jnp.ndarray, kernel: jnp.ndarray, precision: Any) -> tuple:
    return _conv(x, kernel, precision), (x, kernel)


def _backward(precision: Any, saved: tuple, grad: jnp.ndarray) -> tuple:
    x, kernel = saved
    # The input gradient of a SAME 3x3 stride-1 conv is the same conv of the output
    # gradient with the kernel flipped in space and its in/out channels swapped.
    grad_x = _conv(grad, kernel[::-1, ::-1].swapaxes(2, 3), precision)
    if kernel_gradient_is_faster(x.shape, kernel.shape, x.dtype):
        return grad_x, winograd_kernel_gradient(x, grad, precision)
    _, kernel_vjp = jax.vjp(lambda kernel: _direct(x, kernel, precision), kernel)
    return grad_x, kernel_vjp(grad)[0]


conv3x3.defvjp(_forward, _backward)


def _cpu_fp32_3x3_by_4(x_shape: Sequence[int], kernel_shape: Sequence[int], dtype: Any) -> bool:
    return (
        jax.default_backend() == "cpu"
        and jnp.dtype(dtype) == jnp.float32
        and tuple(kernel_shape[:2]) == (3, 3)
        and x_shape[1] % _OUT == 0
        and x_shape[2] % _OUT == 0
    )


def is_faster(x_shape: Sequence[int], kernel_shape: Sequence[int], dtype: Any) -> bool:
    """Whether `winograd_conv3x3` is this platform's faster forward pass for these shapes."""
    n, h, w, c = x_shape
    return (
        _cpu_fp32_3x3_by_4(x_shape, kernel_shape, dtype)
        # One tile per image (4x4 maps) was slower even with many images.
        and min(h, w) > _OUT
        and min(c, kernel_shape[3]) >= MIN_CHANNELS
        and n * h * w // _OUT**2 >= MIN_TILES
    )


def kernel_gradient_is_faster(
    x_shape: Sequence[int], kernel_shape: Sequence[int], dtype: Any
) -> bool:
    """Whether `winograd_kernel_gradient` is this platform's faster kernel gradient."""
    return (
        _cpu_fp32_3x3_by_4(x_shape, kernel_shape, dtype)
        and min(x_shape[3], kernel_shape[3]) >= KERNEL_GRADIENT_MIN_CHANNELS
    )


def applies(
    x_shape: Sequence[Any],
    kernel_shape: Sequence[int],
    window_strides: Sequence[int],
    padding: Any,
    dtype: Any,
) -> bool:
    """Whether `conv3x3` is faster for this (plain NHWC) convolution's forward or gradient."""
    return (
        tuple(window_strides) == (1, 1)
        and _same_3x3(padding)
        # A symbolic batch (jax.export) has no size to decide by: the direct convolution.
        and all(isinstance(d, int) for d in x_shape)
        and (
            is_faster(x_shape, kernel_shape, dtype)
            or kernel_gradient_is_faster(x_shape, kernel_shape, dtype)
        )
    )


def _same_3x3(padding: Any) -> bool:
    return not isinstance(padding, str) and [tuple(p) for p in padding] == [(1, 1), (1, 1)]
