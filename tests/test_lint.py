"""The code base is ruff-clean (lint and format), as configured in pyproject.toml."""

import subprocess
import sys

import pytest

from tests.trained_runs import REPO


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]])
def test_ruff(command):
    out = subprocess.run(
        [sys.executable, "-m", "ruff", *command], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
