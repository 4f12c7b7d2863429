"""Every experiment config loads, validates, and its smoke variant trains offline."""

import glob
import os

import pytest

from jaxvision import config as config_lib
from jaxvision import train
from tests.trained_runs import REPO

CONFIGS = sorted(
    os.path.relpath(p, REPO)
    for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
    if not p.endswith("__init__.py")
)
# One smoke run in the default test run (the quickstart's is in test_train.py); the rest
# are marked slow.
FAST_SMOKE = {"configs/vit_ti4_cifar10.py"}


@pytest.mark.parametrize("path", CONFIGS)
def test_config_loads_and_validates(path):
    for arg in ("", "smoke") + (("shapes",) if path.endswith("vit_ti4_cifar10.py") else ()):
        config = config_lib.load(os.path.join(REPO, f"{path}:{arg}" if arg else path))
        config_lib.validate(config, num_devices=1, num_processes=1)
        assert config.is_locked
    with open(os.path.join(REPO, path)) as f:
        doc = f.read()
    assert "Run:" in doc and "python -m jaxvision.main" in doc


@pytest.mark.parametrize(
    "path",
    [p if p in FAST_SMOKE else pytest.param(p, marks=pytest.mark.slow) for p in CONFIGS],
)
def test_smoke_variant_trains_offline(path, tmp_path):
    config = config_lib.load(os.path.join(REPO, f"{path}:smoke"))
    result = train.run(config, str(tmp_path / "run"))
    assert result["eval/num_examples"] > 0
    assert 0.0 <= result["eval/accuracy"] <= 1.0


@pytest.mark.slow  # 800 steps at batch 128: ~50 s on 2 idle cores, ~2 min on busy ones
def test_vit_ti4_shapes_arg_trains_a_vit_well_above_chance(tmp_path):
    config = config_lib.load(os.path.join(REPO, "configs/vit_ti4_cifar10.py:shapes"))
    result = train.run(config, str(tmp_path / "run"))
    # Measured 96.5% (6 classes: chance 17%).
    assert result["eval/accuracy"] > 0.9, result
