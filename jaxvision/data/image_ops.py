"""The image ops a pipeline string can name: their registry and the basic ops.

Every op maps (image, seed) -> image inside a tf.data graph. Random ops are stateless
and draw from the per-example seed, so a resumed run sees the same augmentations.
Op factories check their arguments when they are called (when the pipeline string is
parsed), so a bad config fails before any data is read. The geometric and colour
augmentations (`augment.py`, `randaugment.py`) register theirs with `register` too;
`preprocess.py` parses pipeline strings into these ops.
"""

from collections.abc import Callable

import tensorflow as tf

Op = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]

# Per-channel statistics in 0..1 pixel units.
NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

_OPS: dict[str, Callable[..., Op]] = {}


def register(name: str):
    """Registers an op factory under `name` (factory args come from the pipeline string)."""

    def wrap(factory: Callable[..., Op]) -> Callable[..., Op]:
        _OPS[name] = factory
        return factory

    return wrap


def op_names() -> list[str]:
    """Every preprocessing op name."""
    return sorted(_OPS)


def check(ok: bool, op: str, message: str) -> None:
    """Raises ValueError naming the op when an argument is out of range."""
    if not ok:
        raise ValueError(f"Preprocessing op {op!r}: {message}")


def positive_int(op: str, name: str, value: object) -> int:
    """`value` as a positive int, or a ValueError naming the op and argument."""
    check(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        op,
        f"{name} must be a positive integer, got {value!r}.",
    )
    return int(value)


def probability(op: str, name: str, value: object) -> float:
    """`value` as a float in [0, 1], or a ValueError naming the op and argument."""
    check(isinstance(value, int | float) and 0 <= value <= 1, op, f"{name} must be in [0, 1].")
    return float(value)


def split_seed(seed: tf.Tensor, n: int) -> list[tf.Tensor]:
    """`n` independent stateless seeds derived from one."""
    seeds = tf.random.experimental.stateless_split(seed, n)
    return [seeds[i] for i in range(n)]


def to_rgb_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    """Any decoded 1/2/3/4-channel image to `channels` (1 or 3): alpha dropped, gray replicated.

    Doing this ourselves (instead of per-format decoder flags) converts grayscale, RGBA,
    gray+alpha and palette images the same way whatever the file format.
    """
    c = tf.clip_by_value(tf.shape(image)[-1], 1, 4) - 1
    if channels == 1:
        gray = tf.switch_case(
            c,
            [
                lambda: image,
                lambda: image[..., :1],
                lambda: tf.image.rgb_to_grayscale(image[..., :3]),
                lambda: tf.image.rgb_to_grayscale(image[..., :3]),
            ],
        )
        gray.set_shape([None, None, 1])
        return gray
    rgb = tf.switch_case(
        c,
        [
            lambda: tf.tile(image[..., :1], [1, 1, 3]),
            lambda: tf.tile(image[..., :1], [1, 1, 3]),
            lambda: image[..., :3],
            lambda: image[..., :3],
        ],
    )
    rgb.set_shape([None, None, 3])
    return rgb


def decode_bytes(data: tf.Tensor, channels: int) -> tf.Tensor:
    """Decodes JPEG/PNG/BMP/GIF/WebP bytes to uint8 [H, W, channels] (first frame of a GIF)."""
    is_webp = tf.logical_and(
        tf.equal(tf.strings.substr(data, 0, 4), b"RIFF"),
        tf.equal(tf.strings.substr(data, 8, 4), b"WEBP"),
    )
    image = tf.cond(
        is_webp,
        lambda: tf.io.decode_webp(data, channels=0)[0],  # [frames, H, W, C]: first frame
        lambda: tf.io.decode_image(data, channels=0, expand_animations=False),
    )
    return to_rgb_channels(image, channels)


@register("decode")
def decode(channels: int = 3) -> Op:
    """Decodes image bytes to uint8 [H, W, channels]; already-decoded images are converted."""
    check(channels in (1, 3), "decode", f"channels must be 1 or 3, got {channels!r}.")

    def fn(image, seed):
        if image.dtype == tf.string:
            return decode_bytes(image, channels)
        if image.shape[-1] == channels:
            return image
        return to_rgb_channels(image, channels)

    return fn


def resize_to(image: tf.Tensor, size: tf.Tensor, method: str) -> tf.Tensor:
    """Antialiased resize to `size` [h, w], keeping the dtype (uint8 rounded and clipped)."""
    out = tf.image.resize(image, size, method=method, antialias=True)
    if image.dtype == tf.uint8:
        return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)
    return tf.cast(out, image.dtype)


_METHODS = ("bilinear", "bicubic", "area", "nearest", "lanczos3")


@register("resize")
def resize(size: int, method: str = "bilinear") -> Op:
    """Resizes to size x size (antialiased), ignoring the aspect ratio."""
    size = positive_int("resize", "size", size)
    check(method in _METHODS, "resize", f"method must be one of {_METHODS}, got {method!r}.")

    def fn(image, seed):
        if image.shape[0] == size and image.shape[1] == size:
            return image
        # Decoded images have no static size: skip the work at run time when it already fits.
        fits = tf.reduce_all(tf.equal(tf.shape(image)[:2], size))
        out = tf.cond(fits, lambda: image, lambda: resize_to(image, (size, size), method))
        out.set_shape([size, size, image.shape[-1]])
        return out

    return fn


@register("resize_small")
def resize_small(size: int, method: str = "bilinear") -> Op:
    """Resizes so the shorter side is `size`, keeping the aspect ratio (before central_crop)."""
    size = positive_int("resize_small", "size", size)
    check(method in _METHODS, "resize_small", f"method must be one of {_METHODS}.")

    def fn(image, seed):
        hw = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = size / tf.reduce_min(hw)
        new = tf.maximum(tf.cast(tf.round(hw * scale), tf.int32), size)
        return resize_to(image, new, method)

    return fn


@register("central_crop")
def central_crop(size: int) -> Op:
    """Crops the central size x size window (resize first if the image may be smaller)."""
    size = positive_int("central_crop", "size", size)

    def fn(image, seed):
        h, w = tf.shape(image)[0], tf.shape(image)[1]
        tf.debugging.assert_greater_equal(
            tf.minimum(h, w), size, message=f"central_crop({size}): image smaller than the crop"
        )
        top, left = (h - size) // 2, (w - size) // 2
        out = image[top : top + size, left : left + size]
        out.set_shape([size, size, image.shape[-1]])
        return out

    return fn


@register("random_crop")
def random_crop(size: int, pad: int = 0) -> Op:
    """Zero-pads by `pad` on each side, then crops size x size at a random place (CIFAR recipe)."""
    size = positive_int("random_crop", "size", size)
    check(isinstance(pad, int) and pad >= 0, "random_crop", f"pad must be >= 0, got {pad!r}.")

    def fn(image, seed):
        if pad:
            image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
        channels = image.shape[-1] if image.shape[-1] is not None else tf.shape(image)[-1]
        return tf.image.stateless_random_crop(image, (size, size, channels), seed=seed)

    return fn


@register("flip_lr")
def flip_lr() -> Op:
    """Mirrors left-right with probability 1/2."""
    return lambda image, seed: tf.image.stateless_random_flip_left_right(image, seed=seed)


@register("grayscale")
def grayscale(prob: float = 1.0, channels: int = 3) -> Op:
    """With probability `prob`, replaces the colours by their luma, keeping `channels` channels."""
    prob = probability("grayscale", "prob", prob)
    check(channels in (1, 3), "grayscale", f"channels must be 1 or 3, got {channels!r}.")
    # A 1-channel output cannot sometimes stay colour: the output shape must be static.
    check(channels == 3 or prob == 1.0, "grayscale", "channels=1 needs prob=1.")

    def fn(image, seed):
        gray = tf.image.rgb_to_grayscale(image) if image.shape[-1] != 1 else image
        if channels == 1:
            return gray
        gray = tf.tile(gray, [1, 1, 3])
        if prob >= 1.0:
            return gray
        colour = image if image.shape[-1] == 3 else tf.tile(image, [1, 1, 3])
        return tf.where(tf.random.stateless_uniform([], seed) < prob, gray, colour)

    return fn


@register("value_range")
def value_range(low: float = -1.0, high: float = 1.0) -> Op:
    """Maps 0..255 pixels linearly to low..high as float32."""
    check(low < high, "value_range", f"low must be < high, got ({low}, {high}).")

    def fn(image, seed):
        return tf.cast(image, tf.float32) * ((high - low) / 255.0) + low

    return fn


@register("normalize")
def normalize(stats: str = "imagenet", mean=None, std=None) -> Op:
    """Scales to 0..1, subtracts the per-channel mean and divides by the std (named or given)."""
    if mean is None and std is None:
        check(
            stats in NORMALIZATIONS,
            "normalize",
            f"unknown statistics {stats!r}; known: {sorted(NORMALIZATIONS)}, "
            "or give mean=(...), std=(...).",
        )
        mean, std = NORMALIZATIONS[stats]
    check(
        mean is not None and std is not None and all(s > 0 for s in tf.nest.flatten(std)),
        "normalize",
        "give both mean and std (std > 0).",
    )

    def fn(image, seed):
        x = tf.cast(image, tf.float32) / 255.0
        return (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)

    return fn


def factory(name: str) -> Callable[..., Op] | None:
    """The registered factory of op `name`, or None."""
    return _OPS.get(name)
