"""Shared test setup: quiet TensorFlow, a session compilation cache, and the fixtures.

Helpers that tests import (REPO, run_cli, trained runs) live in tests/trained_runs.py and
are imported as `from tests.trained_runs import ...`, never from this file.
"""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Commands the tests start keep compiled programs in a cache of this session, never the
# user's ~/.cache, so reruns and resumes load their steps from it as users' do. This process
# caches nothing: its tests compile programs of their own that no later run would load.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jaxvision-xla-"))

import jax
import pytest

jax.config.update("jax_enable_compilation_cache", False)


@pytest.fixture
def smoke_config():
    """The quickstart config shrunk for tests, unlocked for per-test overrides."""
    from configs import quickstart

    config = quickstart.get_config("smoke")
    config.unlock()
    return config
