"""Remote workdirs: every workdir file goes through `workdir_files`, tested on TensorFlow's
in-memory `ram://` file system, the offline stand-in for gs://.

etils.epath reaches gs:// through tf.io.gfile when TensorFlow is installed; the fixture
registers `ram://` with that same backend. Orbax cannot save arrays to ram:// (TensorStore,
which writes them, is given a local path or gs:// only), so the end-to-end test keeps the
checkpoints in a local directory and everything else in ram://.
"""

import io
import json
import logging
import os
import uuid

import numpy as np
import pytest
from etils.epath import backend, gpath, register

from jaxvision import evaluate, train, workdir_files, workdir_lock


@pytest.fixture(autouse=True)
def _jaxvision_log_reaches_caplog(monkeypatch):
    # console.setup() (run in-process by other CLIs' tests) stops propagation to the root.
    monkeypatch.setattr(logging.getLogger("jaxvision"), "propagate", True)


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


def _local_checkpoints(monkeypatch, tmp_path) -> None:
    """Keeps checkpoints/ of ram:// workdirs on local disk (Orbax cannot write ram://)."""
    original = workdir_files.checkpoints_dir

    def local(workdir: str) -> str:
        if workdir.startswith("ram://"):
            return str(tmp_path / "checkpoints" / workdir.removeprefix("ram://"))
        return original(workdir)

    monkeypatch.setattr(workdir_files, "checkpoints_dir", local)


def _metrics_steps(workdir: str) -> list[int]:
    text = workdir_files.read_text(workdir_files.join(workdir, "metrics.jsonl"))
    return [json.loads(line)["step"] for line in text.splitlines()]


def test_train_resume_and_evaluate_a_ram_workdir_write_nothing_local(
    smoke_config, ram_root, monkeypatch, tmp_path
):
    _local_checkpoints(monkeypatch, tmp_path)
    workdir = workdir_files.join(ram_root, "run")
    smoke_config.dataset.name = "digits"
    smoke_config.num_train_steps = 4
    smoke_config.schedule.warmup_steps = 1
    smoke_config.log_every_steps = 2
    smoke_config.eval_every_steps = 0  # the final eval only
    smoke_config.checkpoint_every_steps = 2
    train.run(smoke_config, workdir)
    assert _metrics_steps(workdir) == [2, 4, 4]  # train, train, eval
    smoke_config.num_train_steps = 6
    train.run(smoke_config, workdir)  # resumes from step 4: the log is appended to
    assert _metrics_steps(workdir) == [2, 4, 4, 6, 6]
    saved = json.loads(workdir_files.read_text(workdir_files.join(workdir, "config.json")))
    assert saved["num_train_steps"] == 6
    assert any(
        n.startswith("events.out.tfevents") for n in workdir_files.names(workdir + "/tensorboard")
    )
    assert workdir_files.is_file(workdir_files.join(workdir, "training_curves.png"))

    report = evaluate.evaluate_workdir(workdir)
    assert report["step"] == 6 and report["workdir"] == workdir
    out = evaluate.output_dir(workdir, report["split"])
    written = json.loads(workdir_files.read_text(workdir_files.join(out, "report.json")))
    assert written["accuracy"] == report["accuracy"] and report["num_examples"] > 0
    predictions = io.BytesIO(workdir_files.read_bytes(workdir_files.join(out, "predictions.npz")))
    with np.load(predictions, allow_pickle=False) as npz:
        assert npz["logits"].shape == (report["num_examples"], report["num_classes"])
    png = workdir_files.read_bytes(workdir_files.join(out, "confusion_matrix.png"))
    assert png.startswith(b"\x89PNG")
    assert sorted(os.listdir(tmp_path)) == ["checkpoints", "locks"]  # no local "ram:" tree
    assert os.listdir(tmp_path / "checkpoints" / ram_root.removeprefix("ram://") / "run")


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
