"""Checkpoints that survive: integrity manifests, damaged and incompatible checkpoints,
changed configs on resume, and SIGKILL in the middle of a save (SIGTERM: test_schedulers.py)."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision import checkpoint, steps, train
from tests.trained_runs import REPO


@pytest.fixture(autouse=True)
def _jaxvision_log_reaches_caplog(monkeypatch):
    # console.setup() (run in-process by other CLIs' tests) stops propagation to the root.
    monkeypatch.setattr(logging.getLogger("jaxvision"), "propagate", True)


def _state(value: float, rows: int = 4) -> steps.TrainState:
    params = {"dense": {"kernel": jnp.full((rows, 3), value), "bias": jnp.zeros((3,))}}
    return steps.TrainState(
        step=jnp.asarray(int(value), jnp.int32),
        params=params,
        batch_stats={},
        opt_state={"mu": jax.tree.map(jnp.zeros_like, params)},
        rng=jax.random.PRNGKey(0),
    )


def _corrupt(step_dir: str) -> None:
    """Flips one byte in the middle of the largest array file of a step."""
    files = checkpoint._files(os.path.join(step_dir, "state"))
    path = str(max(files.values(), key=lambda p: os.path.getsize(p)))
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def _saved(tmp_path, steps_=(10, 20)) -> checkpoint.Checkpoints:
    ckpts = checkpoint.Checkpoints(str(tmp_path / "checkpoints"), keep=5)
    for s in steps_:
        ckpts.save(s, _state(float(s)), {"step": s})
    ckpts.wait()
    return ckpts


def test_damaged_checkpoint_is_detected_and_the_previous_one_used(tmp_path, caplog):
    ckpts = _saved(tmp_path)
    assert ckpts.all_steps() == [10, 20]
    assert checkpoint.verify(ckpts.step_dir(20)) == []
    _corrupt(ckpts.step_dir(20))
    problems = checkpoint.verify(ckpts.step_dir(20))
    assert problems and "SHA-256 mismatch" in problems[0]
    with pytest.raises(checkpoint.CheckpointError, match="20 is damaged"):
        ckpts.restore(20, _state(0.0))
    with caplog.at_level(logging.WARNING, logger="jaxvision"):
        state, meta, step = ckpts.restore_latest(_state(0.0))
    assert step == 10 and meta["step"] == 10
    np.testing.assert_array_equal(state.params["dense"]["kernel"], np.full((4, 3), 10.0))
    assert "step 20 is damaged" in caplog.text
    _corrupt(ckpts.step_dir(10))
    with pytest.raises(checkpoint.CheckpointError, match=r"Every checkpoint .* is damaged"):
        ckpts.restore_latest(_state(0.0))
    ckpts.close()


def test_a_step_without_its_manifest_does_not_count(tmp_path):
    ckpts = _saved(tmp_path)
    os.remove(os.path.join(ckpts.step_dir(20), checkpoint.MANIFEST))
    assert ckpts.all_steps() == [10] and ckpts.latest_step() == 10
    ckpts.close()


def test_incompatible_checkpoint_lists_the_mismatch(tmp_path):
    ckpts = _saved(tmp_path, (10,))
    with pytest.raises(checkpoint.CheckpointError, match=r"shape of params/dense/kernel.*\(4, 3\)"):
        ckpts.restore(10, _state(0.0, rows=5))
    ckpts.close()


def test_resume_with_a_changed_model_or_data_is_refused_unless_forced(smoke_config, tmp_path):
    workdir = str(tmp_path / "run")
    setup = train._build(smoke_config)
    ckpts = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"))
    ckpts.save(5, setup.init_fn(), {"step": 5, "config": train.config_record(smoke_config)})
    ckpts.wait()
    changed = train.config_lib.base()
    changed.update(smoke_config)
    changed.model.dropout = 0.5
    changed.dataset.name = "digits"
    changed.dataset.threads = 1  # how fast data is read: allowed to change
    setup.config = changed
    with pytest.raises(ValueError) as info:
        train._restore_or_init(setup, ckpts, workdir)
    message = str(info.value)
    assert "model.dropout: checkpoint 0.25, now 0.5" in message
    assert "dataset.name: checkpoint 'mnist5k', now 'digits'" in message
    assert "threads" not in message and "force_resume" in message
    changed.force_resume = True
    _, step = train._restore_or_init(setup, ckpts, workdir)
    assert step == 5
    ckpts.close()


def _cli(workdir, *overrides, script=None):
    args = [
        "--config=configs/quickstart.py:smoke",
        f"--workdir={workdir}",
        "--config.dataset.name=digits",
        "--config.num_train_steps=400",
        "--config.checkpoint_every_steps=10",
        "--config.keep_checkpoints=10",
        *overrides,
    ]
    command = ["-c", script, *args] if script else ["-m", "jaxvision.main", *args]
    return subprocess.Popen(
        [sys.executable, *command],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path, proc, seconds=300):
    deadline = time.time() + seconds
    while time.time() < deadline and not os.path.exists(path) and proc.poll() is None:
        time.sleep(0.05)
    assert os.path.exists(path), proc.communicate()[1][-3000:]


# Trains like the CLI, but the save of step 20 hangs just before Orbax finalises it (after
# all array files are written), so the parent can SIGKILL the process mid-save.
_HANG_AT_20 = """
import os, sys, time
from orbax.checkpoint._src.path import atomicity
finalize = atomicity.AtomicRenameTemporaryPath.finalize

async def hang_at_20(self, *args, **kwargs):
    if os.path.basename(str(self._final_path)) == "20":
        open(os.path.join(os.path.dirname(str(self._final_path)), "..", "HANGING"), "w").close()
        time.sleep(3600)
    return await finalize(self, *args, **kwargs)

atomicity.AtomicRenameTemporaryPath.finalize = hang_at_20
from absl import app
from jaxvision import main
sys.argv = ["main", *sys.argv[1:]]
app.run(main.main)
"""


@pytest.mark.slow  # ~1-2 min: a CLI run to step 20, then a resumed run to 30
def test_sigkill_during_a_save_resumes_from_the_previous_checkpoint(tmp_path, caplog):
    workdir = str(tmp_path / "run")
    proc = _cli(workdir, "--config.num_train_steps=30", script=_HANG_AT_20)
    _wait_for(os.path.join(workdir, "HANGING"), proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    ckpt_dir = os.path.join(workdir, "checkpoints")
    leftovers = [d for d in os.listdir(ckpt_dir) if d.startswith("20.")]
    assert leftovers, "the kill must land in the middle of the save of step 20"
    assert checkpoint.Checkpoints(ckpt_dir).all_steps() == [10]

    from configs import quickstart

    config = quickstart.get_config("smoke")
    config.unlock()
    config.dataset.name = "digits"
    config.num_train_steps = 30
    config.checkpoint_every_steps = 10
    config.keep_checkpoints = 10
    with caplog.at_level(logging.INFO, logger="jaxvision"):
        train.run(config, workdir)
    assert "at step 10" in caplog.text
    assert checkpoint.Checkpoints(ckpt_dir).all_steps() == [10, 20, 30]
    assert not [d for d in os.listdir(ckpt_dir) if d.startswith("20.")]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        logged = [json.loads(line)["step"] for line in f if "train/loss" in line]
    assert logged == sorted(set(logged)) and logged[-1] == 30


def test_divergence_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    smoke_config, tmp_path
):
    # The learning rate jumps by 1e30 at step 12: the weights blow up right after.
    smoke_config.optimizer.name = "sgd"
    smoke_config.optimizer.learning_rate = 0.01
    smoke_config.schedule.name = "step"
    smoke_config.schedule.boundaries_steps = (12,)
    smoke_config.schedule.decay_factor = 1e30
    workdir = str(tmp_path / "run")
    with pytest.raises(
        train.DivergedError, match=r"at step 1[2-5]: train/(loss|grad_norm|param_norm) ="
    ):
        train.run(smoke_config, workdir)
    ckpts = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"))
    assert ckpts.all_steps() == [10]
    ckpts.close()


def test_ema_is_evaluated_checkpointed_and_found_by_the_workdir_loader(smoke_config, tmp_path):
    from jaxvision import workdir as workdir_lib

    smoke_config.optimizer.ema_decay = 0.9
    workdir = str(tmp_path / "run")
    result = train.run(smoke_config, workdir)
    assert 0 <= result["eval_ema/accuracy"] <= 1 and "eval/accuracy" in result
    run = workdir_lib.load(workdir, ema=True)
    plain = workdir_lib.load(workdir)
    ema, raw = (
        run.variables["params"]["head"]["kernel"],
        plain.variables["params"]["head"]["kernel"],
    )
    assert ema.shape == raw.shape and not np.allclose(ema, raw)
