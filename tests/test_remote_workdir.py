"""Remote workdirs: a run in `gs://` trains, is preempted, resumes and is evaluated, with
its checkpoints in the bucket; every byte goes to an offline Cloud Storage (`fake_gcs`).

Both clients the real thing uses are pointed at the fake: TensorStore (Orbax's arrays) and
TensorFlow's GCS file system (Orbax's metadata, etils.epath, TensorBoard). Nothing in
jaxvision is patched. TensorFlow's in-memory `ram://` file system stands in for the
schemes Orbax cannot checkpoint to and for the lock's unit test.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils.epath import backend, gpath, register
from PIL import Image

from jaxvision import (
    checkpoint,
    evaluate,
    exit_status,
    export,
    predict,
    train,
    workdir_files,
    workdir_lock,
)
from jaxvision import workdir as workdir_lib
from tests import fake_gcs
from tests.trained_runs import REPO

_SERVER: fake_gcs.FakeGcs | None = None


@pytest.fixture(autouse=True)
def _jaxvision_log_reaches_caplog(monkeypatch):
    # console.setup() (run in-process by other CLIs' tests) stops propagation to the root.
    monkeypatch.setattr(logging.getLogger("jaxvision"), "propagate", True)


@pytest.fixture(scope="module")
def gcs():
    """The fake Cloud Storage, with this process's GCS clients pointed at it."""
    global _SERVER
    # One server per process: TensorStore and TensorFlow keep their endpoint and
    # credentials once a first gs:// request has been made.
    _SERVER = _SERVER or fake_gcs.FakeGcs()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in _SERVER.env().items():
            mp.setenv(key, value)
        yield _SERVER
    assert not _SERVER.unhandled, _SERVER.unhandled


@pytest.fixture
def away_from_cwd(monkeypatch, tmp_path) -> str:
    """An empty current directory (a stray local `gs:` tree would appear here) and a
    local lock directory; returns the current directory."""
    monkeypatch.setenv("JAXVISION_LOCK_DIR", str(tmp_path / "locks"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return str(cwd)


@pytest.fixture
def ram_root(monkeypatch, tmp_path) -> str:
    """A fresh ram:// directory that epath reaches through tf.io.gfile, as it reaches gs://."""
    monkeypatch.setattr(gpath, "_URI_PREFIXES", (*gpath._URI_PREFIXES, "ram://"))
    monkeypatch.setattr(gpath, "_URI_SCHEMES", gpath._URI_SCHEMES | {"ram"})
    monkeypatch.setitem(gpath._URI_MAP_ROOT, "ram://", "/ram/")
    monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "ram", backend.tf_backend)
    monkeypatch.setitem(register._URI_PREFIXES_TO_CLS, "ram://", gpath.PosixGPath)
    monkeypatch.setenv("JAXVISION_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.chdir(tmp_path)  # a stray local "ram:" tree would appear here
    return f"ram://jaxvision-{uuid.uuid4().hex[:8]}"


def _bucket() -> str:
    return f"jaxvision-{uuid.uuid4().hex[:8]}"


def _metrics_steps(workdir: str) -> list[int]:
    text = workdir_files.read_text(workdir_files.join(workdir, "metrics.jsonl"))
    return [json.loads(line)["step"] for line in text.splitlines()]


def _step_dirs(gcs: fake_gcs.FakeGcs, bucket: str, prefix: str) -> set[str]:
    # The directory marker object itself (name == prefix) holds no step.
    return {n[len(prefix) :].split("/")[0] for n in gcs.names(bucket, prefix)} - {""}


def test_checkpoints_in_a_bucket_save_keep_resume_and_clean_up_as_on_local_disk(
    gcs, away_from_cwd, caplog
):
    bucket = _bucket()
    directory = f"gs://{bucket}/run/checkpoints"
    prefix = "run/checkpoints/"
    state = {"w": jnp.arange(4.0), "b": jnp.ones((2, 3))}
    ckpts = checkpoint.Checkpoints(directory, keep=2)
    for step in (1, 2, 3):
        ckpts.save(step, jax.tree.map(lambda x, s=step: x * s, state), {"step": step})
    ckpts.close()
    # keep=2: step 1 was removed, its manifest and commit file first, so that a kill
    # midway leaves an uncommitted step (removed at the next start), never a half step.
    assert _step_dirs(gcs, bucket, prefix) == {"2", "3", checkpoint.WORKDIR_ID}
    deleted = [
        n
        for b, n in gcs.deleted
        if b == bucket and n.startswith(f"{prefix}1/") and not n.endswith(".tmp")
    ]
    assert deleted[:2] == [f"{prefix}1/jaxvision_manifest.json", f"{prefix}1/commit_success.txt"]
    assert len(deleted) > 2
    # TensorStore wrote the arrays into the bucket (OCDBT data files), TensorFlow the rest.
    step_3 = gcs.names(bucket, prefix + "3/")
    assert any("/state/" in n and "/d/" in n for n in step_3), step_3

    # A kill -9 during step 3's save would have left it without Orbax's commit file (written
    # last into a gs:// step, which has no temporary name) and without its manifest.
    workdir_files.remove(f"{directory}/3/jaxvision_manifest.json")
    workdir_files.remove(f"{directory}/3/commit_success.txt")
    assert checkpoint.open_read_only(directory).all_steps() == [2]  # readers skip it
    assert _step_dirs(gcs, bucket, prefix) == {"2", "3", checkpoint.WORKDIR_ID}
    with caplog.at_level("INFO", logger="jaxvision"):
        ckpts = checkpoint.Checkpoints(directory, keep=2)  # the next run, holding the lock
    assert f"Removing {directory}/3, left by an interrupted save" in caplog.text
    restored, meta, step = ckpts.restore_latest(state)
    ckpts.close()
    assert step == 2 and meta["step"] == 2
    np.testing.assert_array_equal(restored["w"], np.arange(4.0) * 2)
    assert _step_dirs(gcs, bucket, prefix) == {"2", checkpoint.WORKDIR_ID}

    # The workdir's other files go through the same bucket.
    workdir_files.write_text(f"gs://{bucket}/run/config.json", "{}\n")
    workdir_files.append_text(f"gs://{bucket}/run/metrics.jsonl", '{"step": 1}\n')
    workdir_files.append_text(f"gs://{bucket}/run/metrics.jsonl", '{"step": 2}\n')
    assert gcs.read(bucket, "run/metrics.jsonl") == b'{"step": 1}\n{"step": 2}\n'
    assert workdir_files.names(f"gs://{bucket}/run") == [
        "checkpoints",
        "config.json",
        "metrics.jsonl",
    ]
    assert workdir_files.is_dir(f"gs://{bucket}/run") and not workdir_files.exists(
        f"gs://{bucket}/nothing"
    )
    assert os.listdir(away_from_cwd) == []  # no local "gs:" tree


@pytest.mark.slow
def test_a_gs_workdir_trains_is_preempted_resumes_and_evaluates_all_in_the_bucket(
    smoke_config, gcs, away_from_cwd, monkeypatch, caplog
):
    bucket = _bucket()
    workdir = f"gs://{bucket}/run"
    smoke_config.dataset.name = "digits"
    smoke_config.num_train_steps = 6
    smoke_config.schedule.warmup_steps = 1
    smoke_config.log_every_steps = 2
    smoke_config.eval_every_steps = 0  # the final eval only
    smoke_config.checkpoint_every_steps = 2
    smoke_config.keep_checkpoints = 2

    # SIGTERM arrives while step 2 is being saved, as a scheduler's preemption would.
    save = checkpoint.Checkpoints.save

    def save_then_preempted(self, step, state, meta):
        save(self, step, state, meta)
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(checkpoint.Checkpoints, "save", save_then_preempted)
    with pytest.raises(exit_status.Preempted) as stopped:
        train.run(smoke_config, workdir)
    monkeypatch.setattr(checkpoint.Checkpoints, "save", save)
    assert stopped.value.step == 3
    ckpt_prefix = "run/checkpoints/"
    assert {"2", "3"} <= _step_dirs(gcs, bucket, ckpt_prefix)
    # TensorStore wrote the arrays into the bucket (OCDBT data files), TensorFlow the rest.
    step_3 = gcs.names(bucket, ckpt_prefix + "3/")
    assert any("/state/" in n and "/d/" in n for n in step_3), step_3
    assert ckpt_prefix + "3/commit_success.txt" in step_3
    assert ckpt_prefix + "3/jaxvision_manifest.json" in step_3

    # Had a kill -9 cut step 3's save short, it would lack Orbax's commit file (written
    # last into a gs:// step, which has no temporary name) and its manifest. Removed through
    # TensorFlow, whose stat cache would otherwise remember them for a few seconds.
    workdir_files.remove(f"{workdir}/checkpoints/3/jaxvision_manifest.json")
    workdir_files.remove(f"{workdir}/checkpoints/3/commit_success.txt")

    with caplog.at_level("INFO", logger="jaxvision"):
        train.run(smoke_config, workdir)  # the same command resumes from the bucket
    assert f"Removing {workdir}/checkpoints/3, left by an interrupted save" in caplog.text
    assert f"Resumed from {workdir}/checkpoints at step 2" in caplog.text
    assert _metrics_steps(workdir)[-1] == 6
    # keep_checkpoints=2 removed step 2 from the bucket, through the same layer.
    assert _step_dirs(gcs, bucket, ckpt_prefix) == {"4", "6", checkpoint.WORKDIR_ID}
    saved = json.loads(gcs.read(bucket, "run/config.json"))
    assert saved["num_train_steps"] == 6
    assert any(n.startswith("run/tensorboard/events.out.tfevents") for n in gcs.names(bucket))
    assert gcs.read(bucket, "run/training_curves.png").startswith(b"\x89PNG")
    assert not workdir_files.exists(f"{workdir}/checkpoints/{workdir_lock.HOLDER_NAME}")

    report = evaluate.evaluate_workdir(workdir)
    assert report["step"] == 6 and report["workdir"] == workdir and report["num_examples"] > 0
    out = evaluate.output_dir(workdir, report["split"]).removeprefix(f"gs://{bucket}/")
    written = json.loads(gcs.read(bucket, f"{out}/report.json"))
    assert written["accuracy"] == report["accuracy"]
    assert gcs.read(bucket, f"{out}/confusion_matrix.png").startswith(b"\x89PNG")
    assert gcs.names(bucket, f"{out}/predictions.npz")

    run = workdir_lib.load(workdir)
    image = np.random.default_rng(0).integers(0, 255, (8, 8, 3), np.uint8)
    Image.fromarray(image).save("digit.png")
    [result] = predict.Predictor(run).predict(["digit.png"], top_k=3)
    assert len(result["top_k"]) == 3
    paths = export.export(run, "stablehlo", f"gs://{bucket}/export")
    assert paths[0] == f"gs://{bucket}/export/model.stablehlo"
    images = np.zeros((1, *run.info.image_shape), np.float32)
    logits = export.load_stablehlo(f"gs://{bucket}/export")(images)
    assert logits.shape == (1, run.info.num_classes)

    assert sorted(os.listdir(away_from_cwd)) == ["digit.png"]  # no local "gs:" tree
    assert gcs.names(bucket) and all(n.startswith(("run/", "export/")) for n in gcs.names(bucket))


@pytest.mark.slow
def test_the_cli_on_a_gs_workdir_exits_143_on_sigterm_resumes_and_serves_evaluate_predict_export(
    gcs, tmp_path
):
    bucket = _bucket()
    workdir = f"gs://{bucket}/run"
    env = {**os.environ, "JAXVISION_LOCK_DIR": str(tmp_path / "locks")}
    train_cmd = [
        sys.executable,
        "-m",
        "jaxvision.main",
        "--config=configs/quickstart.py:smoke",
        f"--workdir={workdir}",
        "--config.dataset.name=digits",
        "--config.checkpoint_every_steps=5",
        "--config.eval_every_steps=0",
    ]
    first = subprocess.Popen(
        [*train_cmd, "--config.num_train_steps=2000"],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not any(n.endswith("/jaxvision_manifest.json") for n in gcs.names(bucket)):
        assert first.poll() is None and time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)  # what SLURM and Kubernetes send before the kill
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == exit_status.PREEMPTED, stderr
    stopped = int(stderr.split("saved a checkpoint at step ")[1].split(";")[0])
    total = stopped + 10

    second = subprocess.run(
        [*train_cmd, f"--config.num_train_steps={total}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert second.returncode == 0, second.stderr
    assert f"at step {stopped}" in second.stderr

    def tool(module: str, *args: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [sys.executable, "-m", module, f"--workdir={workdir}", *args],
            cwd=str(tmp_path),
            env={**env, "PYTHONPATH": REPO},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr
        return done

    tool("jaxvision.evaluate")
    assert json.loads(gcs.read(bucket, "run/eval/test/report.json"))["step"] == total
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "x.png")
    predicted = tool("jaxvision.predict", str(tmp_path / "x.png"))
    assert len(json.loads(predicted.stdout.splitlines()[-1])["top_k"]) == 5
    tool("jaxvision.export", "--format=stablehlo", f"--out=gs://{bucket}/export")
    assert gcs.names(bucket, "export/model.stablehlo")
    assert sorted(os.listdir(tmp_path)) == ["locks", "x.png"]


def test_a_gs_workdir_without_google_cloud_storage_is_bad_input_before_anything_is_written(
    smoke_config, gcs, away_from_cwd, monkeypatch
):
    monkeypatch.setitem(sys.modules, "google.cloud.storage", None)  # as if not installed
    bucket = _bucket()
    with pytest.raises(ValueError, match=r"google-cloud-storage.*jaxvision\[gcs\]"):
        train.run(smoke_config, f"gs://{bucket}/run")
    assert gcs.names(bucket) == []


def test_a_url_orbax_cannot_checkpoint_to_is_bad_input_before_anything_is_written(
    smoke_config, ram_root
):
    workdir = workdir_files.join(ram_root, "run")
    with pytest.raises(ValueError, match=r"Checkpoints cannot be written to ram://.*gs://"):
        train.run(smoke_config, workdir)
    assert not workdir_files.exists(workdir)


def test_a_remote_workdir_is_locked_by_its_url_and_announces_its_holder(ram_root, caplog):
    workdir = workdir_files.join(ram_root, "run")
    record = workdir_files.join(workdir_files.checkpoints_dir(workdir), workdir_lock.HOLDER_NAME)
    with workdir_lock.WorkdirLock(workdir):
        assert json.loads(workdir_files.read_text(record))["pid"] == os.getpid()
        with pytest.raises(workdir_lock.WorkdirBusy, match=rf"pid {os.getpid()}"):
            workdir_lock.WorkdirLock(workdir).__enter__()
        with workdir_lock.WorkdirLock(workdir + "-other"):
            pass  # another URL: another lock
    assert not workdir_files.exists(record)
    # A record another machine left (its run alive, or killed) is warned about, not fatal.
    other = {"host": "elsewhere", "pid": 1, "started": "then"}
    workdir_files.write_text(record, json.dumps(other))
    with caplog.at_level("WARNING", logger="jaxvision"), workdir_lock.WorkdirLock(workdir):
        pass
    assert "host elsewhere" in caplog.text
