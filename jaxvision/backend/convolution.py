"""The CPU backend's convolution: each of a model's convolutions by the fastest way found.

A drop-in for `nn.Conv(conv_general_dilated=...)` (`backend.tune_model` gives it to the
ResNet blocks): 1x1 convolutions run as matmuls (`pointwise`), the 3x3 ones where it pays
by Winograd (`winograd`), everything else (dilated, grouped, other layouts) is
`lax.conv_general_dilated` unchanged. On GPU and TPU neither rewrite applies.
"""

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
from jax import lax

from jaxvision.backend import pointwise, winograd

_NHWC = ("NHWC", "HWIO", "NHWC")


def _plain_nhwc(
    lhs: jnp.ndarray,
    rhs: jnp.ndarray,
    lhs_dilation: Sequence[int] | None,
    rhs_dilation: Sequence[int] | None,
    dimension_numbers: Any,
    feature_group_count: int,
    extra: dict,
) -> bool:
    """An undilated, ungrouped NHWC/HWIO convolution with no extra lax options."""
    return (
        not extra
        and lhs.ndim == 4
        and feature_group_count == 1
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and dimension_numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    )


def conv_general_dilated(
    lhs: jnp.ndarray,
    rhs: jnp.ndarray,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
    **kwargs: Any,
) -> jnp.ndarray:
    """`lax.conv_general_dilated`, as a matmul or by Winograd where that is faster."""
    plain = _plain_nhwc(
        lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, kwargs
    )
    if plain and pointwise.applies(rhs.shape, padding):
        return pointwise.conv1x1(lhs, rhs, window_strides, precision)
    if plain and winograd.applies(lhs.shape, rhs.shape, window_strides, padding, lhs.dtype):
        return winograd.conv3x3(lhs, rhs, precision)
    return lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        precision=precision,
        **kwargs,
    )
