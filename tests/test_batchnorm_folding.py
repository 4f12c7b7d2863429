"""BatchNorm folded into the conv before it: the same eval forward within float32 rounding."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision import backend, batchnorm_folding, models


@functools.cache
def _resnet_with_statistics(width: float = 0.25):
    """A small CIFAR-stem ResNet-18 whose BatchNorms have non-trivial statistics and affine
    (built once per process; the tests only read it)."""
    model = models.create("resnet18", num_classes=10, stem="cifar", width=width)
    images = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 3))
    variables = jax.jit(model.init, static_argnames="train")(
        jax.random.PRNGKey(1), images, train=False
    )
    leaves, tree = jax.tree.flatten(variables["batch_stats"])
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    stats = [
        jax.random.uniform(k, x.shape, minval=0.2, maxval=3.0)  # a var (and a mean) > 0
        for k, x in zip(keys, leaves, strict=True)
    ]
    params = jax.tree.map(
        lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(3), p.shape), variables["params"]
    )
    return model, {"params": params, "batch_stats": jax.tree.unflatten(tree, stats)}, images


def _eval(model):
    return lambda v, x: model.apply(v, x, train=False)


# Slow: folding is off by default; these build and compile a ResNet (~20 s in all).
@pytest.mark.slow
def test_every_conv_batchnorm_pair_of_a_resnet_is_found():
    model, variables, images = _resnet_with_statistics()
    pairs = batchnorm_folding.conv_norm_pairs(_eval(model), variables, images)
    norms = len(jax.tree.leaves(variables["batch_stats"])) // 2  # mean and var each
    assert len(pairs) == norms == 1 + 8 * 2 + 3  # stem, two per block, three projections
    assert pairs[("stem_bn",)] == ("stem_conv",)
    assert pairs[("stage2_block1", "proj_bn")] == ("stage2_block1", "proj_conv")


@pytest.mark.slow
def test_folded_forward_equals_the_unfolded_one_within_float32_rounding():
    model, variables, images = _resnet_with_statistics()
    folded_vars, folded_apply = batchnorm_folding.fold_forward(_eval(model), variables, images)
    assert folded_apply is not _eval(model)
    folded = np.asarray(jax.jit(folded_apply)(folded_vars, images), np.float64)
    plain = np.asarray(jax.jit(_eval(model))(variables, images), np.float64)
    with jax.enable_x64(True):
        as64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), variables)
        exact = np.asarray(_eval(model)(as64, jnp.asarray(images, jnp.float64)))
    # The bound: a few times the unfolded float32 forward's own error against float64.
    own = np.abs(plain - exact).max()
    assert 0 < own < 1e-3 * np.abs(exact).max()
    assert np.abs(folded - exact).max() <= 4 * own
    assert np.argmax(folded, -1).tolist() == np.argmax(plain, -1).tolist()


@pytest.mark.slow
def test_the_cpu_eval_forward_folds_and_keeps_the_outputs():
    model, variables, images = _resnet_with_statistics()
    model = backend.tune_model(model)  # Winograd on CPU: folding must compose with it
    forward = jax.jit(lambda v, x: backend.forward(model, v, x))
    with backend.folding(True):
        folded = forward.lower(variables, images)
    with backend.folding(False):
        plain = jax.jit(lambda v, x: backend.forward(model, v, x)).lower(variables, images)

    # The folded forward subtracts no means from activations (rank-4 tensors).
    def activation_subtracts(lowered) -> int:
        lines = lowered.as_text().splitlines()
        return sum(bool(re.search(r"subtract.*tensor<\d+x\d+x\d+x\d+xf32>$", x)) for x in lines)

    if jax.default_backend() == "cpu":
        norms = len(jax.tree.leaves(variables["batch_stats"])) // 2
        assert activation_subtracts(folded) <= activation_subtracts(plain) - norms
    a = np.asarray(folded.compile()(variables, images))
    b = np.asarray(plain.compile()(variables, images))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * np.abs(b).max())


def test_models_without_batchnorm_run_unchanged():
    model = models.create("vit_ti4", num_classes=10, image_size=16, depth=1)
    images = jnp.zeros((2, 16, 16, 3))
    variables = jax.jit(model.init, static_argnames="train")(
        jax.random.PRNGKey(0), images, train=False
    )
    apply = _eval(model)
    assert batchnorm_folding.fold_forward(apply, variables, images) == (variables, apply)


@pytest.mark.parametrize("shared", [False, True])
def test_a_conv_output_read_by_two_modules_is_not_folded(shared):
    import flax.linen as nn

    class TwoReaders(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            y = nn.Conv(4, (3, 3), use_bias=False)(x)
            z = nn.BatchNorm(use_running_average=not train)(y)
            if shared:
                z = z + nn.Dense(4)(y)  # a second module reads the conv's output
            return z.mean((1, 2))

    model = TwoReaders()
    images = jnp.ones((1, 8, 8, 3))
    variables = model.init(jax.random.PRNGKey(0), images)
    pairs = batchnorm_folding.conv_norm_pairs(_eval(model), variables, images)
    assert pairs == ({} if shared else {("BatchNorm_0",): ("Conv_0",)})


@pytest.mark.slow
def test_a_quantized_model_is_not_folded():
    import ml_collections

    from jaxvision.compression import quantized_model

    model, variables, images = _resnet_with_statistics()
    qat = ml_collections.ConfigDict(
        {"mode": "qat", "weight_bits": 8, "act_bits": 0, "calibration_batches": 1}
    )
    quantized = quantized_model.apply(model, qat)
    assert quantized.fold_batch_norm is False  # qwix quantizes the kernel it sees
    with backend.folding(True):
        text = jax.jit(lambda v, x: backend.forward(quantized, v, x)).lower(variables, images)
    with backend.folding(False):
        plain = jax.jit(lambda v, x: backend.forward(quantized, v, x)).lower(variables, images)
    assert text.as_text() == plain.as_text()
