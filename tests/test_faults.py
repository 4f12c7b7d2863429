"""A run never destroys what it did not make, and every failure fails: checkpoints without
manifests, stray files, symbolic links, other tools' checkpoints, readers during a live
save, a second trainer, disk-full and unwritable manifests, NaN weights, skipped steps."""

import errno
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import types

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxvision import checkpoint, steps, train, workdir_lock
from jaxvision.exit_status import RunFailure
from tests.trained_runs import REPO


@pytest.fixture(autouse=True)
def _jaxvision_log_reaches_caplog(monkeypatch):
    # console.setup() (run in-process by other CLIs' tests) stops propagation to the root.
    monkeypatch.setattr(logging.getLogger("jaxvision"), "propagate", True)


def _state(value: float) -> steps.TrainState:
    params = {"dense": {"kernel": jnp.full((4, 3), value), "bias": jnp.zeros((3,))}}
    return steps.TrainState(
        step=jnp.asarray(int(value), jnp.int32),
        params=params,
        batch_stats={},
        opt_state={"mu": jax.tree.map(jnp.zeros_like, params)},
        rng=jax.random.PRNGKey(0),
    )


def _hashes(root) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under `root` (links not followed)."""
    out = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _writer(directory, keep=5) -> checkpoint.Checkpoints:
    return checkpoint.Checkpoints(str(directory), keep=keep)


def _save(ckpts, *steps_):
    for s in steps_:
        ckpts.save(s, _state(float(s)), {"step": s})
    ckpts.wait()


def _kernel(state) -> float:
    return float(np.asarray(state.params["dense"]["kernel"])[0, 0])


def test_steps_without_manifests_are_verified_by_reading_and_get_one_not_deleted(tmp_path):
    # A workdir copied without the JSON files, or written by an earlier jaxvision: on main
    # every step was deleted ("Removing unverified checkpoint step") and training restarted.
    directory = tmp_path / "checkpoints"
    ckpts = _writer(directory)
    _save(ckpts, 10, 20)
    ckpts.close()
    for s in (10, 20):
        os.remove(directory / str(s) / checkpoint.MANIFEST)
    before = _hashes(directory / "20")
    ckpts = _writer(directory)
    state, _, step = ckpts.restore_latest(_state(0.0))
    assert step == 20 and _kernel(state) == 20.0
    assert ckpts.all_steps() == [20]  # 10 is adopted only if it is ever the one to read
    assert checkpoint.read_manifest(ckpts.step_dir(20))["origin"] == "saved"  # its meta says so
    after = _hashes(directory / "20")
    assert {k: after[k] for k in before} == before and set(after) - set(before) == {
        checkpoint.MANIFEST
    }
    assert os.path.isdir(directory / "10")
    ckpts.close()


def test_another_tools_checkpoint_is_adopted_and_never_garbage_collected(tmp_path):
    directory = tmp_path / "checkpoints"
    other = ocp.CheckpointManager(str(directory), item_names=("state", "meta"))
    other.save(
        5,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(_state(5.0)), meta=ocp.args.JsonSave({"tool": "x"})
        ),
    )
    other.close()
    theirs = _hashes(directory / "5")
    ckpts = _writer(directory, keep=1)
    state, _, step = ckpts.restore_latest(_state(0.0))
    assert step == 5 and _kernel(state) == 5.0
    assert checkpoint.read_manifest(ckpts.step_dir(5))["origin"] == "adopted"
    _save(ckpts, 10, 20, 30)
    assert ckpts.all_steps() == [5, 30]  # keep=1 applies to this workdir's own steps only
    after = _hashes(directory / "5")
    assert {k: after[k] for k in theirs} == theirs
    ckpts.close()


def test_stray_files_in_the_newest_step_are_reported_and_kept_not_damage(tmp_path, caplog):
    # On main a NOTES.txt made step 20 "damaged": the run went back to 10 and deleted 20.
    directory = tmp_path / "checkpoints"
    ckpts = _writer(directory, keep=1)
    ckpts.keep = 5
    _save(ckpts, 10, 20)
    ckpts.close()
    for name in ("NOTES.txt", ".DS_Store", ".nfs000123"):
        (directory / "20" / name).write_text("mine")
    assert checkpoint.verify(str(directory / "20")) == []
    assert checkpoint.extra_files(str(directory / "20")) == [".DS_Store", ".nfs000123", "NOTES.txt"]
    ckpts = _writer(directory, keep=1)
    with caplog.at_level(logging.INFO, logger="jaxvision"):
        _, _, step = ckpts.restore_latest(_state(0.0))
        _save(ckpts, 30, 40)
    assert step == 20
    assert "NOTES.txt" in caplog.text
    # keep=1: 10 and 30 are gone, 20 stays because it holds the user's files.
    assert ckpts.all_steps() == [20, 40]
    assert (directory / "20" / "NOTES.txt").read_text() == "mine"
    ckpts.close()


def test_a_symlinked_step_and_the_files_it_points_to_are_never_deleted(tmp_path):
    archive = tmp_path / "archive"
    _writer(archive).close()
    shared = _writer(archive)
    _save(shared, 5)
    shared.close()
    outside = _hashes(archive)
    directory = tmp_path / "run" / "checkpoints"
    directory.mkdir(parents=True)
    os.symlink(archive / "5", directory / "5")
    ckpts = _writer(directory, keep=1)
    state, _, step = ckpts.restore_latest(_state(0.0))
    assert step == 5 and _kernel(state) == 5.0
    _save(ckpts, 10, 20, 30)
    assert os.path.islink(directory / "5") and ckpts.all_steps() == [5, 30]
    ckpts.close()
    assert _hashes(archive) == outside


def test_a_damaged_step_is_moved_aside_not_deleted_and_its_step_is_redone(tmp_path):
    directory = tmp_path / "checkpoints"
    ckpts = _writer(directory)
    _save(ckpts, 10, 20)
    ckpts.close()
    (directory / "20" / "meta" / "metadata").write_text('{"step": 99}')
    damaged = _hashes(directory / "20")
    ckpts = _writer(directory)
    _, _, step = ckpts.restore_latest(_state(0.0))
    assert step == 10
    aside = directory / (checkpoint.UNVERIFIED_PREFIX + "20")
    assert _hashes(aside) == damaged
    _save(ckpts, 20)  # the redo is not blocked by the damaged copy
    assert ckpts.all_steps() == [10, 20]
    ckpts.close()


def test_an_unreadable_step_without_manifest_stops_the_run_and_stays(tmp_path):
    directory = tmp_path / "checkpoints"
    ckpts = _writer(directory)
    _save(ckpts, 10)
    ckpts.close()
    os.remove(directory / "10" / checkpoint.MANIFEST)
    before = _hashes(directory)
    ckpts = _writer(directory)
    wider = _state(0.0).replace(params={"dense": {"kernel": jnp.zeros((5, 3))}})
    with pytest.raises(checkpoint.CheckpointError, match="left untouched"):
        ckpts.restore_latest(wider)
    ckpts.close()
    assert {k: v for k, v in _hashes(directory).items() if k in before} == before


def test_a_reader_never_touches_a_live_save_which_then_completes(tmp_path, monkeypatch):
    # On main, evaluate/predict/export opened the manager with cleanup_tmp_directories and
    # removed the training run's in-flight save.
    from orbax.checkpoint._src.path import atomicity

    directory = tmp_path / "checkpoints"
    ckpts = _writer(directory)
    _save(ckpts, 10)
    reached, release = threading.Event(), threading.Event()
    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def held(self, *args, **kwargs):
        reached.set()
        release.wait(60)
        return await finalize(self, *args, **kwargs)

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", held)
    ckpts.save(20, _state(20.0), {"step": 20})
    assert reached.wait(60)
    in_flight = [d for d in os.listdir(directory) if d.startswith("20.")]
    assert in_flight
    reader = checkpoint.open_read_only(str(directory))
    assert reader.all_steps() == [10]
    state, _ = reader.restore(10, _state(0.0))
    assert _kernel(state) == 10.0
    reader.close()
    assert [d for d in os.listdir(directory) if d.startswith("20.")] == in_flight
    release.set()
    ckpts.wait()
    assert ckpts.all_steps() == [10, 20] and checkpoint.verify(ckpts.step_dir(20)) == []
    with pytest.raises(RunFailure, match="read-only"):
        checkpoint.open_read_only(str(directory)).save(30, _state(30.0), {})
    ckpts.close()


def _tree(root) -> tuple[dict[str, str], set[str]]:
    """File hashes and directory names under `root`: what a reader must leave as it was."""
    dirs = {os.path.relpath(d, root) for d, _, _ in os.walk(root)}
    return _hashes(root), dirs


def test_evaluate_during_a_live_save_changes_nothing_in_checkpoints_and_the_save_completes(
    tmp_path, monkeypatch
):
    from orbax.checkpoint._src.path import atomicity

    from jaxvision import evaluate
    from tests.trained_runs import cnn_workdir

    workdir = str(tmp_path / "run")
    shutil.copytree(cnn_workdir(), workdir, symlinks=True)
    directory = os.path.join(workdir, "checkpoints")
    reached, release = threading.Event(), threading.Event()
    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def held(self, *args, **kwargs):
        if self.get_final().name == "400":  # the step itself, once its items are written
            reached.set()
            release.wait(120)
        return await finalize(self, *args, **kwargs)

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", held)
    trainer = _writer(directory, keep=10)
    trainer.save(400, _state(400.0), {"step": 400})
    assert reached.wait(60)
    before = _tree(directory)
    assert any(d.startswith("400.") for d in before[1])  # the live save, not yet finalised
    try:
        report = evaluate.evaluate_workdir(workdir)
        assert report["step"] == 300  # the newest finalised step, not the one in flight
        assert _tree(directory) == before  # nothing created, deleted or changed
    finally:
        release.set()
    trainer.wait()
    assert checkpoint.verify(trainer.step_dir(400)) == []
    trainer.close()


def test_a_second_trainer_fails_at_once_naming_the_holder(smoke_config, tmp_path):
    workdir = str(tmp_path / "run")
    busy = pytest.raises(workdir_lock.WorkdirBusy, match=rf"pid {os.getpid()}, started ")
    with workdir_lock.WorkdirLock(workdir), busy:
        train.run(smoke_config, workdir)
    assert not os.path.exists(os.path.join(workdir, "config.json"))


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_manifest_that_cannot_be_written_stops_and_keep_last_n_spares_the_last_good(
    tmp_path, monkeypatch
):
    # On main a failed manifest was a warning, and keep-last-N then counted steps without
    # one: with keep=1 every verified step could go.
    directory = tmp_path / "checkpoints"
    ckpts = _writer(directory, keep=1)
    _save(ckpts, 10)
    good = _hashes(directory / "10")
    monkeypatch.setattr(checkpoint, "write_manifest", _disk_full)
    ckpts.save(20, _state(20.0), {"step": 20})
    with pytest.raises(
        RunFailure, match=r"step 20 .*No space left.*last good checkpoint is step 10"
    ):
        ckpts.save(30, _state(30.0), {"step": 30})
    ckpts.close()  # the failure stopped the run before step 30 was started
    assert ckpts.all_steps() == [10] and _hashes(directory / "10") == good


def test_a_checkpoint_that_cannot_be_written_stops_the_run(tmp_path, monkeypatch):
    directory = tmp_path / "checkpoints"
    ckpts = _writer(directory)
    _save(ckpts, 10)
    monkeypatch.setattr(ckpts._manager, "save", _disk_full)
    with pytest.raises(RunFailure, match=r"Could not write checkpoint step 20.*Free disk space"):
        ckpts.save(20, _state(20.0), {"step": 20})
    ckpts.close()


def test_training_with_an_unwritable_manifest_ends_in_run_failure_keeping_step_10(
    smoke_config, tmp_path, monkeypatch
):
    write = checkpoint.write_manifest

    def fail_after_10(step_dir, **kwargs):
        if os.path.basename(step_dir) != "10":
            _disk_full()
        write(step_dir, **kwargs)

    monkeypatch.setattr(checkpoint, "write_manifest", fail_after_10)
    workdir = str(tmp_path / "run")
    with pytest.raises(RunFailure, match="step 20"):
        train.run(smoke_config, workdir)
    ckpts = checkpoint.open_read_only(os.path.join(workdir, "checkpoints"))
    assert ckpts.all_steps() == [10] and checkpoint.verify(ckpts.step_dir(10)) == []
    ckpts.close()


def test_weights_are_checked_for_nan_before_every_save():
    assert checkpoint.all_finite(_state(1.0).params)
    bad = _state(1.0).params
    bad["dense"]["bias"] = jnp.array([0.0, jnp.inf, 0.0])
    assert not checkpoint.all_finite(bad)
    # A weight update that overflows is caught at its own step, whatever on_nonfinite says.
    record = [(12, {"loss": 1.0, "grad_norm": 2.0, "param_norm": np.inf, "nonfinite": 0.0})]
    for mode in ("stop", "skip"):
        with pytest.raises(train.DivergedError, match="at step 12: train/param_norm = inf"):
            train.check_finite(record, mode)


def test_skip_mode_fails_once_more_than_max_skipped_share_of_steps_were_skipped():
    config = types.SimpleNamespace(batch_size=8, max_skipped_share=0.1)
    loop = train._Loop(types.SimpleNamespace(total_steps=200, config=config), None, None, 100)
    loop.skipped = 10
    loop.check_skipped(200)  # 10 of 100 steps: at the limit
    loop.skipped = 11
    with pytest.raises(train.DivergedError, match=r"11 of the 100 steps .* max_skipped_share=0.1"):
        loop.check_skipped(200)


def _run_pair(args: list[str]) -> list[str]:
    """Runs `python -m jaxvision.main ARGS` as processes 0 and 1 of one run; their stderr."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pair = [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "jaxvision.main", *args, *pair, f"--process_id={i}"],
            cwd=REPO,
            env={**os.environ, "XLA_FLAGS": ""},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    errs = [p.communicate(timeout=900)[1] for p in procs]
    for p, err in zip(procs, errs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return errs


@pytest.mark.slow  # ~4 min: two runs of two processes
def test_two_processes_resume_past_a_damaged_step_and_adopt_one_without_manifest(tmp_path):
    workdir = str(tmp_path / "run")
    args = [
        "--config=configs/quickstart.py:smoke",
        "--config.dataset.name=digits",
        f"--workdir={workdir}",
        "--config.checkpoint_every_steps=10",
        "--config.keep_checkpoints=10",
    ]
    _run_pair([*args, "--config.num_train_steps=30"])
    directory = os.path.join(workdir, "checkpoints")
    os.remove(os.path.join(directory, "20", checkpoint.MANIFEST))
    with open(os.path.join(directory, "30", "meta", "metadata"), "w") as f:
        f.write('{"step": 99}')
    # Process 0 alone moves 30 aside and gives 20 its manifest; process 1 waits for it.
    errs = _run_pair([*args, "--config.num_train_steps=40"])
    assert "Resumed from" in errs[0] and "at step 20." in errs[0], errs[0][-3000:]
    assert "Checkpoint step 30 is damaged" in errs[1], errs[1][-3000:]
    assert os.path.isdir(os.path.join(directory, checkpoint.UNVERIFIED_PREFIX + "30"))
    assert checkpoint.read_manifest(os.path.join(directory, "20"))["origin"] == "saved"
    reader = checkpoint.open_read_only(directory)
    assert reader.all_steps() == [10, 20, 30, 40]
    assert all(checkpoint.verify(reader.step_dir(s)) == [] for s in (10, 20, 30, 40))
    reader.close()
