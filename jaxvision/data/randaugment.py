"""RandAugment (Cubuk et al., 2019) and AutoAugment (ImageNet policy v0) on uint8 images.

The image ops follow the TPU reference implementation (tensorflow/tpu autoaugment.py);
magnitudes run 0..10 and every op gets stronger as the magnitude grows (posterize keeps
8 - 4*m/10 bits, solarize thresholds at 256 - 25.6*m), as in timm's "increasing" variant.
"""

import tensorflow as tf

from jaxvision.data import augment
from jaxvision.data.image_ops import Op, check, positive_int, register, split_seed

_MAX_LEVEL = 10.0
_FILL = 128.0  # grey corners after geometric ops, as in the reference


def _blend(a: tf.Tensor, b: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(a + factor * (b - a), 0.0, 255.0)


def _gray(x: tf.Tensor) -> tf.Tensor:
    return tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 3])


def _autocontrast(x, level, sign):
    lo = tf.reduce_min(x, axis=[0, 1], keepdims=True)
    hi = tf.reduce_max(x, axis=[0, 1], keepdims=True)
    scaled = (x - lo) * (255.0 / tf.maximum(hi - lo, 1.0))
    return tf.where(hi > lo, scaled, x)


def _equalize_channel(c: tf.Tensor) -> tf.Tensor:
    c = tf.cast(c, tf.int32)
    histo = tf.histogram_fixed_width(c, [0, 255], nbins=256)
    nonzero = tf.boolean_mask(histo, histo > 0)
    step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
    safe = tf.maximum(step, 1)
    lut = (tf.cumsum(histo) + safe // 2) // safe
    lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
    return tf.cast(tf.where(step == 0, c, tf.gather(lut, c)), tf.float32)


def _equalize(x, level, sign):
    return tf.stack([_equalize_channel(x[..., i]) for i in range(3)], -1)


def _invert(x, level, sign):
    return 255.0 - x


def _posterize(x, level, sign):
    shift = tf.cast(level / _MAX_LEVEL * 4, tf.int32)
    q = tf.bitwise.left_shift(tf.bitwise.right_shift(tf.cast(x, tf.int32), shift), shift)
    return tf.cast(q, tf.float32)


def _solarize(x, level, sign):
    threshold = 256.0 - level / _MAX_LEVEL * 256.0
    return tf.where(x < threshold, x, 255.0 - x)


def _solarize_add(x, level, sign):
    return tf.where(x < 128.0, tf.minimum(x + level / _MAX_LEVEL * 110.0, 255.0), x)


def _enhance(degenerate):
    def op(x, level, sign):
        return _blend(degenerate(x), x, level / _MAX_LEVEL * 1.8 + 0.1)

    return op


def _blur(x: tf.Tensor) -> tf.Tensor:
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(x[None], kernel, [1, 1, 1, 1], "VALID")[0]
    # The border keeps its original pixels, as in PIL's ImageEnhance.Sharpness.
    interior = tf.pad(tf.ones_like(smooth), [[1, 1], [1, 1], [0, 0]])
    return tf.where(interior > 0, tf.pad(smooth, [[1, 1], [1, 1], [0, 0]]), x)


def _affine(matrix_fn, interpolation="NEAREST"):
    def op(x, level, sign):
        return augment.transform(x, matrix_fn(x, level * sign), _FILL, interpolation)

    return op


def _size(x: tf.Tensor, axis: int) -> tf.Tensor:
    return tf.cast(tf.shape(x)[axis], tf.float32)


def _zero() -> tf.Tensor:
    return tf.constant(0.0)


def _one() -> tf.Tensor:
    return tf.constant(1.0)


_OPS = {
    "AutoContrast": _autocontrast,
    "Equalize": _equalize,
    "Invert": _invert,
    "Rotate": _affine(lambda x, v: augment.rotation_matrix(x, v / _MAX_LEVEL * 30.0), "BILINEAR"),
    "Posterize": _posterize,
    "Solarize": _solarize,
    "SolarizeAdd": _solarize_add,
    "Color": _enhance(_gray),
    "Contrast": _enhance(lambda x: tf.reduce_mean(_gray(x))),
    "Brightness": _enhance(tf.zeros_like),
    "Sharpness": _enhance(_blur),
    "ShearX": _affine(
        lambda x, v: tf.stack(
            [_one(), v / _MAX_LEVEL * 0.3, _zero(), _zero(), _one()] + [_zero()] * 3
        )
    ),
    "ShearY": _affine(
        lambda x, v: tf.stack(
            [_one(), _zero(), _zero(), v / _MAX_LEVEL * 0.3, _one()] + [_zero()] * 3
        )
    ),
    # Translations are a fraction of the image side (100 px at 224 px in the reference).
    "TranslateX": _affine(
        lambda x, v: tf.stack(
            [_one(), _zero(), -v / _MAX_LEVEL * 0.45 * _size(x, 1), _zero(), _one()] + [_zero()] * 3
        )
    ),
    "TranslateY": _affine(
        lambda x, v: tf.stack(
            [_one(), _zero(), _zero(), _zero(), _one(), -v / _MAX_LEVEL * 0.45 * _size(x, 0)]
            + [_zero()] * 2
        )
    ),
}
RANDAUGMENT_OPS = tuple(_OPS)


def _with_rgb(image: tf.Tensor, fn) -> tf.Tensor:
    """Runs `fn` on float RGB 0..255; gray images are replicated and reduced back."""
    if image.dtype != tf.uint8:
        raise ValueError(
            "randaugment/autoaugment need uint8 pixels: put them before value_range/normalize."
        )
    gray = image.shape[-1] == 1
    x = tf.cast(tf.tile(image, [1, 1, 3]) if gray else image, tf.float32)
    x = fn(x)
    x = tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)
    return x[..., :1] if gray else x


def _apply_op(name: str, x: tf.Tensor, level: tf.Tensor | float, seed: tf.Tensor) -> tf.Tensor:
    sign = tf.where(tf.random.stateless_uniform([], seed) < 0.5, -1.0, 1.0)
    out = _OPS[name](x, tf.cast(level, tf.float32), sign)
    out.set_shape(x.shape)
    return out


def _apply_indexed(x: tf.Tensor, index: tf.Tensor, level: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Applies RANDAUGMENT_OPS[index]: one branch per op keeps the graph small."""
    branches = [(lambda n=n: _apply_op(n, x, level, seed)) for n in RANDAUGMENT_OPS]
    return tf.switch_case(index, branches)


@register("randaugment")
def randaugment(num_layers: int = 2, magnitude: float = 10) -> Op:
    """Applies `num_layers` ops drawn uniformly from RANDAUGMENT_OPS at `magnitude` (0..10)."""
    num_layers = positive_int("randaugment", "num_layers", num_layers)
    check(
        isinstance(magnitude, int | float) and 0 <= magnitude <= _MAX_LEVEL,
        "randaugment",
        f"magnitude must be in [0, 10], got {magnitude!r}.",
    )

    def run(x, seed):
        for s in split_seed(seed, num_layers):
            pick, sign_seed = split_seed(s, 2)
            index = tf.random.stateless_uniform([], pick, 0, len(RANDAUGMENT_OPS), tf.int32)
            x = _apply_indexed(x, index, tf.constant(float(magnitude)), sign_seed)
        return x

    return lambda image, seed: _with_rgb(image, lambda x: run(x, seed))


# ImageNet policy v0 of the reference: 25 sub-policies of two (op, probability, level).
AUTOAUGMENT_V0 = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)),
    (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)),
    (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)),
    (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)),
    (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)),
    (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)),
    (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)),
    (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)),
    (("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)),
    (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)),
    (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)),
    (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),
    (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)
_POLICIES = {"v0": AUTOAUGMENT_V0, "imagenet": AUTOAUGMENT_V0}


@register("autoaugment")
def autoaugment(policy: str = "v0") -> Op:
    """Applies one randomly chosen sub-policy of the learned ImageNet AutoAugment policy."""
    check(policy in _POLICIES, "autoaugment", f"policy must be one of {sorted(_POLICIES)}.")
    table = _POLICIES[policy]
    # Sub-policies as tensors: picking one is a gather, not 25 traced copies of the ops.
    ops = tf.constant([[RANDAUGMENT_OPS.index(n) for n, _, _ in sub] for sub in table], tf.int32)
    probs = tf.constant([[p for _, p, _ in sub] for sub in table], tf.float32)
    levels = tf.constant([[float(m) for _, _, m in sub] for sub in table], tf.float32)

    def run(x, seed):
        pick, rest = split_seed(seed, 2)
        row = tf.random.stateless_uniform([], pick, 0, len(table), tf.int32)
        for step, s in enumerate(split_seed(rest, 2)):
            coin, sign_seed = split_seed(s, 2)
            apply = tf.random.stateless_uniform([], coin) < probs[row, step]
            x = tf.cond(
                apply,
                lambda x=x, s=sign_seed, k=step: _apply_indexed(x, ops[row, k], levels[row, k], s),
                lambda x=x: x,
            )
        return x

    return lambda image, seed: _with_rgb(image, lambda x: run(x, seed))
