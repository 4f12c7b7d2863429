"""A folder trains at a size and channel count that fit its images unless the config says."""

import json
import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from PIL import Image

from jaxvision import config as config_lib
from jaxvision import data, train
from jaxvision.data import folder
from tests.trained_runs import REPO


@pytest.fixture
def gray_crops(tmp_path):
    """train/ and test/ of two classes of 25x25 grayscale PNG crops (dark and light)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "crops"
    for split, n in (("train", 24), ("test", 8)):
        for label, level in (("dark", 60), ("light", 190)):
            os.makedirs(root / split / label)
            for i in range(n):
                pixels = np.clip(level + rng.integers(-30, 30, (25, 25)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8), "L").save(
                    root / split / label / f"{i}.png"
                )
    return root


def _quickstart_on(root, tmp_path):
    config = config_lib.load(os.path.join(REPO, "configs", "quickstart.py"))
    config.dataset.name = f"folder:{root}"
    config.dataset.data_dir = str(tmp_path / "cache")
    return config


def test_a_folder_of_25px_grayscale_crops_trains_at_32px_with_one_channel(
    gray_crops, tmp_path, caplog
):
    config = _quickstart_on(gray_crops, tmp_path)
    with caplog.at_level(logging.INFO, logger="jaxvision"):
        info = data.prepare(config)
    assert 25 <= config.dataset.image_size <= 32
    assert info.image_shape == (config.dataset.image_size,) * 2 + (1,)
    assert config.dataset.channels == 1
    assert (
        f"training at {config.dataset.image_size} px because the median shorter side of its "
        "64 images is 25 px, rounded up to a multiple of 8 "
        "(set --config.dataset.image_size to override)"
    ) in caplog.text
    assert "1 channel because all 64 images are grayscale" in caplog.text
    assert "--config.dataset.channels" in caplog.text


def test_a_folder_run_records_the_chosen_size_in_config_json(gray_crops, tmp_path):
    config = _quickstart_on(gray_crops, tmp_path)
    config.num_train_steps = 2
    config.eval_every_steps = 0
    config.schedule.warmup_steps = 0
    config.batch_size = 16
    workdir = tmp_path / "run"
    train.run(config, str(workdir))
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["dataset"]["image_size"] == 32
    assert saved["dataset"]["channels"] == 1


def test_explicit_size_and_channels_win_over_the_images(gray_crops, tmp_path, caplog):
    config = _quickstart_on(gray_crops, tmp_path)
    config.dataset.image_size = 28
    config.dataset.channels = 3
    with caplog.at_level(logging.INFO, logger="jaxvision"):
        info = data.prepare(config)
    assert info.image_shape == (28, 28, 3)
    assert "training at" not in caplog.text and "because all" not in caplog.text


def test_large_images_are_capped_at_the_natural_size_and_pretrained_rounds_to_patches():
    photos = np.array([[480, 640, 3], [500, 375, 3], [600, 600, 1]])
    assert folder.choose_image_size(photos, cap=224, multiple=8)[0] == 224
    assert "capped at 224 px" in folder.choose_image_size(photos, cap=224, multiple=8)[1]
    thumbs = np.array([[100, 120, 3], [90, 100, 3], [110, 100, 3]])
    assert folder.choose_image_size(thumbs, cap=224, multiple=16) == (
        112,
        "the median shorter side of its 3 images is 100 px, rounded up to a multiple of 16",
    )
    assert folder.choose_channels(photos) == (3, "2 of 3 images are in colour")


def test_channels_must_be_0_1_or_3_and_only_for_folders(gray_crops, tmp_path):
    config = _quickstart_on(gray_crops, tmp_path)
    config.dataset.channels = 2
    with pytest.raises(ValueError, match=r"dataset\.channels must be 0, 1 or 3"):
        data.catalog.validate_config(config.dataset)
    config = config_lib.load(os.path.join(REPO, "configs", "quickstart.py"))
    config.dataset.channels = 1
    with pytest.raises(ValueError, match=r"dataset\.channels applies to folder"):
        data.catalog.validate_config(config.dataset)


def test_a_model_built_for_one_size_gets_that_size(gray_crops, tmp_path, caplog):
    config = _quickstart_on(gray_crops, tmp_path)
    config.model = config_lib.model("vit_ti4", image_size=16, depth=1)
    with caplog.at_level(logging.INFO, logger="jaxvision"):
        info = data.prepare(config)
    assert info.image_shape == (16, 16, 1)
    assert "training at 16 px because model.image_size is 16" in caplog.text
