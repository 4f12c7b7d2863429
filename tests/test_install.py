"""The dependencies resolve on every platform and Python claimed (tools/check_install.py)."""

import os
import subprocess
import sys

import pytest

from tests.trained_runs import REPO

SCRIPT = os.path.join(REPO, "tools", "check_install.py")


def _check(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=1200
    )
    if done.returncode == 75:
        pytest.skip(f"uv or the package registry is not reachable: {done.stdout.strip()}")
    return done


def test_the_project_claims_python_3_11_to_3_13_and_requires_no_more():
    sys.path.insert(0, os.path.dirname(SCRIPT))
    try:
        import check_install
    finally:
        sys.path.pop(0)
    assert check_install.claimed_pythons(os.path.join(REPO, "pyproject.toml")) == [
        "3.11",
        "3.12",
        "3.13",
    ]


@pytest.mark.slow  # ~12 s of resolving against the registry
def test_dependencies_resolve_for_macos_arm64():
    done = _check("--platforms=aarch64-apple-darwin", "--pythons=3.12")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "aarch64-apple-darwin" in done.stdout and "tensorflow==" in done.stdout


@pytest.mark.slow
def test_dependencies_resolve_on_every_claimed_platform_and_python():
    done = _check()
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(" ok ") == 9, done.stdout
