"""1x1 convolutions as matmuls (backend/pointwise.py): the same function and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxvision.backend import convolution, pointwise

_NHWC = ("NHWC", "HWIO", "NHWC")


def _reference(x, kernel, strides, padding):
    dims = lax.conv_dimension_numbers(x.shape, kernel.shape, _NHWC)
    return lax.conv_general_dilated(
        x, kernel, strides, padding, dimension_numbers=dims, precision=lax.Precision.HIGHEST
    )


def _backend(x, kernel, strides, padding):
    dims = lax.conv_dimension_numbers(x.shape, kernel.shape, _NHWC)
    return convolution.conv_general_dilated(
        x, kernel, strides, padding, dimension_numbers=dims, precision=lax.Precision.HIGHEST
    )


@pytest.mark.parametrize(
    "shape, strides, padding",
    [
        ((2, 8, 8, 16), (1, 1), "SAME"),
        ((2, 7, 7, 16), (2, 2), "SAME"),  # odd side: ceil(7 / 2) outputs, as lax
        ((2, 8, 6, 16), (2, 2), ((0, 0), (0, 0))),
        ((2, 5, 5, 16), (1, 1), "VALID"),
    ],
)
def test_same_outputs_and_gradients_as_the_convolution(shape, strides, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((1, 1, shape[-1], 24)), jnp.float32)
    assert "dot_general" in str(
        jax.make_jaxpr(_backend, static_argnums=(2, 3))(x, kernel, strides, padding)
    )
    want = _reference(x, kernel, strides, padding)
    got = _backend(x, kernel, strides, padding)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    def loss(fn):
        return lambda a, b: (fn(a, b, strides, padding) ** 2).sum()

    want_grads = jax.grad(loss(_reference), argnums=(0, 1))(x, kernel)
    got_grads = jax.grad(loss(_backend), argnums=(0, 1))(x, kernel)
    for g, w in zip(got_grads, want_grads, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-3 * float(jnp.abs(w).max()))


def test_other_convolutions_stay_convolutions():
    x = jnp.ones((1, 8, 8, 4))
    kernel = jnp.ones((1, 1, 4, 4))
    padded = ((1, 1), (1, 1))  # a padded 1x1 conv writes zeros at the border: not a matmul

    def uses_dot(strides=(1, 1), padding="SAME", groups=1, lhs_dilation=None, k=kernel):
        dims = lax.conv_dimension_numbers(x.shape, k.shape, _NHWC)
        fn = lambda a: convolution.conv_general_dilated(
            a, k, strides, padding, lhs_dilation, None, dims, groups
        )
        return "dot_general" in str(jax.make_jaxpr(fn)(x))

    assert not uses_dot(padding=padded)
    assert not uses_dot(groups=2, k=jnp.ones((1, 1, 2, 4)))
    assert not uses_dot(padding=((0, 0), (0, 0)), lhs_dilation=(2, 2))
    assert uses_dot(strides=(2, 2))
    with pointwise.enabled(False):
        assert not uses_dot()
