"""Shared test setup: quiet TensorFlow, small helpers to build configs and run training."""

import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Commands the tests start keep compiled programs in a cache of this session, never the
# user's ~/.cache, so reruns and resumes load their steps from it as users' do. This process
# caches nothing: its tests compile programs of their own that no later run would load.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jaxvision-xla-"))

import jax
import pytest

jax.config.update("jax_enable_compilation_cache", False)

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
