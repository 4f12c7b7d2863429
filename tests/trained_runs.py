"""Helpers the tests share: the repo root, running a command line, killing a run, tiny runs.

Import them as `from tests.trained_runs import ...` (one module object, so each run is
trained once per session). The runs on `shapes` are shared by the tests of evaluate,
predict, explain and export; fixtures live in conftest.py.
"""

import atexit
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from jaxvision import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 6  # more than 5, so top-5 accuracy is not trivially 1
_ROOT = tempfile.mkdtemp(prefix="jaxvision_trained_runs_")
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)


def run_cli(args: list[str], env: dict | None = None, timeout: int = 600):
    """Runs `python ARGS...` from the repo root; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_training(args: list[str]) -> subprocess.Popen:
    """Starts `python -m jaxvision.main ARGS...` from the repo root, keeping its stderr."""
    return subprocess.Popen(
        [sys.executable, "-m", "jaxvision.main", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_after_checkpoint(process: subprocess.Popen, workdir: str, step: int) -> int:
    """SIGKILLs `process` once checkpoint `step` of `workdir` is final; returns its last step.

    The process is then somewhere past `step`, mid-step: the state a crash leaves.
    """
    ckpt_dir = os.path.join(workdir, "checkpoints")
    deadline = time.time() + 300
    while time.time() < deadline and not os.path.isdir(os.path.join(ckpt_dir, str(step))):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    return max(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())


def smoke_config(model: config_lib.ml_collections.ConfigDict, steps: int):
    """The quickstart smoke config on 32px `shapes` with `model`, evaluated every 100 steps."""
    from configs import quickstart

    c = quickstart.get_config("smoke")
    c.unlock()
    c.model = model
    c.dataset.name = "shapes"
    c.dataset.num_classes = NUM_CLASSES
    c.optimizer.learning_rate = 3e-3
    c.num_train_steps = steps
    c.log_every_steps = 50
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 100
    c.lock()
    return c


def _train(name: str, config) -> str:
    from jaxvision import train

    workdir = os.path.join(_ROOT, name)
    train.run(config, workdir)
    return workdir


@functools.cache
def cnn_workdir() -> str:
    """A small CNN trained for 300 steps (checkpoints and evals at 100, 200, 300)."""
    model = config_lib.model("cnn", features=[16, 32], hidden=[64])
    return _train("cnn", smoke_config(model, 300))


@functools.cache
def vit_workdir() -> str:
    """A 2-block ViT with 4x4 patches on 32px images, trained for 1000 steps (97% accuracy)."""
    model = config_lib.model(
        "vit_ti4", depth=2, hidden_size=64, num_heads=2, mlp_dim=128, image_size=32
    )
    config = smoke_config(model, 1000)
    config.unlock()
    # With the smoke recipe (batch 32, 5 warmup steps, no clipping) it ended at 21% on the
    # harder random-colour shapes of dataset version 1.
    config.batch_size = 64
    config.schedule.warmup_steps = 50
    config.optimizer.grad_clip_norm = 1.0
    config.eval_every_steps = 250
    config.lock()
    return _train("vit", config)


def scratch_dir(name: str) -> str:
    """A fresh empty directory under the session's root."""
    path = tempfile.mkdtemp(prefix=f"{name}_", dir=_ROOT)
    return path


@functools.cache
def mnist_cnn_workdir() -> str:
    """A small CNN trained on mnist5k for 200 steps: the source of the transfer tests."""
    config = smoke_config(config_lib.model("cnn", features=[16, 32], hidden=[64]), 200)
    config.unlock()
    config.dataset.name = "mnist5k"
    config.dataset.num_classes = 10
    config.lock()
    return _train("mnist_cnn", config)


def deit_config(teacher: str, steps: int):
    """A 1-block DeiT student (distillation token) on 32px `shapes`, taught by `teacher`."""
    model = config_lib.model(
        "vit_ti8", depth=1, hidden_size=32, num_heads=2, mlp_dim=64, image_size=32
    )
    config = smoke_config(model, steps)
    config.unlock()
    config.distill.loss = "deit"
    config.distill.teacher = teacher
    config.eval_every_steps = 20
    config.checkpoint_every_steps = 20
    config.lock()
    return config


@functools.cache
def deit_student_workdir() -> str:
    """A DeiT student distilled for 40 steps from `cnn_workdir()` (the shared teacher)."""
    return _train("deit_student", deit_config(cnn_workdir(), 40))
