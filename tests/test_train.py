"""The training loop end to end: learning, exact-once eval, resume after SIGKILL, bad input."""

import json
import os

import jax
import numpy as np
import pytest

from jaxvision import checkpoint, data, parallel, step_factory, train
from tests.trained_runs import kill_after_checkpoint, run_cli, start_training


def _final_params(workdir, config):
    info = data.prepare(config)
    built = step_factory.build(
        config,
        num_classes=info.num_classes,
        image_shape=info.image_shape,
        num_train_examples=info.num_train,
    )
    ckpts = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"))
    state, _ = ckpts.restore(ckpts.latest_step(), built.abstract_state)
    return jax.device_get(state)


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_smoke_run_writes_the_workdir_contract(smoke_config, tmp_path):
    workdir = str(tmp_path / "run")
    result = train.run(smoke_config, workdir)
    assert result["eval/num_examples"] == 1000
    # The contract's four entries, plus the end-of-training report (evaluate.after_training).
    assert sorted(os.listdir(workdir)) == [
        "checkpoints",
        "config.json",
        "eval",
        "metrics.jsonl",
        "tensorboard",
        "training_curves.png",
    ]
    records = _metrics(workdir)
    assert all("step" in r for r in records)
    assert any("train/loss" in r for r in records) and any("eval/accuracy" in r for r in records)
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    assert checkpoint.Checkpoints(os.path.join(workdir, "checkpoints")).all_steps() == [10, 20]
    with open(os.path.join(workdir, "config.json")) as f:
        saved = json.load(f)
    assert saved["model"]["name"] == "cnn" and saved["batch_size"] == 32


def test_eval_counts_each_example_exactly_once(smoke_config):
    # digits has 300 test images; 64 does not divide 300.
    smoke_config.dataset.name = "digits"
    smoke_config.eval_batch_size = 64
    info = data.prepare(smoke_config)
    eval_data = data.eval_batches(smoke_config, info, parallel.make_mesh())
    assert eval_data.num_batches == 5 and eval_data.num_examples == 300
    labels, masks = [], []
    for batch in eval_data:
        labels.append(np.asarray(batch["label"]))
        masks.append(np.asarray(batch["mask"]))
    labels, masks = np.concatenate(labels), np.concatenate(masks)
    assert masks.sum() == 300 and np.all(masks[:300] == 1) and np.all(masks[300:] == 0)
    reference = info.builder.as_dataset(split="test", batch_size=-1)["label"].numpy()
    np.testing.assert_array_equal(np.sort(labels[masks == 1]), np.sort(reference))


def test_eval_metrics_match_a_per_example_computation(smoke_config, tmp_path):
    smoke_config.dataset.name = "digits"
    smoke_config.eval_batch_size = 64
    workdir = str(tmp_path / "run")
    result = train.run(smoke_config, workdir)
    # Recompute accuracy example by example from the restored parameters.
    info = data.prepare(smoke_config)
    model = step_factory.create_model(smoke_config, info.num_classes)
    state = _final_params(workdir, smoke_config)
    eval_data = data.eval_batches(smoke_config, info, parallel.make_mesh())
    correct = count = 0
    for batch in eval_data:
        logits = model.apply({"params": state.params}, np.asarray(batch["image"]))
        mask = np.asarray(batch["mask"]) == 1
        correct += int((np.argmax(logits, -1) == np.asarray(batch["label"]))[mask].sum())
        count += int(mask.sum())
    assert count == 300
    assert result["eval/accuracy"] == pytest.approx(correct / count, abs=1e-9)


def _start(workdir, *overrides):
    return start_training(
        [
            "--config=configs/quickstart.py:smoke",
            f"--workdir={workdir}",
            "--config.dataset.name=digits",
            "--config.num_train_steps=40",
            "--config.checkpoint_every_steps=10",
            "--config.keep_checkpoints=10",
            *overrides,
        ]
    )


@pytest.mark.slow
def test_sigkill_then_rerun_ends_bitwise_equal_to_an_uninterrupted_run(smoke_config, tmp_path):
    ref_dir, cut_dir = str(tmp_path / "ref"), str(tmp_path / "cut")
    reference = _start(ref_dir)
    interrupted = _start(cut_dir)
    killed_at = kill_after_checkpoint(interrupted, cut_dir, 20)
    _, stderr = reference.communicate(timeout=300)
    assert reference.returncode == 0, stderr[-3000:]
    assert 20 <= killed_at < 40, "the kill must land before the run finished"
    resumed = _start(cut_dir)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-3000:]

    smoke_config.dataset.name = "digits"
    smoke_config.num_train_steps = 40
    a = _final_params(ref_dir, smoke_config)
    b = _final_params(cut_dir, smoke_config)
    assert int(a.step) == int(b.step) == 40
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    # The resumed run's log has each step once.
    steps_logged = [r["step"] for r in _metrics(cut_dir) if "train/loss" in r]
    assert steps_logged == sorted(set(steps_logged))


@pytest.mark.slow
def test_a_rerun_loads_its_compiled_steps_from_the_cache_and_ends_bitwise_equal(
    smoke_config, tmp_path
):
    cache = tmp_path / "cache"
    args = [
        "-m",
        "jaxvision.main",
        "--config=configs/quickstart.py:smoke",
        "--config.dataset.name=digits",
        "--config.num_train_steps=10",
        f"--compilation_cache_dir={cache}",
    ]
    every_compile = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    first = run_cli([*args, f"--workdir={tmp_path / 'first'}"], env=every_compile)
    assert first.returncode == 0, first.stderr[-3000:]

    def compiled():  # entry -> when it was written (a compilation writes, a load does not)
        return {e.name: e.stat().st_mtime_ns for e in cache.iterdir() if e.name.endswith("-cache")}

    entries = compiled()
    assert any(e.startswith("jit_train_step") for e in entries), entries
    second = run_cli([*args, f"--workdir={tmp_path / 'second'}"], env=every_compile)
    assert second.returncode == 0, second.stderr[-3000:]
    assert compiled() == entries  # every program was loaded, none compiled anew
    smoke_config.dataset.name = "digits"
    smoke_config.num_train_steps = 10
    a = _final_params(str(tmp_path / "first"), smoke_config)
    b = _final_params(str(tmp_path / "second"), smoke_config)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    # An empty directory turns the cache off.
    off = run_cli(
        [*args[:-1], "--compilation_cache_dir=", f"--workdir={tmp_path / 'off'}"],
        env={**every_compile, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "unused")},
    )
    assert off.returncode == 0, off.stderr[-3000:]
    assert not (tmp_path / "unused").exists()


_LOSSES = """
import json, sys
import jax
from configs import quickstart
from jaxvision import train
c = quickstart.get_config(); c.unlock()  # as shipped: dropout, batch 128, auto branches
# Only the run's length changes (60 steps, 50 of them warmup) and it logs every step.
c.num_train_steps = 60; c.log_every_steps = 1
c.parallel.cpu_devices = int(sys.argv[2])
train.run(c, sys.argv[1])
losses = [r["train/loss"] for r in map(json.loads, open(sys.argv[1] + "/metrics.jsonl"))
          if "train/loss" in r]
print(json.dumps({"devices": jax.device_count(), "losses": losses}))
"""


@pytest.mark.slow
def test_one_and_four_devices_give_the_same_losses(tmp_path):
    # The shipped quickstart: on one CPU device the backend runs the step as two branches,
    # on four as one per device; dropout masks follow the examples, so the losses agree up
    # to float reduction order (sums over 128 examples split 1, 2 or 4 ways): within 2.4e-7
    # over the first 38 steps. Near the peak learning rate a max-pool or ReLU near-tie
    # routes one gradient differently (step 39 here: one batch 1.7e-5 apart, the next 2e-7)
    # and the runs drift apart as any two float orders would (1e-3 by step 47). The first 30
    # steps are compared, so 1e-4 leaves room for other CPUs' kernels.
    runs = {"one": (1, 0), "flag": (4, 0), "config": (1, 4)}
    losses = {}
    for name, (flag_devices, cpu_devices) in runs.items():
        env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={flag_devices}"}
        out = run_cli(["-c", _LOSSES, str(tmp_path / name), str(cpu_devices)], env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["devices"] == (1 if name == "one" else 4)
        losses[name] = result["losses"]
    assert len(losses["one"]) == 60
    assert losses["one"][29] < losses["one"][0] - 0.3  # training moves: not a constant
    first = {name: values[:30] for name, values in losses.items()}
    np.testing.assert_allclose(first["flag"], first["one"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(first["config"], first["one"], rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--config.dataset.name=imagenet_typo", "Unknown dataset.name 'imagenet_typo'"),
        ("--config.model.name=resnt18", "Unknown model name 'resnt18'"),
        ("--config.batch_size=30", "not divisible by the number of devices"),
        ("--config.optimiser.name=sgd", "optimiser"),
        ("--config.parallel.cpu_devices=-1", "parallel.cpu_devices must be >= 0"),
        # Applied before validation, over the XLA flag: 128 images do not split 3 ways.
        ("--config.parallel.cpu_devices=3", "not divisible by the number of devices (3)"),
    ],
)
def test_bad_input_exits_nonzero_with_a_clear_message(tmp_path, override, message):
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    workdir = tmp_path / "run"
    out = run_cli(
        [
            "-m",
            "jaxvision.main",
            "--config=configs/quickstart.py:smoke",
            f"--workdir={workdir}",
            override,
        ],
        env=env,
    )
    assert out.returncode != 0
    assert message in out.stderr
    assert not (workdir / "checkpoints").exists()


def test_workdir_that_is_a_file_is_refused(smoke_config, tmp_path):
    path = tmp_path / "file"
    path.write_text("not a directory")
    with pytest.raises(ValueError, match="is a file"):
        train.run(smoke_config, str(path))
    assert path.read_text() == "not a directory"
