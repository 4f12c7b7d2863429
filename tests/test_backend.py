"""The backend layer: the only home of CPU tuning, a no-op elsewhere, and exact where it acts."""

import functools
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision import backend, models, optim, step_factory, steps
from jaxvision import config as config_lib
from jaxvision.backend import branches

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "jaxvision"

# What only the backend layer may speak of: XLA:CPU compiler options, batch-branch
# machinery, Winograd convolutions, huge pages.
_BACKEND_ONLY = re.compile(
    r"compiler_options|xla_cpu_|winograd|hugetlb|huge.page|GLIBC_TUNABLES|auto_branches"
    r"|branched_|strided_slices",
    re.IGNORECASE,
)
# Files outside backend/ that name the `parallel.batch_branches` knob: the schema that
# defines it, the factory that hands it to the backend, the benchmark that reports it.
_BRANCH_KNOB = re.compile(r"batch_branches|train_branches")
_BRANCH_KNOB_FILES = {"config.py", "step_factory.py", "benchmark.py"}


def _package_files() -> list[pathlib.Path]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 30  # the walk found the package
    return files


def test_only_the_backend_layer_mentions_cpu_tuning():
    offenders = []
    for path in _package_files():
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "backend":
            continue
        text = path.read_text()
        offenders += [f"{rel}: {m}" for m in sorted(set(_BACKEND_ONLY.findall(text)))]
        if _BRANCH_KNOB.search(text) and rel.name not in _BRANCH_KNOB_FILES:
            offenders.append(f"{rel}: {_BRANCH_KNOB.search(text).group()}")
    assert offenders == []


def test_steps_has_no_backend_specific_code():
    text = (PACKAGE / "steps.py").read_text()
    for word in ("branch", "cpu", "xla", "backend", "winograd", "compiler_options"):
        assert word not in text.lower(), word


def _config(name: str, **model) -> config_lib.ml_collections.ConfigDict:
    c = config_lib.base()
    c.model = config_lib.model(name, **model)
    c.batch_size = 8
    c.num_train_steps = 10
    c.unlock()
    return c


def _train_jaxpr(config, image_shape) -> tuple[step_factory.Steps, str]:
    built = step_factory.build(
        config, num_classes=10, image_shape=image_shape, total_steps=config.num_train_steps
    )
    batch = {
        "image": jax.ShapeDtypeStruct((config.batch_size, *image_shape), jnp.float32),
        "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32),
    }
    step = functools.partial(
        steps.train_step,
        model=built.model,
        tx=built.tx,
        learning_rate_fn=built.learning_rate_fn,
        options=steps.StepOptions.from_config(config),
        loss_transform=functools.partial(
            backend.train_loss,
            configured=config.parallel.batch_branches,
            has_batch_norm=bool(built.abstract_state.batch_stats),
            examples=config.batch_size,
        ),
    )
    return built, str(jax.make_jaxpr(step)(built.abstract_state, batch))


@pytest.mark.parametrize("platform", ["tpu", "gpu"])
def test_on_accelerators_the_train_step_carries_none_of_the_cpu_tuning(platform, monkeypatch):
    jit_kwargs = []
    real_jit = jax.jit
    monkeypatch.setattr(jax, "jit", lambda f, **kw: jit_kwargs.append(kw) or real_jit(f, **kw))
    resnet = _config("resnet18", stem="cifar", width=0.25)
    vit = _config("vit_ti4", image_size=16, depth=1, dropout=0.1)
    # Where the layer acts: Winograd in the ResNet, two branches for the ViT, CPU options.
    cpu_resnet, cpu_resnet_jaxpr = _train_jaxpr(resnet, (16, 16, 3))
    cpu_vit, cpu_vit_jaxpr = _train_jaxpr(vit, (16, 16, 3))
    # Winograd computes some convolutions (and kernel gradients) as matmuls instead.
    cpu_convs = cpu_resnet_jaxpr.count("conv_general_dilated")
    assert cpu_resnet.model.block_conv is not None
    assert cpu_vit.train_branches == 2 and cpu_vit_jaxpr.count("name=loss_fn") >= 2
    assert any(kw.get("compiler_options") for kw in jit_kwargs)
    jit_kwargs.clear()
    with backend.forced(platform):
        resnet_built, resnet_jaxpr = _train_jaxpr(resnet, (16, 16, 3))
        vit_built, vit_jaxpr = _train_jaxpr(vit, (16, 16, 3))
        assert backend.compiler_options() is None
        assert backend.compiler_options(once=True) is None
    assert resnet_built.model.block_conv is None
    assert resnet_jaxpr.count("conv_general_dilated") > cpu_convs
    assert vit_built.train_branches == resnet_built.train_branches == 1
    assert "name=loss_fn" not in vit_jaxpr  # one plain loss, no jitted branch calls
    assert jit_kwargs and all(kw.get("compiler_options") is None for kw in jit_kwargs)


def test_auto_branches_split_only_batch_norm_free_models_on_one_cpu_device():
    assert jax.device_count() == 1  # the default test process
    auto = functools.partial(branches.auto_branches, "cpu")
    assert auto(False, 16, train=True) == 2
    assert auto(True, 16, train=True) == 1
    assert auto(False, 15, train=True) == 1
    assert auto(True, 16, train=False) == 4
    assert auto(False, 6, train=False) == 1
    assert branches.auto_branches("tpu", False, 16, train=True) == 1
    assert branches.auto_branches("gpu", True, 16, train=False) == 1


def _step(model, image_shape, *, accum=1, branch_count=1, state=None, **options):
    c = config_lib.base()
    c.optimizer.learning_rate = 0.01
    tx = optim.build(c, 60)
    state = state or steps.init_state(model, tx, 0, image_shape)
    rng = np.random.default_rng(1)
    batch = {
        "image": jnp.asarray(rng.normal(size=(16, *image_shape)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32),
    }
    fn = functools.partial(
        steps.train_step,
        model=model,
        tx=tx,
        learning_rate_fn=optim.learning_rate_schedule(c, 60),
        options=steps.StepOptions(accum_steps=accum, **options),
        loss_transform=lambda loss: branches.branched_loss(loss, branch_count),
    )
    return jax.jit(fn)(state, batch)


@pytest.mark.parametrize(("accum", "branch_count"), [(1, 2), (2, 2)])
def test_branches_and_accumulation_equal_one_step_with_dropout_and_mixup(accum, branch_count):
    model = models.create("cnn", num_classes=10, features=(4, 8), hidden=(16,), dropout=0.5)
    mixing = {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "label_smoothing": 0.1}
    one, m1 = _step(model, (28, 28, 1), **mixing)
    split, ms = _step(model, (28, 28, 1), accum=accum, branch_count=branch_count, **mixing)
    for key in ("loss", "accuracy", "grad_norm"):
        np.testing.assert_allclose(ms[key], m1[key], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(split.params), jax.tree.leaves(one.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("scan", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_vit_dropout_and_drop_path_masks_do_not_depend_on_the_split(scan):
    model = models.create(
        "vit_ti4",
        num_classes=10,
        image_size=8,
        depth=2,
        dropout=0.2,
        attention_dropout=0.2,
        drop_path=0.3,
        scan=scan,
    )
    _, m1 = _step(model, (8, 8, 3))
    _, m2 = _step(model, (8, 8, 3), accum=2, branch_count=2)
    np.testing.assert_allclose(m2["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m2["grad_norm"], m1["grad_norm"], rtol=1e-5)
    # The masks are really drawn: another rng, other activations.
    images = jnp.ones((2, 8, 8, 3))
    variables = model.init(jax.random.key(0), images)
    tokens = [
        model.apply(
            variables, images, train=True, return_features=True, rngs={"dropout": jax.random.key(k)}
        )[1]["tokens"]
        for k in (1, 2)
    ]
    assert not np.allclose(*tokens)


@pytest.mark.parametrize("examples", [8, 6])
def test_forward_in_branches_equals_one_pass(examples):
    model = models.create("resnet18", num_classes=10, stem="cifar", width=0.125)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), train=False)
    images = jax.random.normal(jax.random.PRNGKey(1), (examples, 8, 8, 3))
    np.testing.assert_allclose(
        jax.jit(functools.partial(backend.forward, model))(variables, images),
        model.apply(variables, images, train=False),
        rtol=1e-5,
        atol=1e-6,
    )


def test_batch_branches_average_batch_norm_statistics():
    model = models.create("resnet18", num_classes=10, stem="cifar", width=0.125)
    c = config_lib.base()
    tx = optim.build(c, 60)
    state = steps.init_state(model, tx, 0, (8, 8, 3))
    rng = np.random.default_rng(2)
    # Two halves with different scales: per-branch statistics differ from the batch's.
    image = rng.normal(size=(8, 8, 8, 3)) * np.repeat([1.0, 3.0], 4)[:, None, None, None]
    batch = {"image": jnp.asarray(image, jnp.float32), "label": jnp.arange(8) % 10}

    def stats(branch_count):
        fn = functools.partial(
            steps.train_step,
            model=model,
            tx=tx,
            learning_rate_fn=optim.learning_rate_schedule(c, 60),
            loss_transform=lambda loss: branches.branched_loss(loss, branch_count),
        )
        return jax.jit(fn)(state, batch)[0].batch_stats

    one, two = stats(1), stats(2)
    # The stem's BatchNorm sees the same conv outputs either way, and equal halves' mean
    # batch mean is the batch mean: the averaged running mean matches; one branch's alone
    # would not.
    np.testing.assert_allclose(two["stem_bn"]["mean"], one["stem_bn"]["mean"], rtol=1e-4)
    # Variances are per branch (each normalises with its own statistics): close, not equal.
    np.testing.assert_allclose(two["stem_bn"]["var"], one["stem_bn"]["var"], rtol=0.1)
    assert not np.allclose(two["stem_bn"]["var"], one["stem_bn"]["var"], rtol=1e-6)
