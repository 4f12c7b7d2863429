"""Playing the schedulers of docs/scaling.md: SIGTERM, exit status 143, rerun, exit 0; and
kill -9 at random points of saves, always resuming to the same final weights."""

import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxvision import checkpoint, exit_status
from tests.trained_runs import REPO

_ARGS = [
    "--config=configs/quickstart.py:smoke",
    "--config.dataset.name=digits",
    "--config.num_train_steps=60",
    "--config.checkpoint_every_steps=10",
    "--config.keep_checkpoints=10",
]


def _main(workdir: str) -> list[str]:
    return [sys.executable, "-m", "jaxvision.main", f"--workdir={workdir}", *_ARGS]


def _wait_for(path: str, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and not os.path.exists(path) and proc.poll() is None:
        time.sleep(0.05)
    assert os.path.exists(path), f"{path} never appeared (exit status {proc.poll()})"


def _slurm_script() -> str:
    """The batch script of docs/scaling.md's SLURM recipe, as written there."""
    with open(os.path.join(REPO, "docs", "scaling.md")) as f:
        text = f.read()
    block = re.search(r"\n    #!/bin/bash\n((?:    .*\n|\n)+?)\n\S", text).group(1)
    return "\n".join(line[4:] for line in block.splitlines())


def test_slurm_requeue_recipe_resumes_a_job_stopped_at_its_time_limit(tmp_path):
    workdir = str(tmp_path / "run")
    requeued = tmp_path / "requeued"
    pid_file = tmp_path / "pid"
    # `srun` runs the smoke command (not the recipe's ViT-B/16) and records its pid so the
    # test can deliver the time limit's SIGTERM; `scontrol` records the requeue.
    prelude = f"""
srun() {{ {" ".join(_main(workdir))} & echo $! > {pid_file}; wait $!; }}
scontrol() {{ echo "$@" >> {requeued}; }}
export SLURM_JOB_ID=42
"""
    script = prelude + _slurm_script()
    assert "scontrol requeue" in script and "srun python -m jaxvision.main" in script
    attempts, logs = [], []
    for attempt in range(3):
        job = subprocess.Popen(
            ["bash", "-c", script], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        if attempt == 0:
            _wait_for(os.path.join(workdir, "checkpoints", "10", checkpoint.MANIFEST), job)
            os.kill(int(pid_file.read_text()), signal.SIGTERM)  # what --signal=TERM@120 sends
        _, stderr = job.communicate(timeout=600)
        attempts.append(job.returncode)
        logs.append(stderr.decode())
        if not requeued.exists() or len(requeued.read_text().splitlines()) < len(attempts):
            break
    assert attempts == [exit_status.PREEMPTED, 0], logs[-1][-3000:]
    assert requeued.read_text() == "requeue 42\n"
    line = next(x for x in logs[0].splitlines() if "SIGTERM received" in x)
    stopped = int(line.split("at step ")[1].split(";")[0])
    assert 10 <= stopped < 60 and f"at step {stopped}." in logs[1]  # resumed where it saved
    reader = checkpoint.open_read_only(os.path.join(workdir, "checkpoints"))
    assert stopped in reader.all_steps() and reader.latest_step() == 60
    reader.close()


@pytest.mark.slow  # ~1 min; the SLURM play above covers the same path by default
def test_kubernetes_restart_on_failure_runs_a_preempted_pod_to_completion(tmp_path):
    workdir = str(tmp_path / "run")
    statuses, backoff_limit = [], 20
    while len(statuses) <= backoff_limit:  # restartPolicy: OnFailure
        pod = subprocess.Popen(
            _main(workdir), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        if not statuses:
            _wait_for(os.path.join(workdir, "checkpoints", "10", checkpoint.MANIFEST), pod)
            pod.send_signal(signal.SIGTERM)  # node drain: terminationGracePeriodSeconds
        _, stderr = pod.communicate(timeout=600)
        statuses.append(pod.returncode)
        if pod.returncode == 0:
            break
        if len(statuses) == 1:
            line = next(x for x in stderr.splitlines() if "SIGTERM received" in x)
            stopped = int(line.split("at step ")[1].split(";")[0])
    assert statuses == [exit_status.PREEMPTED, 0], stderr[-3000:]
    assert f"at step {stopped}" in stderr  # resumed where the SIGTERM saved
    reader = checkpoint.open_read_only(os.path.join(workdir, "checkpoints"))
    assert stopped in reader.all_steps() and reader.latest_step() == 60
    reader.close()


# Trains a small deterministic "model" in numpy with Checkpoints, saving every step, the
# way train.run resumes: restore_latest, then the remaining steps. Cheap to start, so a
# kill -9 can land at many points of a save.
_TOY_RUN = """
import sys
import jax, jax.numpy as jnp, numpy as np
from jaxvision import checkpoint, steps, workdir_lock

workdir, total = sys.argv[1], int(sys.argv[2])

def state_at(step, params):
    return steps.TrainState(step=jnp.asarray(step, jnp.int32), params=params, batch_stats={},
                            opt_state={}, rng=jax.random.PRNGKey(0))

def update(params, step):
    rng = np.random.default_rng(step)
    return {k: np.float32(0.9) * v + rng.standard_normal(v.shape, np.float32)
            for k, v in params.items()}

init = {f"w{i}": np.zeros((256, 256), np.float32) for i in range(8)}
with workdir_lock.WorkdirLock(workdir):
    ckpts = checkpoint.Checkpoints(workdir + "/checkpoints", keep=1000)
    restored = ckpts.restore_latest(state_at(0, init))
    step, params = 0, init
    if restored is not None:
        step, params = restored[2], jax.device_get(restored[0].params)
    while step < total:
        step += 1
        params = update(params, step)
        ckpts.save(step, state_at(step, params), {"step": step})
    ckpts.close()
"""


def _toy(workdir: str, total: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _TOY_RUN, workdir, str(total)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _verified(ckpt_dir: str) -> dict[int, dict]:
    """Steps whose files match their manifest -> their manifest's file list."""
    if not os.path.isdir(ckpt_dir):
        return {}
    out = {}
    for name in os.listdir(ckpt_dir):
        path = os.path.join(ckpt_dir, name)
        if name.isdigit() and checkpoint.verify(path) == []:
            out[int(name)] = checkpoint.read_manifest(path)["files"]
    return out


def _save_in_flight(ckpt_dir: str) -> bool:
    """Whether a killed run left a save unfinished: an Orbax temporary directory, a step
    finalised without its manifest, or an old step half deleted."""
    for name in os.listdir(ckpt_dir):
        if ".orbax-checkpoint-tmp" in name or name.startswith("_deleting_"):
            return True
        if name.isdigit() and not os.path.exists(os.path.join(ckpt_dir, name, checkpoint.MANIFEST)):
            return True
    return False


def _final_params(workdir: str, step: int) -> dict:
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints"),
        options=ocp.CheckpointManagerOptions(read_only=True),
        item_names=("state", "meta"),
    ) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return restored["state"]["params"]


@pytest.mark.slow  # ~3 min: 2 full toy runs and 24 killed ones
def test_kill_9_at_random_points_of_saves_always_resumes_to_identical_weights(tmp_path):
    total = 80  # room for 24 kills before the run is done
    reference = str(tmp_path / "reference")
    proc = _toy(reference, total)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    workdir = str(tmp_path / "killed")
    ckpt_dir = os.path.join(workdir, "checkpoints")
    rng = random.Random(0)
    kills = in_save = 0
    while kills < 24:
        before = _verified(ckpt_dir)
        if before and max(before) >= total:
            break
        proc = _toy(workdir, total)
        # Wait for the first save of this attempt, then kill somewhere in the saves after it.
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            now = _verified(ckpt_dir)
            if now and (not before or max(now) > max(before)):
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        # Then the next moment a save is under way (a random point inside it).
        deadline = time.time() + 2
        while time.time() < deadline and proc.poll() is None and not _save_in_flight(ckpt_dir):
            time.sleep(0.002)
        if proc.poll() is None:
            proc.kill()  # SIGKILL: no handler, no clean-up
            kills += 1
        proc.wait()
        if proc.returncode == -signal.SIGKILL:
            in_save += _save_in_flight(ckpt_dir)  # read before the next attempt cleans up
        after = _verified(ckpt_dir)
        for step, files in before.items():  # a verified step is never deleted or changed
            assert after.get(step) == files, f"verified step {step} was lost after a kill"
    assert kills >= 20
    # The point of the test: most kills must land inside a save, not between saves.
    print(f"{in_save} of {kills} kills landed inside a save")
    assert in_save > kills / 2, f"only {in_save} of {kills} kills landed inside a save"
    proc = _toy(workdir, total)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    a, b = _final_params(reference, total), _final_params(workdir, total)
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))
