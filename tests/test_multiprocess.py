"""Two processes on 127.0.0.1 (gloo collectives) train the quickstart together: the same
step losses as one process on the same batches, each reading half of the data, the
accuracy of a single-process run, and the final report."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.trained_runs import REPO, run_cli

# Shortened from 20 to 8 epochs to keep the test to minutes; still past 98% accuracy.
_ARGS = ["-m", "jaxvision.main", "--config=configs/quickstart.py", "--config.num_epochs=8"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_pair(args: list[str], timeout: int = 1800) -> list[str]:
    """Runs `python args` as processes 0 and 1 of one run; returns their stderr."""
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                *args,
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=REPO,
            env={**os.environ, "XLA_FLAGS": ""},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    errs = [p.communicate(timeout=timeout)[1] for p in procs]
    for p, err in zip(procs, errs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return errs


# The shipped quickstart's step (dropout, batch 128; one process: two branches) on 20
# fixed batches, which every process builds alike and feeds its half of. The data
# pipeline's part (each process reads its rows of the same global batches) is
# tests/test_data_order.py; both together: the slow whole-run test below.
_STEP_LOSSES = """
import json, sys
import numpy as np
from configs import quickstart
from jaxvision import parallel, step_factory
port, count, index = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if count > 1:
    parallel.initialize_distributed(f"127.0.0.1:{port}", count, index)
import jax
c = quickstart.get_config(); c.unlock()
c.num_train_steps = 20; c.schedule.warmup_steps = 5
built = step_factory.build(c, num_classes=10, image_shape=(28, 28, 1), total_steps=20)
state, losses, local = built.init_fn(), [], c.batch_size // count
for step in range(20):
    rng = np.random.default_rng(step % 4)  # four batches in turn: the loss falls
    labels = rng.integers(0, 10, c.batch_size).astype(np.int32)
    images = rng.normal(size=(c.batch_size, 28, 28, 1)).astype(np.float32)
    images[:, :10, :10] += labels[:, None, None, None] / 5.0  # something to learn
    rows = slice(index * local, (index + 1) * local)
    batch = parallel.global_batch({"image": images[rows], "label": labels[rows]}, built.mesh)
    state, metrics = built.train_fn(state, batch)
    losses.append(float(metrics["loss"]))
print(json.dumps({"devices": jax.device_count(), "branches": built.train_branches,
                  "losses": losses}))
"""


def test_two_processes_give_the_single_process_step_losses():  # ~20 s on 2 CPU cores
    single = run_cli(["-c", _STEP_LOSSES, "0", "1", "0"], env={"XLA_FLAGS": ""})
    assert single.returncode == 0, single.stderr[-3000:]
    one = json.loads(single.stdout.strip().splitlines()[-1])
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _STEP_LOSSES, str(port), "2", str(i)],
            cwd=REPO,
            env={**os.environ, "XLA_FLAGS": ""},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    two = json.loads(outs[0][0].strip().splitlines()[-1])
    assert (one["devices"], one["branches"]) == (1, 2)
    assert (two["devices"], two["branches"]) == (2, 1)
    assert len(one["losses"]) == 20 and one["losses"][-1] < one["losses"][0]
    # Dropout masks follow the examples, so only float summation order differs.
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=0, atol=1e-4)


def _train_losses(workdir: str) -> list[float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [r["train/loss"] for r in records if "train/loss" in r]


@pytest.mark.slow  # ~1 min on 2 CPU cores
def test_two_processes_train_the_quickstart_like_one(tmp_path):
    # The shipped quickstart (its data pipeline, dropout, batch 128, 50 warmup steps),
    # stopped after 60 steps and logging every step. The first 30 are compared, as in
    # test_train's 1-vs-4-device test (there: why not later ones); here all 60 agreed
    # within 2.4e-7.
    args = [
        "-m",
        "jaxvision.main",
        "--config=configs/quickstart.py",
        "--config.num_train_steps=60",
        "--config.log_every_steps=1",
    ]
    single = str(tmp_path / "single")
    out = run_cli([*args, f"--workdir={single}"], env={"XLA_FLAGS": ""})
    assert out.returncode == 0, out.stderr[-3000:]
    pair = str(tmp_path / "pair")
    _run_pair([*args, f"--workdir={pair}"])
    one, two = _train_losses(single), _train_losses(pair)
    assert len(one) == 60 and one[29] < one[0] - 0.3
    np.testing.assert_allclose(two[:30], one[:30], rtol=0, atol=1e-4)


def _final_eval(workdir: str) -> tuple[float, int]:
    """The last eval's accuracy and how many test images it counted correct."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    last = [r for r in records if "eval/accuracy" in r][-1]
    accuracy = last["eval/accuracy"]
    return accuracy, round(accuracy * last["eval/num_examples"])


@pytest.mark.slow  # ~6 min on 2 CPU cores
def test_two_processes_reach_the_single_process_accuracy(tmp_path):
    single = str(tmp_path / "single")
    out = run_cli([*_ARGS, f"--workdir={single}"], env={"XLA_FLAGS": ""})
    assert out.returncode == 0, out.stderr[-3000:]

    pair = str(tmp_path / "pair")
    errs = _run_pair([*_ARGS, f"--workdir={pair}"])
    assert "2 devices (2 processes)" in errs[0]
    # Only process 0 reports progress; each process read half of every batch.
    assert "step 50/" in errs[0] and "step 50/" not in errs[1]

    (a, a_correct), (b, b_correct) = _final_eval(single), _final_eval(pair)
    print(f"single-process accuracy {a:.4f}, two-process accuracy {b:.4f}")
    assert a > 0.97
    # Within 5 of the 1,000 test images (0.5 pts), counted in images: as floats,
    # 0.980 - 0.975 exceeds 0.005.
    assert abs(a_correct - b_correct) <= 5, (a, b)


@pytest.mark.slow  # ~1 min on 2 CPU cores
def test_two_processes_write_the_final_eval_report(tmp_path):
    workdir = str(tmp_path / "pair")
    _run_pair(
        ["-m", "jaxvision.main", "--config=configs/quickstart.py:smoke", f"--workdir={workdir}"]
    )
    out = os.path.join(workdir, "eval", "test")
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    assert report["step"] == 20
    # Each process evaluated its half; process 0 assembled the whole split, in order.
    assert report["num_examples"] == 1000
    assert report["accuracy"] == _final_eval(workdir)[0]
    assert report["training_logged"]["eval/accuracy"] == report["accuracy"]
    labels = np.load(os.path.join(out, "predictions.npz"))["labels"]
    from jaxvision import data
    from jaxvision import workdir as workdir_lib

    info = data.prepare(workdir_lib.load_config(workdir))
    assert np.array_equal(labels, info.source.labels("test"))
    assert os.path.getsize(os.path.join(workdir, "training_curves.png")) > 1000
