"""The optimisation toolbox: every optimizer and schedule by name, masks, freezing,
multipliers, EMA, gradient accumulation, mixing, losses and NaN handling."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxvision import config as config_lib
from jaxvision import mix, models, optim, steps, train


def _config(**changes):
    c = config_lib.base()
    c.num_train_steps = 60
    for key, value in changes.items():
        section, _, name = key.rpartition(".")
        (c[section] if section else c)[name] = value
    return c


def _problem():
    """A small least-squares problem with a kernel and a bias."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 8)), jnp.float32)
    y = x @ jnp.asarray(rng.normal(size=(8, 3)), jnp.float32) + 0.5
    kernel = jnp.asarray(rng.normal(size=(8, 3)) * 0.3, jnp.float32)  # LAMB scales by |w|
    params = {"dense": {"kernel": kernel, "bias": jnp.zeros((3,))}}

    def loss(p):
        return jnp.mean((x @ p["dense"]["kernel"] + p["dense"]["bias"] - y) ** 2)

    return params, loss


def _train(tx, steps_=60):
    params, loss = _problem()
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(steps_):
        params, state = step(params, state)
    return loss(_problem()[0]), loss(params), params, state


@pytest.mark.parametrize("name", config_lib.OPTIMIZERS)
def test_every_optimizer_builds_and_lowers_the_loss(name):
    # Adafactor scales steps by the parameters' RMS (~0.3 here), so it takes a larger rate.
    lr = 0.3 if name == "adafactor" else 0.05
    c = _config(**{"optimizer.name": name, "optimizer.learning_rate": lr})
    config_lib.validate(c, num_devices=1, num_processes=1)
    before, after, _, _ = _train(optim.build(c, 60))
    assert after < 0.5 * before, (name, before, after)


@pytest.mark.parametrize("name", config_lib.SCHEDULES)
def test_every_schedule_builds_and_lowers_the_loss(name):
    c = _config(
        **{
            "schedule.name": name,
            "schedule.warmup_steps": 5,
            "schedule.boundaries_steps": (30, 45),
            "schedule.timescale_steps": 20,
            "optimizer.learning_rate": 0.05,
        }
    )
    lr = optim.learning_rate_schedule(c, 60)
    assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.05)
    if name != "constant":
        assert float(lr(59)) < 0.05
    before, after, _, _ = _train(optim.build(c, 60))
    assert after < 0.5 * before, (name, before, after)


def test_schedule_in_epochs_equals_schedule_in_steps():
    in_steps = _config(**{"schedule.name": "step", "schedule.warmup_steps": 10})
    in_steps.schedule.boundaries_steps = (40,)
    in_epochs = _config(**{"schedule.name": "step", "schedule.warmup_epochs": 1.0})
    in_epochs.schedule.boundaries_epochs = (4.0,)
    a = optim.learning_rate_schedule(in_steps, 60)
    b = optim.learning_rate_schedule(in_epochs, 60, steps_per_epoch=10)
    for t in range(60):
        assert float(a(t)) == float(b(t))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"optimizer.name": "adamm"}, "Unknown optimizer.name 'adamm'"),
        ({"optimizer.learning_rate": -0.1}, "learning_rate must be > 0"),
        ({"schedule.name": "cosin"}, "Unknown schedule.name 'cosin'"),
        ({"loss": "hinge"}, "Unknown loss 'hinge'"),
        ({"grad_accum_steps": 3}, "grad_accum_steps=3"),
        ({"parallel.batch_branches": 3}, "parallel.batch_branches=3"),
        ({"parallel.batch_branches": -1}, "parallel.batch_branches=-1"),
        ({"schedule.warmup_steps": 5, "schedule.warmup_epochs": 1.0}, "not both"),
        ({"mixup.cutmix_alpha": -1.0}, "mixup.cutmix_alpha must be >= 0"),
        ({"on_nonfinite": "ignore"}, "Unknown on_nonfinite 'ignore'"),
        ({"compute_dtype": "float16"}, "Unknown compute_dtype 'float16'"),
        ({"optimizer.ema_decay": 1.0}, r"ema_decay must be in \[0, 1\)"),
        ({"optimizer.lr_multipliers": (("head",),)}, "lr_multipliers entries"),
    ],
)
def test_bad_values_fail_validation(changes, message):
    with pytest.raises(ValueError, match=message):
        config_lib.validate(_config(**changes), num_devices=1, num_processes=1)


def test_schedule_longer_than_the_run_fails_before_compilation(smoke_config, tmp_path):
    smoke_config.schedule.warmup_steps = 50  # the smoke run has 20 steps
    with pytest.raises(ValueError, match=r"longer than the run.*20 steps"):
        train.run(smoke_config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
    c = _config(**{"schedule.name": "step"})
    c.schedule.boundaries_steps = (100,)
    with pytest.raises(ValueError, match=r"boundaries inside the run.*\[100\]"):
        optim.build(c, 60)


def test_weight_decay_applies_to_kernels_only_by_default():
    c = _config(**{"optimizer.weight_decay": 0.5, "optimizer.learning_rate": 0.1})
    params = {"conv": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}}
    tx = optim.build(c, 60)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, tx.init(params), params)
    assert float(jnp.abs(updates["conv"]["kernel"]).max()) > 0
    assert float(jnp.abs(updates["conv"]["bias"]).max()) == 0


def test_freezing_and_lr_multipliers():
    c = _config(**{"optimizer.name": "sgd", "optimizer.momentum": 0.0})
    c.schedule.name = "constant"
    plain = optim.build(c, 60)
    c.optimizer.freeze = "bias$"
    c.optimizer.lr_multipliers = (("kernel", 0.5),)
    tuned = optim.build(c, 60)
    params, loss = _problem()
    grads = jax.grad(loss)(params)
    u_plain, _ = plain.update(grads, plain.init(params), params)
    u_tuned, _ = tuned.update(grads, tuned.init(params), params)
    assert float(jnp.abs(u_tuned["dense"]["bias"]).max()) == 0
    np.testing.assert_allclose(u_tuned["dense"]["kernel"], 0.5 * u_plain["dense"]["kernel"])


def test_ema_follows_the_parameters_and_is_found_in_the_state():
    c = _config(**{"optimizer.ema_decay": 0.9, "optimizer.learning_rate": 0.05})
    _, _, params, opt_state = _train(optim.build(c, 60))
    ema = optim.ema_params(opt_state)
    assert ema is not None
    state = steps.TrainState(jnp.zeros(()), params, {}, opt_state, jax.random.PRNGKey(0))
    assert state.ema_params is ema
    gap = jnp.abs(ema["dense"]["kernel"] - params["dense"]["kernel"]).max()
    assert 0 < float(gap) < float(jnp.abs(params["dense"]["kernel"]).max())
    assert optim.ema_params(optim.build(_config(), 60).init(params)) is None


def _cnn_step(accum, options=None, dropout=0.0, **batch_overrides):
    model = models.create("cnn", num_classes=10, features=(4, 8), hidden=(16,), dropout=dropout)
    c = _config(**{"optimizer.learning_rate": 0.01})
    tx = optim.build(c, 60)
    state = steps.init_state(model, tx, 0, (28, 28, 1))
    rng = np.random.default_rng(1)
    batch = {
        "image": jnp.asarray(rng.normal(size=(16, 28, 28, 1)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32),
        **batch_overrides,
    }
    options = options or steps.StepOptions(accum_steps=accum)
    fn = jax.jit(
        functools.partial(
            steps.train_step,
            model=model,
            tx=tx,
            learning_rate_fn=optim.learning_rate_schedule(c, 60),
            options=options,
        )
    )
    return state, fn(state, batch)


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_grad_accumulation_equals_one_step_on_the_whole_batch(dropout):
    # With dropout too: each example's mask comes from its index, not its micro-batch.
    _, (one, m1) = _cnn_step(1, dropout=dropout)
    _, (four, m4) = _cnn_step(4, dropout=dropout)
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(four.params), jax.tree.leaves(one.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_nonfinite_step_is_skipped_when_configured_and_named_otherwise():
    image = jnp.full((16, 28, 28, 1), jnp.nan)
    before, (after, metrics) = _cnn_step(1, steps.StepOptions(skip_nonfinite=True), image=image)
    assert int(after.step) == 1 and float(metrics["nonfinite"]) == 1.0
    for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(before.params), strict=True):
        np.testing.assert_array_equal(a, b)
    host = jax.device_get(metrics)
    assert train.check_finite([(7, host)], "skip") == 1
    with pytest.raises(train.DivergedError, match=r"step 7: train/loss = nan"):
        train.check_finite([(7, host)], "stop")


def test_mixup_and_cutmix_keep_soft_targets_consistent():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.random((8, 16, 16, 3)), jnp.float32)
    targets = jax.nn.one_hot(jnp.arange(8) % 4, 4)
    key = jax.random.PRNGKey(3)
    same = mix.mix_batch(key, images, targets, mixup_alpha=0.0, cutmix_alpha=0.0)
    assert same[0] is images and same[1] is targets
    mixed, soft = mix.mix_batch(key, images, targets, mixup_alpha=0.4, cutmix_alpha=0.0)
    np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-6)
    lam = float(soft[0, 0])  # example 0 has class 0; its partner (reversed) has class 3
    np.testing.assert_allclose(mixed[0], lam * images[0] + (1 - lam) * images[7], rtol=1e-5)
    cut, soft = mix.mix_batch(key, images, targets, mixup_alpha=0.0, cutmix_alpha=1.0)
    from_partner = float(jnp.mean(jnp.all(cut[0] == images[7], axis=-1)))
    np.testing.assert_allclose(float(soft[0, 3]), from_partner, atol=1e-6)


def test_label_smoothing_and_sigmoid_loss():
    logits = jnp.asarray([[2.0, -1.0, 0.0]])
    targets = jax.nn.one_hot(jnp.asarray([0]), 3)
    soft = steps.example_losses(logits, targets, "softmax_xent")
    assert float(soft[0]) == pytest.approx(float(-jax.nn.log_softmax(logits)[0, 0]))
    sig = steps.example_losses(logits, targets, "sigmoid_xent")
    expected = -(jax.nn.log_sigmoid(2.0) + jax.nn.log_sigmoid(1.0) + jax.nn.log_sigmoid(0.0))
    assert float(sig[0]) == pytest.approx(float(expected), rel=1e-6)
    _, (_, plain) = _cnn_step(1)
    _, (_, smooth) = _cnn_step(1, steps.StepOptions(label_smoothing=0.3))
    assert float(smooth["loss"]) != float(plain["loss"])
