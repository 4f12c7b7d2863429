"""Shared test setup: quiet TensorFlow, small helpers to build configs and run training."""

import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(args: list[str], env: dict | None = None, timeout: int = 600):
    """Runs `python -m ...` from the repo root; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def smoke_config():
    """The quickstart config shrunk for tests, unlocked for per-test overrides."""
    from configs import quickstart

    config = quickstart.get_config("smoke")
    config.unlock()
    return config
