"""Every catalog entry through the real pipeline on tfds.testing.mock_data, and config errors."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxvision import config as config_lib
from jaxvision import data, exit_status, parallel
from jaxvision.data import catalog, image_ops, preprocess

_ONLINE = [name for name in catalog.names() if not catalog.PRESETS[name].offline]


def _config(name: str, **dataset):
    c = config_lib.base()
    c.dataset.name = name
    c.batch_size = 4
    c.eval_batch_size = 4
    c.dataset.shuffle_buffer = 16
    for k, v in dataset.items():
        c.dataset[k] = v
    return c


def _bounds(pp: str) -> tuple[float, float]:
    """The value range the last op of `pp` can produce from 0..255 pixels."""
    last = preprocess.parse_specs(pp)[-1]
    if last.name == "value_range":
        return last.args
    mean, std = image_ops.NORMALIZATIONS[last.args[0]]
    return min((0 - m) / s for m, s in zip(mean, std)), max((1 - m) / s for m, s in zip(mean, std))


def test_catalog_lists_the_issue_datasets():
    expected = {
        "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn_cropped", "imagenet2012",
        "imagenette", "oxford_iiit_pet", "oxford_flowers102", "food101",
        "mnist5k", "digits", "shapes",
    }  # fmt: skip
    assert set(catalog.names()) == expected


@pytest.mark.parametrize("name", _ONLINE)
def test_preset_through_the_real_pipeline_on_mock_data(name):
    preset = catalog.PRESETS[name]
    config = _config(name, download=True)  # under mock_data, "download" is a no-op
    config_lib.validate(config, num_devices=1, num_processes=1)
    with tfds.testing.mock_data(num_examples=6):
        info = data.prepare(config)
        mesh = parallel.make_mesh()
        size = preset.image_size
        assert info.image_shape == (size, size, preset.channels)
        assert info.num_classes == preset.num_classes
        assert len(info.class_names) == preset.num_classes
        assert info.num_train == info.num_eval == 6
        low, high = _bounds(info.spec.train_pp)
        batch = next(data.train_batches(config, info, mesh))
        image, label = np.asarray(batch["image"]), np.asarray(batch["label"])
        assert image.shape == (4, size, size, preset.channels) and image.dtype == np.float32
        assert low - 1e-5 <= image.min() and image.max() <= high + 1e-5
        assert image.std() > 0  # real pixels, not padding
        assert label.dtype == np.int32 and label.min() >= 0 and label.max() < preset.num_classes
        eval_data = data.eval_batches(config, info, mesh)
        batches = list(eval_data)
        assert eval_data.num_batches == 2 and len(batches) == 2
        assert sum(float(np.asarray(b["mask"]).sum()) for b in batches) == 6
        ev = np.asarray(batches[0]["image"])
        assert ev.shape == (4, size, size, preset.channels)
        assert low - 1e-5 <= ev.min() and ev.max() <= high + 1e-5


@pytest.mark.parametrize("name", [n for n in catalog.names() if n not in _ONLINE])
def test_offline_preset_through_the_real_pipeline_on_its_real_data(name):
    preset = catalog.PRESETS[name]
    config = _config(name)
    info = data.prepare(config)
    size, channels = preset.image_size, preset.channels
    assert info.image_shape == (size, size, channels)
    assert info.num_classes == len(info.class_names) == preset.num_classes
    low, high = _bounds(info.spec.train_pp)
    mesh = parallel.make_mesh()
    batch = next(data.train_batches(config, info, mesh))
    image, label = np.asarray(batch["image"]), np.asarray(batch["label"])
    assert image.shape == (4, size, size, channels) and image.dtype == np.float32
    assert low - 1e-5 <= image.min() and image.max() <= high + 1e-5
    assert label.min() >= 0 and label.max() < preset.num_classes
    first = next(iter(data.eval_batches(config, info, mesh)))
    assert np.asarray(first["image"]).shape == (4, size, size, channels)


def test_splits_hold_out_a_validation_slice_when_there_is_none():
    cifar = catalog.PRESETS["cifar10"]
    assert (cifar.train_split, cifar.eval_split, cifar.test_split) == (
        "train[:98%]",
        "train[98%:]",
        "test",
    )
    assert catalog.PRESETS["imagenet2012"].eval_split == "validation"


def test_unprepared_dataset_says_how_to_prepare_it(tmp_path):
    config = _config("imagenet2012", data_dir=str(tmp_path))
    # Bad input (exit status 2), not a runtime failure: rerunning cannot help.
    with pytest.raises(exit_status.BadInputError) as e:
        data.prepare(config)
    message = str(e.value)
    assert "not prepared" in message and str(tmp_path) in message
    assert "ILSVRC2012_img_train.tar" in message and "downloads/manual" in message
    assert "tfds build imagenet2012" in message and "dataset.download=True" in message


def test_any_tfds_name_needs_the_missing_keys():
    config = _config("caltech101")
    with pytest.raises(ValueError, match=r"dataset\.train_split.*dataset\.eval_pp"):
        catalog.resolve(config.dataset)
    with pytest.raises(ValueError, match=r"Unknown dataset\.name 'no_such_set'"):
        catalog.resolve(_config("no_such_set").dataset)


def test_any_tfds_name_with_its_keys_runs_on_mock_data():
    config = _config(
        "beans",
        train_split="train",
        eval_split="validation",
        image_size=24,
        train_pp="decode|inception_crop({size})|flip_lr|value_range(0,1)",
        eval_pp="decode|resize_small({resize})|central_crop({size})|value_range(0,1)",
        download=True,
    )
    with tfds.testing.mock_data(num_examples=5):
        info = data.prepare(config)
        assert info.image_shape == (24, 24, 3) and info.num_classes == 3
        batch = next(data.train_batches(config, info, parallel.make_mesh()))
        assert np.asarray(batch["image"]).shape == (4, 24, 24, 3)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("train_pp", "decode|bogus_op(3)", "Unknown preprocessing op 'bogus_op'"),
        ("train_pp", "decode|random_crop(-2)", "'random_crop': size must be a positive"),
        ("eval_pp", "decode|normalize(imagenet)|randaugment(2,9)", "'randaugment': needs uint8"),
        ("train_pp", "decode|resize(28", "missing closing parenthesis"),
        ("class_weighting", "by_magic", "dataset.class_weighting"),
        ("on_bad_file", "ignore", "dataset.on_bad_file"),
        ("validation_fraction", 1.5, "dataset.validation_fraction"),
    ],
)
def test_bad_dataset_config_fails_when_the_config_is_read(key, value, message):
    config = _config("mnist5k", **{key: value})
    with pytest.raises(ValueError, match=message):
        config_lib.validate(config, num_devices=1, num_processes=1)


def test_pipelines_that_disagree_on_the_image_shape_fail_early():
    config = _config("digits", train_pp="decode(1)|resize(10)|value_range(0,1)")
    with pytest.raises(ValueError, match="train_pp gives"):
        data.prepare(config)


def test_class_counts_of_a_tfds_split_read_from_labels_only():
    config = _config("digits")
    info = data.prepare(config)
    counts = data.class_counts(info)
    assert counts.shape == (10,) and counts.sum() == info.num_train == 1497
    assert data.class_counts(info, "test").tolist() == [30] * 10


def test_non_deterministic_mode_streams_the_same_kind_of_batches():
    config = _config("digits", deterministic=False, parallel_calls=2, threads=2)
    info = data.prepare(config)
    batch = next(data.train_batches(config, info, parallel.make_mesh()))
    assert np.asarray(batch["image"]).shape == (4, 8, 8, 1)


def test_streams_run_without_the_autotuner_at_one_map_call_per_thread(monkeypatch):
    config = _config("digits")
    info = data.prepare(config)
    streams = [
        data.train_stream(config, info),
        data.eval_batches(config, info, parallel.make_mesh()).dataset,
    ]
    for ds in streams:
        assert ds.options().autotune.enabled is False
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert data.map_parallelism(config) == 3
    monkeypatch.delattr(os, "sched_getaffinity")  # macOS has no affinity call
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert data.map_parallelism(config) == 6
    config.dataset.threads = 2
    assert data.map_parallelism(config) == 2
    config.dataset.parallel_calls = 5
    assert data.map_parallelism(config) == 5


def test_shapes_are_brighter_than_their_background_and_versioned():
    from jaxvision.data.builders import shapes as shapes_builder
    from jaxvision.data.shapes_render import render_shapes_with_masks

    images, _, masks = render_shapes_with_masks(64, image_size=32, num_classes=6, seed=3)
    for image, mask in zip(images.astype(np.float32), masks):
        # Fixed polarity in every channel is what lets any model find the shape quickly.
        assert np.all(image[mask].mean(0) > image[~mask].mean(0) + 40)
    config = shapes_builder.ShapesConfig.make(image_size=32, num_classes=6)
    # The config's version names the prepared directory: it must follow the rendering's.
    assert config.version == shapes_builder.Shapes.VERSION == "2.0.0"
