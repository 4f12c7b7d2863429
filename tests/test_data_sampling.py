"""Class imbalance: balanced sampling, class weights in the batch, and resumable balanced epochs."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from jaxvision import config as config_lib
from jaxvision import data, parallel
from jaxvision.data import sampling

MAJOR, MINOR = 200, 20  # 10:1


@pytest.fixture(scope="module")
def imbalanced_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("imbalanced")
    rng = np.random.default_rng(0)
    for name, n in (("common", MAJOR), ("rare", MINOR)):
        os.makedirs(root / "train" / name)
        for i in range(n):
            pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "train" / name / f"{i:04d}.png")
    return root


def _config(root, tmp_path, **dataset):
    c = config_lib.base()
    c.dataset.name = f"folder:{root}"
    c.dataset.data_dir = str(tmp_path)
    c.dataset.image_size = 8
    c.dataset.validation_fraction = 0.0
    c.dataset.eval_split = "train"
    c.dataset.train_pp = "decode|resize(8)|flip_lr|value_range(0,1)"
    c.dataset.eval_pp = "decode|resize(8)|value_range(0,1)"
    c.batch_size = 32
    for k, v in dataset.items():
        c.dataset[k] = v
    config_lib.validate(c, num_devices=1, num_processes=1)
    return c


def _labels(config, steps: int, start_step: int = 0) -> np.ndarray:
    info = data.prepare(config)
    it = data.train_batches(config, info, parallel.make_mesh(), start_step)
    return np.stack([np.asarray(next(it)["label"]) for _ in range(steps)])


def test_class_balanced_sampling_gives_near_uniform_labels(imbalanced_root, tmp_path):
    plain = _labels(_config(imbalanced_root, tmp_path), 28)
    assert abs(plain.mean() - MINOR / (MAJOR + MINOR)) < 0.04  # the imbalance is real
    balanced = _labels(_config(imbalanced_root, tmp_path, class_balanced_sampling=True), 28)
    assert abs(balanced.mean() - 0.5) < 0.05  # 896 draws over ~4 balanced epochs
    per_batch = balanced.mean(axis=1)
    assert per_batch.min() > 0.2 and per_batch.max() < 0.8  # mixed within batches too


def test_balanced_stream_resumes_exactly(imbalanced_root, tmp_path):
    config = _config(imbalanced_root, tmp_path, class_balanced_sampling=True, shuffle_buffer=50)
    info = data.prepare(config)
    mesh = parallel.make_mesh()
    it = data.train_batches(config, info, mesh)
    full = [np.asarray(next(it)["image"]) for _ in range(16)]  # crosses epochs of 220
    resumed = data.train_batches(config, info, mesh, start_step=13)
    for step in range(13, 16):
        np.testing.assert_array_equal(np.asarray(next(resumed)["image"]), full[step])


def test_balanced_epochs_have_fixed_length_and_rotate_the_subsample():
    labels = np.array([0] * 7 + [1] * 2 + [2] * 3)
    plan = sampling.BalancedEpochs(labels, num_classes=4)
    assert plan.per_class == 4 and plan.epoch_length == 12
    seen = np.zeros(len(labels), np.int64)
    for epoch in range(7):
        reps = plan.repeats(tf.range(len(labels), dtype=tf.int64), tf.constant(epoch, tf.int64))
        reps = reps.numpy()
        assert [reps[labels == c].sum() for c in range(3)] == [4, 4, 4]
        seen += reps
    assert seen[labels == 0].min() >= 3  # every common example is used, in turn
    ds = tf.data.Dataset.from_tensor_slices(labels)
    epoch = list(plan.epoch(ds, tf.constant(2, tf.int64)).as_numpy_iterator())
    assert len(epoch) == 12 and np.bincount(epoch).tolist() == [4, 4, 4]


def test_class_weights_give_every_class_equal_total_weight():
    counts = np.array([200, 20, 0])
    w = sampling.class_weights(counts, "inverse")
    np.testing.assert_allclose(w * counts, [110, 110, 0], rtol=1e-6)
    assert np.isclose((w * counts).sum() / counts.sum(), 1.0)
    s = sampling.class_weights(counts, "inverse_sqrt")
    assert s[1] / s[0] == pytest.approx(np.sqrt(10)) and s[2] == 0
    np.testing.assert_array_equal(sampling.class_weights(counts, "none"), [1, 1, 1])


def test_class_weighted_batches_carry_the_weight(imbalanced_root, tmp_path):
    config = _config(imbalanced_root, tmp_path, class_weighting="inverse")
    info = data.prepare(config)
    assert data.class_counts(info).tolist() == [MAJOR, MINOR]
    line = data.format_class_counts(info, data.class_counts(info))
    assert "common=200" in line and "rare=20" in line and "max/min 10.0" in line
    batch = next(data.train_batches(config, info, parallel.make_mesh()))
    labels, weights = np.asarray(batch["label"]), np.asarray(batch["weight"])
    expected = np.where(labels == 0, 220 / (2 * MAJOR), 220 / (2 * MINOR))
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
    plain = next(data.train_batches(_config(imbalanced_root, tmp_path), info, parallel.make_mesh()))
    assert "weight" not in plain
