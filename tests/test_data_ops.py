"""Each preprocessing op: output shape/dtype/range, determinism under a seed, runs in tf.data."""

import io
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from jaxvision.data import image_ops, preprocess
from jaxvision.data.randaugment import RANDAUGMENT_OPS, _apply_op

H, W = 36, 44


def _jpeg(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    # Smooth gradients plus noise: every op (crop, equalize, ...) has something to change.
    yy, xx = np.mgrid[:H, :W]
    base = np.stack([yy * 6, xx * 5, (yy + xx) * 3], -1) + rng.integers(0, 40, (H, W, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


# (pipeline, expected shape, dtype, (low, high), random?)
CASES = [
    ("decode", (H, W, 3), tf.uint8, (0, 255), False),
    ("decode(1)", (H, W, 1), tf.uint8, (0, 255), False),
    ("decode|resize(20)", (20, 20, 3), tf.uint8, (0, 255), False),
    ("decode|resize_small(24)", (24, 29, 3), tf.uint8, (0, 255), False),
    ("decode|central_crop(30)", (30, 30, 3), tf.uint8, (0, 255), False),
    ("decode|resize(32)|random_crop(32,4)", (32, 32, 3), tf.uint8, (0, 255), True),
    ("decode|inception_crop(24)", (24, 24, 3), tf.uint8, (0, 255), True),
    ("decode|resize(30)|inception_crop(16, area_min=0.3)", (16, 16, 3), tf.uint8, (0, 255), True),
    ("decode|flip_lr", (H, W, 3), tf.uint8, (0, 255), True),
    ("decode|rotate(30)", (H, W, 3), tf.uint8, (0, 255), True),
    ("decode|color_jitter(0.4,0.4,0.4,0.1)", (H, W, 3), tf.uint8, (0, 255), True),
    ("decode|randaugment(2,9)", (H, W, 3), tf.uint8, (0, 255), True),
    ("decode(1)|randaugment(1,5)", (H, W, 1), tf.uint8, (0, 255), True),
    ("decode|autoaugment", (H, W, 3), tf.uint8, (0, 255), True),
    ("decode|random_erasing(1.0)", (H, W, 3), tf.uint8, (0, 255), True),
    ("decode|value_range(-1,1)|random_erasing(1.0)", (H, W, 3), tf.float32, (-6, 6), True),
    ("decode|grayscale", (H, W, 3), tf.uint8, (0, 255), False),
    ("decode|grayscale(0.5)", (H, W, 3), tf.uint8, (0, 255), True),
    ("decode|grayscale(channels=1)", (H, W, 1), tf.uint8, (0, 255), False),
    ("decode|value_range(0,1)", (H, W, 3), tf.float32, (0, 1), False),
    ("decode|normalize(imagenet)", (H, W, 3), tf.float32, (-2.2, 2.7), False),
    ("decode(1)|normalize(mnist)", (H, W, 1), tf.float32, (-0.5, 2.9), False),
]


def _run_in_tf_data(pp: str, seeds: list[int]) -> list[np.ndarray]:
    """Runs `pp` inside a tf.data map (graph mode) for each seed."""
    ops = preprocess.parse(pp)
    data = _jpeg()
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(seeds, tf.int64))
    ds = ds.map(lambda s: preprocess.apply(ops, tf.constant(data), tf.stack([s, s + 1])))
    return list(ds.as_numpy_iterator())


@pytest.mark.parametrize(("pp", "shape", "dtype", "bounds", "random"), CASES)
def test_op_shape_dtype_range_determinism_in_tf_data(pp, shape, dtype, bounds, random):
    # Each seed twice in one tf.data graph: tracing the big ops once keeps this fast.
    outputs = _run_in_tf_data(pp, list(range(8)) * 2)
    first, again = outputs[:8], outputs[8:]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)  # same seed, same output
    out = first[0]
    assert out.shape == shape and out.dtype == dtype.as_numpy_dtype
    assert bounds[0] <= out.min() and out.max() <= bounds[1]
    distinct = {a.tobytes() for a in first}
    if random:
        assert len(distinct) > 1, f"{pp} ignores its seed"
    else:
        assert len(distinct) == 1, f"{pp} should not be random"


def test_normalize_and_value_range_values():
    data = tf.constant(_jpeg())
    pixels = preprocess.apply(preprocess.parse("decode"), data, tf.zeros([2], tf.int64)).numpy()
    x = preprocess.apply(
        preprocess.parse("decode|value_range(-1,1)"), data, tf.zeros([2], tf.int64)
    )
    np.testing.assert_allclose(x.numpy(), pixels / 127.5 - 1, atol=1e-6)
    y = preprocess.apply(
        preprocess.parse("decode|normalize(cifar10)"), data, tf.zeros([2], tf.int64)
    )
    mean, std = image_ops.NORMALIZATIONS["cifar10"]
    np.testing.assert_allclose(y.numpy(), (pixels / 255.0 - mean) / std, atol=1e-5)


def test_random_crop_with_padding_is_a_shifted_window():
    image = tf.reshape(tf.range(8 * 8 * 1, dtype=tf.int32) % 251 + 1, [8, 8, 1])
    image = tf.cast(image, tf.uint8)
    op = preprocess.parse("random_crop(8,2)")[0]
    for s in range(10):
        out = op(image, tf.constant([s, 0], tf.int64)).numpy()[..., 0]
        padded = np.pad(image.numpy()[..., 0], 2)
        hits = [
            (i, j)
            for i in range(5)
            for j in range(5)
            if np.array_equal(padded[i : i + 8, j : j + 8], out)
        ]
        assert hits, "random_crop output is not a window of the padded image"


def test_fused_decode_inception_crop_matches_the_unfused_crop_of_a_png():
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(buf, "PNG")
    png = tf.constant(buf.getvalue())
    fused = preprocess.parse("decode|inception_crop(16)")
    decoded = preprocess.apply(preprocess.parse("decode"), png, tf.zeros([2], tf.int64))
    crop = preprocess.parse("inception_crop(16)")[0]
    seed = tf.constant([3, 4], tf.int64)
    # The fused op draws its window from the seed the crop would get after decode.
    a = fused[0](png, seed)
    b = crop(decoded, seed)
    np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("name", RANDAUGMENT_OPS)
def test_each_randaugment_op_keeps_shape_and_range(name):
    x = tf.cast(
        preprocess.apply(preprocess.parse("decode"), tf.constant(_jpeg()), tf.zeros([2], tf.int64)),
        tf.float32,
    )
    out = _apply_op(name, x, 7.0, tf.constant([1, 2], tf.int64)).numpy()
    assert out.shape == (H, W, 3) and out.min() >= 0 and out.max() <= 255
    if name not in ("Equalize", "AutoContrast"):  # may be near no-ops on a full-range image
        assert np.abs(out - x.numpy()).max() > 0, f"{name} at magnitude 7 changed nothing"


@pytest.mark.parametrize(
    ("pp", "message"),
    [
        ("decode|nope", "Unknown preprocessing op 'nope'"),
        ("decode(2)", "'decode': channels must be 1 or 3"),
        ("resize(0)", "'resize': size must be a positive integer"),
        ("resize(32, method='cubic')", "'resize': method must be one of"),
        ("central_crop(2.5)", "'central_crop': size must be a positive integer"),
        ("random_crop(32, -1)", "'random_crop': pad must be >= 0"),
        ("inception_crop(224, area_min=0)", "'inception_crop': need 0 < area_min"),
        ("rotate(400)", "'rotate': degrees must be in"),
        ("color_jitter(hue=0.9)", "'color_jitter': hue must be in"),
        ("randaugment(0, 9)", "'randaugment': num_layers must be a positive integer"),
        ("randaugment(2, 11)", "'randaugment': magnitude must be in"),
        ("autoaugment(cifar)", "'autoaugment': policy must be one of"),
        ("random_erasing(1.5)", "'random_erasing': prob must be in"),
        ("grayscale(0.5, channels=1)", "'grayscale': channels=1 needs prob=1"),
        ("value_range(1, 0)", "'value_range': low must be < high"),
        ("normalize(my_stats)", "'normalize': unknown statistics 'my_stats'"),
        ("flip_lr(0.5)", "Bad arguments for preprocessing op 'flip_lr'"),
        ("resize(32, bogus=1)", "Bad arguments for preprocessing op 'resize'"),
        ("value_range|color_jitter", "'color_jitter': needs uint8 pixels"),
    ],
)
def test_bad_ops_fail_at_parse_naming_the_op(pp, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        preprocess.parse(pp)


def test_every_registered_op_is_covered_by_a_case():
    covered = {spec.name for pp, *_ in CASES for spec in preprocess.parse_specs(pp)}
    assert covered == set(image_ops.op_names())
