"""Winograd F(4x4, 3x3) convolutions: the same function and gradients as lax's, used only
where the dispatch rule says so."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxvision import models
from jaxvision.backend import convolution, winograd

_DIMS = ("NHWC", "HWIO", "NHWC")


def _direct(x, kernel):
    return lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_DIMS)


def _inputs(shape, k, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, np.float32)
    kernel = rng.standard_normal((3, 3, shape[-1], k), np.float32) / np.sqrt(9 * shape[-1])
    return jnp.asarray(x), jnp.asarray(kernel)


@pytest.mark.parametrize("shape,k", [((2, 8, 8, 5), 7), ((3, 4, 12, 16), 8), ((1, 4, 4, 1), 1)])
def test_matches_direct_convolution(shape, k):
    x, kernel = _inputs(shape, k)
    got = jax.jit(winograd.winograd_conv3x3)(x, kernel)
    want = _direct(x, kernel)
    assert got.shape == want.shape
    # F(4x4, 3x3) in fp32 is within ~1e-5 of the largest output (the direct conv: ~1e-6).
    np.testing.assert_allclose(got, want, rtol=0, atol=5e-5 * float(jnp.max(jnp.abs(want))))


@pytest.mark.parametrize(
    "shape",
    [
        (2, 8, 4, 3),  # all direct
        (2, 8, 8, 32),  # direct forward and input gradient, Winograd kernel gradient
        (8, 16, 16, 128),  # all three by Winograd
    ],
)
def test_gradients_match_the_direct_convolutions(shape):
    x, kernel = _inputs(shape, shape[-1], seed=1)
    cotangent = jnp.asarray(np.random.default_rng(2).standard_normal(x.shape, np.float32))
    got = jax.vjp(winograd.conv3x3, x, kernel)[1](cotangent)
    want = jax.vjp(_direct, x, kernel)[1](cotangent)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=0, atol=5e-5 * float(jnp.max(jnp.abs(w))))


@pytest.mark.parametrize("shape,k", [((3, 4, 12, 5), 7), ((2, 8, 8, 16), 3)])
def test_kernel_gradient_matches_the_direct_convolutions(shape, k):
    x, kernel = _inputs(shape, k, seed=3)
    grad = jnp.asarray(np.random.default_rng(4).standard_normal((*shape[:3], k), np.float32))
    got = jax.jit(winograd.winograd_kernel_gradient)(x, grad)
    want = jax.vjp(lambda kernel: _direct(x, kernel), kernel)[1](grad)[0]
    assert got.shape == kernel.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=5e-5 * float(jnp.max(jnp.abs(want))))


def test_dispatch_rule():
    big = (8, 16, 16, 128)  # 128 tiles of 128 channels
    assert winograd.is_faster(big, (3, 3, 128, 128), jnp.float32)
    assert not winograd.is_faster(big, (3, 3, 128, 64), jnp.float32)  # too few channels
    assert not winograd.is_faster((4, 16, 16, 128), (3, 3, 128, 128), jnp.float32)  # tiles
    assert not winograd.is_faster((8, 14, 16, 128), (3, 3, 128, 128), jnp.float32)  # H % 4
    assert not winograd.is_faster((64, 4, 4, 512), (3, 3, 512, 512), jnp.float32)  # 1 tile
    assert not winograd.is_faster(big, (3, 3, 128, 128), jnp.bfloat16)
    assert not winograd.is_faster(big, (1, 1, 128, 128), jnp.float32)
    # The kernel gradient pays from 32 channels, at any tile count.
    kernel_rule = winograd.kernel_gradient_is_faster
    assert kernel_rule((64, 4, 4, 512), (3, 3, 512, 512), jnp.float32)
    assert kernel_rule((2, 8, 8, 32), (3, 3, 32, 64), jnp.float32)
    assert not kernel_rule((128, 32, 32, 3), (3, 3, 3, 64), jnp.float32)  # a stem
    assert not kernel_rule((8, 14, 16, 128), (3, 3, 128, 128), jnp.float32)  # H % 4
    assert not kernel_rule(big, (3, 3, 128, 128), jnp.bfloat16)


def _uses_conv(fn, *args) -> bool:
    return "conv_general_dilated" in str(jax.make_jaxpr(fn)(*args))


def test_drop_in_sends_only_plain_3x3_convs_to_winograd():
    x, kernel = _inputs((8, 16, 16, 128), 128)
    dims = lax.conv_dimension_numbers(x.shape, kernel.shape, _DIMS)
    same = ((1, 1), (1, 1))

    def conv(strides=(1, 1), padding=same, groups=1, kernel=kernel):
        return lambda x: convolution.conv_general_dilated(
            x, kernel, strides, padding, dimension_numbers=dims, feature_group_count=groups
        )

    assert not _uses_conv(conv(), x)
    want = _direct(x, kernel)
    np.testing.assert_allclose(conv()(x), want, atol=5e-5 * float(jnp.max(jnp.abs(want))))
    assert _uses_conv(conv(strides=(2, 2)), x)
    assert _uses_conv(conv(padding=((0, 0), (0, 0))), x)
    assert _uses_conv(conv(groups=2, kernel=kernel[:, :, :64]), x)
    small_x, small_kernel = _inputs((2, 16, 16, 128), 128)  # 32 tiles: direct
    assert _uses_conv(conv(kernel=small_kernel), small_x)


def test_resnet_is_the_same_function_with_and_without_winograd():
    # Batch 8 at 32px: stage 2's 3x3 convs (16x16, 128 channels, 128 tiles) qualify.
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 32, 32, 3), np.float32))
    plain = models.create("resnet18", num_classes=10, stem="cifar")
    fast = plain.clone(block_conv=convolution.conv_general_dilated)
    variables = plain.init(jax.random.key(0), x[:1])
    # Random BN scales: at init the zero scale of bn2 would hide the blocks' second convs.
    leaves, treedef = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    variables = jax.tree.unflatten(
        treedef, [v + 0.1 * jax.random.normal(k, v.shape) for v, k in zip(leaves, keys)]
    )
    convs = [
        str(jax.make_jaxpr(functools.partial(m.apply, train=False))(variables, x)).count(
            "conv_general_dilated"
        )
        for m in (fast, plain)
    ]
    # Winograd in stage 2 (block1's conv2, block2's conv1 and conv2), and the three 1x1
    # projection shortcuts as matmuls (backend/pointwise.py).
    assert convs[1] - convs[0] == 3 + 3
    got = jax.jit(lambda v, x: fast.apply(v, x, train=False))(variables, x)
    want = jax.jit(lambda v, x: plain.apply(v, x, train=False))(variables, x)
    np.testing.assert_allclose(got, want, atol=1e-4 * float(jnp.max(jnp.abs(want))))

    # Train mode (batch statistics) uses it too, and so do the gradients: stage 1's kernel
    # gradients (64 channels) and stage 2's convs and both of their gradients.
    def loss(model, params, images=x):
        logits, _ = model.apply(
            {**variables, "params": params}, images, train=True, mutable=["batch_stats"]
        )
        return jnp.mean(logits**2), logits

    grad = jax.jit(jax.value_and_grad(loss, argnums=1, has_aux=True), static_argnums=0)
    (_, got), got_grads = grad(fast, variables["params"])
    (_, want), want_grads = grad(plain, variables["params"])
    np.testing.assert_allclose(got, want, atol=1e-4 * float(jnp.max(jnp.abs(want))))
    # How far apart two fp32 computations of one function may be is the network's own
    # sensitivity, not a constant: train-mode BatchNorm over a batch of 8 turns a 1e-6
    # change of the input into a 1e-4 change of some gradients, on any CPU. So the bound
    # is the change of the direct network's gradients when its input moves by one
    # Winograd convolution's relative error (measured here against float64).
    delta = _relative_error_against_float64((8, 16, 16, 128))
    noise = jax.random.normal(jax.random.key(7), x.shape)
    _, moved_grads = grad(plain, variables["params"], x * (1 + delta * noise))
    for path, g in jax.tree_util.tree_leaves_with_path(got_grads):
        w, m = (
            functools.reduce(lambda t, k: t[k.key], path, tree)
            for tree in (want_grads, moved_grads)
        )
        sensitivity = float(jnp.linalg.norm(m - w)) + 1e-7 * float(jnp.linalg.norm(w))
        assert float(jnp.linalg.norm(g - w)) <= 4 * sensitivity, path


def _relative_error_against_float64(shape: tuple[int, ...]) -> float:
    """Winograd's relative error (Frobenius) on one conv of `shape`, against float64."""
    x, kernel = _inputs(shape, shape[-1], seed=5)
    got = np.asarray(winograd.winograd_conv3x3(x, kernel), np.float64)
    with jax.enable_x64(True):
        exact = np.asarray(_direct(np.asarray(x, np.float64), np.asarray(kernel, np.float64)))
    return float(np.linalg.norm(got - exact) / np.linalg.norm(exact))
