"""Knowledge distillation: the losses, the teacher inside the one train step, DeiT, resume."""

import dataclasses
import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util as flax_traverse

from jaxvision import (
    config as config_lib,
)
from jaxvision import (
    distill,
    evaluate,
    export,
    mix,
    models,
    predict,
    step_factory,
    steps,
    train,
)
from jaxvision import teacher as teacher_lib
from jaxvision import workdir as workdir_lib
from jaxvision.exit_status import BadInputError
from tests.trained_runs import (
    NUM_CLASSES,
    REPO,
    cnn_workdir,
    deit_config,
    deit_student_workdir,
    kill_after_checkpoint,
    mnist_cnn_workdir,
    run_cli,
    scratch_dir,
    smoke_config,
    start_training,
)


def _np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_soft_loss_is_t_squared_kl_from_teacher_to_student():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(5, 7)) * 3, rng.normal(size=(5, 7)) * 3
    temperature = 2.5
    log_pt, log_ps = _np_log_softmax(t / temperature), _np_log_softmax(s / temperature)
    reference = temperature**2 * np.sum(np.exp(log_pt) * (log_pt - log_ps), -1)
    reverse = temperature**2 * np.sum(np.exp(log_ps) * (log_ps - log_pt), -1)
    got = distill.soft_losses(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), temperature)
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-6)
    assert not np.allclose(reference, reverse, rtol=1e-2)  # the direction is tested
    # Mixed with the label loss by the weight.
    options = distill.DistillOptions("soft", temperature=temperature, weight=0.3)
    labels = jax.nn.one_hot(jnp.arange(5) % 7, 7)
    batch = {"teacher_logits": jnp.asarray(t, jnp.float32), "target": labels}
    losses, logits = distill.example_loss(options)(jnp.asarray(s, jnp.float32), batch)
    ce = optax.softmax_cross_entropy(jnp.asarray(s, jnp.float32), labels)
    np.testing.assert_allclose(losses, 0.7 * ce + 0.3 * reference, rtol=1e-5)
    np.testing.assert_array_equal(logits, jnp.asarray(s, jnp.float32))


def test_hard_loss_is_cross_entropy_on_the_teacher_argmax():
    rng = np.random.default_rng(1)
    s = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    t = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    options = distill.DistillOptions("hard", weight=1.0)
    batch = {"teacher_logits": t, "target": jnp.zeros((6, 4))}
    losses, _ = distill.example_loss(options)(s, batch)
    top = np.argmax(np.asarray(t), -1)
    reference = -_np_log_softmax(s)[np.arange(6), top]
    np.testing.assert_allclose(losses, reference, rtol=1e-5)


def _tiny_vit(**overrides):
    return models.create(
        "vit_ti8",
        num_classes=5,
        depth=1,
        hidden_size=32,
        num_heads=2,
        mlp_dim=64,
        image_size=16,
        **overrides,
    )


def test_deit_eval_output_is_the_mean_of_both_heads_and_plain_vits_are_unchanged():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 16, 16, 3))
    plain = jax.eval_shape(_tiny_vit().init, jax.random.PRNGKey(1), x)["params"]
    deit_model = _tiny_vit(distill_token=True)
    params = jax.jit(deit_model.init)(jax.random.PRNGKey(1), x)["params"]
    # Plain ViTs keep their tree; DeiT adds a token, its head and one position embedding.
    assert set(params) - set(plain) == {"dist", "head_dist"}
    shapes = jax.tree.map(np.shape, {k: params[k] for k in plain})
    posemb = ("Transformer", "posembed_input", "pos_embedding")
    assert shapes[posemb[0]][posemb[1]].pop(posemb[2]) == (1, 6, 32)
    assert plain[posemb[0]][posemb[1]].pop(posemb[2]).shape == (1, 5, 32)
    assert shapes == jax.tree.map(np.shape, plain)
    # The heads start at zero: give them distinct weights so the mean is a real test.
    keys = jax.random.split(jax.random.PRNGKey(2), 4)
    for name, (kk, kb) in (("head", keys[:2]), ("head_dist", keys[2:])):
        params[name] = {
            "kernel": jax.random.normal(kk, params[name]["kernel"].shape),
            "bias": jax.random.normal(kb, params[name]["bias"].shape),
        }
    apply = jax.jit(deit_model.apply, static_argnames=("train", "heads"))
    both = apply({"params": params}, x, heads=True)
    assert both.shape == (3, 2, 5)
    assert not np.allclose(both[:, 0], both[:, 1])
    logits = apply({"params": params}, x, train=False)
    np.testing.assert_allclose(logits, (both[:, 0] + both[:, 1]) / 2, rtol=1e-6, atol=1e-6)


def _cnn_teacher(num_classes=NUM_CLASSES, size=32, seed=3) -> teacher_lib.Teacher:
    model = models.create("cnn", num_classes=num_classes, features=[8], hidden=[16])
    variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, size, size, 3)))
    variables = jax.tree.map(np.asarray, variables)
    sha = teacher_lib.variables_sha256(variables)
    return teacher_lib.Teacher(model, variables, size, "memory", sha)


def _soft_config():
    c = smoke_config(config_lib.model("cnn", features=[8], hidden=[16]), 5)
    c.unlock()
    c.distill.loss = "soft"
    c.schedule.warmup_steps = 0  # the first step moves the weights
    c.batch_size = 16
    c.mixup.mixup_alpha = 1.0
    return c


def _batch(n=16, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": jnp.asarray(rng.uniform(-1, 1, (n, size, size, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, NUM_CLASSES, n), jnp.int32),
    }


def test_teacher_gets_no_gradient_and_is_unchanged_by_a_step():
    config = _soft_config()
    teacher = _cnn_teacher()
    before = jax.tree.map(np.copy, teacher.variables)
    built = step_factory.build(
        config, num_classes=NUM_CLASSES, image_shape=(32, 32, 3), total_steps=20, teacher=teacher
    )
    state = built.init_fn()
    params_before = jax.device_get(state.params)
    state, metrics = built.train_fn(state, _batch())
    assert np.isfinite(float(metrics["loss"]))
    moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(), state.params, params_before)
    assert max(jax.tree.leaves(moved)) > 0  # the student learns...
    for a, b in zip(jax.tree.leaves(teacher.variables), jax.tree.leaves(before), strict=True):
        np.testing.assert_array_equal(a, b)  # ... the teacher does not

    # The loss as a function of the teacher's variables has a zero gradient.
    student = built.model
    options = distill.DistillOptions("soft", temperature=2.0)
    batch = _batch()
    targets = jax.nn.one_hot(batch["label"], NUM_CLASSES)
    prepared = {**batch, "target": targets, "weight": jnp.ones(16), "index": jnp.arange(16)}

    def loss_of_teacher(tv):
        hook = distill.loss_hook(teacher.model, tv, options, image_size=32, forward=steps.logits_of)
        fn = steps.batch_loss(student, "softmax_xent", hook)
        return fn(state.params, state.batch_stats, hook.prepare(prepared), jax.random.PRNGKey(0))[0]

    grads = jax.grad(loss_of_teacher)(teacher.variables)
    assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads))


class _Flatten(nn.Module):
    """A teacher that is the identity on 1x1xK images: its logits are the pixels."""

    num_classes: int

    @nn.compact
    def __call__(self, x, *, train=False, **_):
        return x.reshape(x.shape[0], -1)


def test_teacher_and_student_see_the_same_mixed_batch():
    k, n = 4, 8
    student = _Flatten(k)
    teacher = _Flatten(k)
    images = jnp.asarray(np.random.default_rng(0).normal(size=(n, 1, 1, k)), jnp.float32)
    batch = {"image": images, "label": jnp.arange(n, dtype=jnp.int32) % k}
    seen = {}

    def spy(out, b):  # (student logits, teacher logits): what each saw
        seen["student"], seen["teacher"] = out, b["teacher_logits"]
        return jnp.sum((out - b["teacher_logits"]) ** 2, -1), out

    hook = dataclasses.replace(
        distill.loss_hook(
            teacher, {}, distill.DistillOptions("soft"), image_size=1, forward=steps.logits_of
        ),
        example_loss=spy,
    )
    state = steps.TrainState(
        step=jnp.asarray(3), params={}, batch_stats={}, opt_state=(), rng=jax.random.PRNGKey(7)
    )
    options = steps.StepOptions(mixup_alpha=1.0)
    _, metrics = steps.train_step(
        state,
        batch,
        model=student,
        tx=optax.identity(),
        learning_rate_fn=lambda s: 0.0,
        options=options,
        loss_hook=hook,
    )
    assert float(metrics["loss"]) == 0.0
    np.testing.assert_array_equal(seen["student"], seen["teacher"])
    # ... and that batch is the mixed one, not the loader's.
    _, mix_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
    mixed, _ = mix.mix_batch(mix_rng, images, jnp.zeros((n, k)), mixup_alpha=1.0, cutmix_alpha=0)
    np.testing.assert_allclose(seen["teacher"], mixed.reshape(n, k), rtol=1e-6)
    assert not np.allclose(seen["teacher"], images.reshape(n, k))


def test_a_teacher_at_another_resolution_sees_the_resized_batch():
    teacher = _cnn_teacher(size=16)
    logits = distill.teacher_logits(
        teacher.model, teacher.variables, _batch()["image"], image_size=16, forward=steps.logits_of
    )
    assert logits.shape == (16, NUM_CLASSES) and logits.dtype == jnp.float32


def test_config_checks_the_distill_section():
    def check(**distill_values):
        c = config_lib.base()
        c.distill.update(distill_values)
        config_lib.validate(c, num_devices=1, num_processes=1)

    check()  # off by default
    with pytest.raises(ValueError, match=r"Unknown distill\.loss 'kd'"):
        check(loss="kd")
    with pytest.raises(ValueError, match=r"needs distill\.teacher"):
        check(loss="soft")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        check(loss="soft", teacher=REPO, temperature=0.0)
    with pytest.raises(ValueError, match="needs a ViT student"):
        check(loss="deit", teacher=os.path.join(REPO, "pyproject.toml"))


def test_the_offline_recipes_few_labels_and_unlabelled_transfer():
    recipe = os.path.join(REPO, "configs", "distill.py")
    few = config_lib.load(f"{recipe}:deit,few")
    assert (few.dataset.train_split, few.num_train_steps) == ("train[:500]", 2000)
    transfer = config_lib.load(f"{recipe}:soft,few,unlabelled")
    # Every training image, and the label loss weighted 0: the student reads no label.
    assert transfer.dataset.train_split == "train"
    assert (transfer.distill.weight, transfer.distill.temperature) == (1.0, 1.0)
    with pytest.raises(ValueError, match='"unlabelled" needs "soft"'):
        config_lib.load(f"{recipe}:deit,few,unlabelled")


def _saved_cnn(path, num_classes):
    model = models.create("cnn", num_classes=num_classes, features=[8], hidden=[16])
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
    flat = {"/".join(k): np.asarray(v) for k, v in flax_traverse.flatten_dict(params).items()}
    np.savez(path, **flat)
    return params


def _file_teacher_config(path):
    c = _soft_config()
    c.distill.teacher = str(path)
    c.distill.teacher_model = config_lib.model("cnn", features=[8], hidden=[16])
    return c


def test_a_weights_file_teacher_loads_with_a_checksum_of_its_weights(tmp_path):
    params = _saved_cnn(tmp_path / "teacher.npz", NUM_CLASSES)
    config = _file_teacher_config(tmp_path / "teacher.npz")
    loaded = teacher_lib.load(config, NUM_CLASSES, (32, 32, 3))
    assert loaded.image_size == 32 and loaded.source == str((tmp_path / "teacher.npz").resolve())
    assert loaded.sha256 == teacher_lib.variables_sha256({"params": params})
    changed = jax.tree.map(np.asarray, {"params": params})
    changed["params"]["head"]["bias"] = changed["params"]["head"]["bias"] + 1.0
    assert teacher_lib.variables_sha256(changed) != loaded.sha256


def test_a_teacher_of_other_classes_is_refused_before_compiling(tmp_path):
    _saved_cnn(tmp_path / "teacher.npz", 3)
    with pytest.raises(BadInputError, match="predicts 3 classes"):
        teacher_lib.load(_file_teacher_config(tmp_path / "teacher.npz"), NUM_CLASSES, (32, 32, 3))


def test_resume_compares_the_teachers_checksum_and_the_loss_not_its_path():
    config = _soft_config()
    config.distill.teacher_resolved = "source=/a/teacher sha256=abc"
    saved = train.config_record(config)
    assert teacher_lib.resume_differences(saved, config) == []
    config.distill.teacher_resolved = "source=/elsewhere sha256=abc"
    assert teacher_lib.resume_differences(saved, config) == []
    config.distill.teacher_resolved = "source=/a/teacher sha256=def"
    assert [d.split(":")[0] for d in teacher_lib.resume_differences(saved, config)] == [
        "distill.teacher"
    ]
    config.distill.teacher_resolved = "source=/a/teacher sha256=abc"
    config.distill.loss = "hard"
    assert [d.split(":")[0] for d in teacher_lib.resume_differences(saved, config)] == [
        "distill.loss"
    ]


# --- On a distilled (DeiT) student's workdir, trained once and shared. -------------------------


def test_a_distilled_run_logs_agreement_and_the_teachers_accuracy_and_records_the_teacher():
    wd = deit_student_workdir()
    records = workdir_lib.metrics_records(wd)
    agreement = [r["eval/teacher_agreement"] for r in records if "eval/teacher_agreement" in r]
    teacher_acc = [r for r in records if "eval/teacher_accuracy" in r]
    assert len(agreement) == 2 and all(0 <= a <= 1 for a in agreement)
    assert len(teacher_acc) == 1 and teacher_acc[0]["step"] == 0
    assert teacher_acc[0]["eval/teacher_accuracy"] > 0.5  # the trained shared CNN
    with open(os.path.join(wd, "config.json")) as f:
        saved = json.load(f)
    record = saved["distill"]["teacher_resolved"]
    assert record.startswith(f"source={os.path.abspath(cnn_workdir())} sha256=")
    # Teacher parameters are not in the student's checkpoint.
    run = workdir_lib.load(wd)
    assert set(run.variables["params"]) == {
        "Transformer",
        "cls",
        "dist",
        "embedding",
        "head",
        "head_dist",
    }


def test_evaluate_and_predict_treat_a_deit_student_like_any_run():
    wd = deit_student_workdir()
    run = workdir_lib.load(wd)
    assert run.model.distill_token
    report = evaluate.evaluate_workdir(wd)
    logged = [r for r in workdir_lib.metrics_records(wd) if r.get("step") == 40]
    assert report["accuracy"] == pytest.approx(
        next(r["eval/accuracy"] for r in logged if "eval/accuracy" in r), abs=1e-6
    )
    x = np.random.default_rng(0).uniform(-1, 1, size=(5, 32, 32, 3)).astype(np.float32)
    both = run.model.apply(run.variables, x, heads=True)
    expected = np.asarray(both).mean(axis=1)
    predictor = predict.Predictor.from_workdir(wd)
    np.testing.assert_allclose(predictor.logits(x), expected, atol=1e-5)


@pytest.mark.slow
def test_a_deit_students_export_answers_with_the_mean_of_both_heads():
    run = workdir_lib.load(deit_student_workdir())
    x = np.random.default_rng(0).uniform(-1, 1, size=(5, 32, 32, 3)).astype(np.float32)
    expected = np.asarray(run.model.apply(run.variables, x, heads=True)).mean(axis=1)
    out = os.path.join(scratch_dir("deit_export"), "export")
    export.export_stablehlo(run, out)
    np.testing.assert_allclose(export.load_stablehlo(out)(x), expected, atol=1e-5)


def _other_teacher(tmp_path) -> str:
    """The shared CNN's run at step 100 instead of its best step: another teacher."""
    other = str(tmp_path / "other_teacher")
    shutil.copytree(cnn_workdir(), other)
    for step in ("200", "300"):
        shutil.rmtree(os.path.join(other, "checkpoints", step))
    return other


def test_resume_refuses_another_teacher(tmp_path):
    wd = str(tmp_path / "student")
    shutil.copytree(deit_student_workdir(), wd)
    with pytest.raises(ValueError, match="distilled from another teacher"):
        train.run(deit_config(_other_teacher(tmp_path), 40), wd)


@pytest.mark.slow
def test_resume_takes_the_same_weights_elsewhere_and_another_teacher_when_forced(tmp_path):
    wd = str(tmp_path / "student")
    shutil.copytree(deit_student_workdir(), wd)
    # The checksum is of the weights, so a copy is the same teacher; the run is at its last
    # step, so nothing trains.
    same = str(tmp_path / "same_teacher")
    shutil.copytree(cnn_workdir(), same)
    assert "eval/teacher_accuracy" in train.run(deit_config(same, 40), wd)
    forced = deit_config(_other_teacher(tmp_path), 40)
    forced.unlock()
    forced.distill.force_teacher = True
    assert "eval/teacher_accuracy" in train.run(forced, wd)
    with open(os.path.join(wd, "config.json")) as f:
        assert json.load(f)["distill"]["teacher_resolved"].startswith(
            f"source={forced.distill.teacher}"
        )


_LOSSES = """
import json, sys
import jax
from tests.trained_runs import deit_config
from jaxvision import train
c = deit_config(sys.argv[3], 12); c.unlock()
c.distill.loss = "soft"; c.distill.temperature = 2.0
c.model.dropout = 0.1; c.mixup.mixup_alpha = 0.5; c.log_every_steps = 1
c.parallel.batch_branches = 0; c.parallel.cpu_devices = int(sys.argv[2])
# FSDP shards the student's and the teacher's larger parameters over the devices.
c.parallel.fsdp = sys.argv[4] == "fsdp"; c.parallel.fsdp_min_size = 256
train.run(c, sys.argv[1])
losses = [r["train/loss"] for r in map(json.loads, open(sys.argv[1] + "/metrics.jsonl"))
          if "train/loss" in r]
print(json.dumps({"devices": jax.device_count(), "losses": losses}))
"""


@pytest.mark.slow
def test_one_and_four_devices_give_the_same_losses_with_a_teacher(tmp_path):
    teacher = cnn_workdir()
    losses = {}
    for name, devices in (("one", 1), ("four", 4), ("four_fsdp", 4)):
        env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        fsdp = "fsdp" if name.endswith("fsdp") else "replicated"
        out = run_cli(["-c", _LOSSES, str(tmp_path / name), "0", teacher, fsdp], env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["devices"] == devices
        losses[name] = result["losses"]
    assert len(losses["one"]) == 12 and losses["one"][-1] != losses["one"][0]
    np.testing.assert_allclose(losses["four"], losses["one"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(losses["four_fsdp"], losses["one"], rtol=0, atol=1e-4)


def _start(workdir, teacher):
    return start_training(
        [
            "--config=configs/distill.py:soft,smoke",
            f"--workdir={workdir}",
            f"--config.distill.teacher={teacher}",
            "--config.num_train_steps=40",
            "--config.checkpoint_every_steps=10",
            "--config.keep_checkpoints=10",
        ]
    )


def _final_state(workdir):
    run = workdir_lib.load(workdir)
    return jax.device_get(run.variables), run.step


@pytest.mark.slow
def test_sigkill_during_distillation_then_rerun_ends_bitwise_equal(tmp_path):
    teacher = mnist_cnn_workdir()
    ref_dir, cut_dir = str(tmp_path / "ref"), str(tmp_path / "cut")
    reference = _start(ref_dir, teacher)
    _, stderr = reference.communicate(timeout=600)
    assert reference.returncode == 0, stderr[-3000:]
    interrupted = _start(cut_dir, teacher)
    killed_at = kill_after_checkpoint(interrupted, cut_dir, 20)
    assert 20 <= killed_at < 40, "the kill must land before the run finished"
    resumed = _start(cut_dir, teacher)
    _, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr[-3000:]
    (a, step_a), (b, step_b) = _final_state(ref_dir), _final_state(cut_dir)
    assert step_a == step_b == 40
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
