"""Named preprocessing ops composed with "|": "decode|random_crop(32,4)|flip_lr|normalize(cifar10)".

Every op maps (image, seed) -> image inside a tf.data graph. Random ops are stateless
and draw from the per-example seed, so a resumed run sees the same augmentations.
"""

import ast
from collections.abc import Callable

import tensorflow as tf

Op = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]

# Per-channel statistics in 0..1 pixel units.
NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,), (0.3081,)),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

_OPS: dict[str, Callable[..., Op]] = {}


def _op(name: str):
    def wrap(factory: Callable[..., Op]) -> Callable[..., Op]:
        _OPS[name] = factory
        return factory

    return wrap


def op_names() -> list[str]:
    """Every preprocessing op name."""
    return sorted(_OPS)


@_op("decode")
def decode(channels: int = 3) -> Op:
    """Decodes JPEG/PNG/BMP/GIF bytes to uint8 [H, W, channels]."""

    def fn(image, seed):
        if image.dtype != tf.string:
            return image
        return tf.io.decode_image(image, channels=channels, expand_animations=False)

    return fn


@_op("resize")
def resize(size: int, method: str = "bilinear") -> Op:
    """Resizes to size x size (antialiased)."""

    def fn(image, seed):
        if image.shape[0] == size and image.shape[1] == size:
            return image
        out = tf.image.resize(image, (size, size), method=method, antialias=True)
        if image.dtype == tf.uint8:
            return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)
        return out

    return fn


@_op("central_crop")
def central_crop(size: int) -> Op:
    """Crops the central size x size window."""

    def fn(image, seed):
        h, w = tf.shape(image)[0], tf.shape(image)[1]
        top, left = (h - size) // 2, (w - size) // 2
        return image[top : top + size, left : left + size]

    return fn


@_op("random_crop")
def random_crop(size: int, pad: int = 0) -> Op:
    """Zero-pads by `pad` on each side, then crops size x size at a random place (CIFAR recipe)."""

    def fn(image, seed):
        if pad:
            image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
        channels = image.shape[-1] if image.shape[-1] is not None else tf.shape(image)[-1]
        return tf.image.stateless_random_crop(image, (size, size, channels), seed=seed)

    return fn


@_op("flip_lr")
def flip_lr() -> Op:
    """Mirrors left-right with probability 1/2."""
    return lambda image, seed: tf.image.stateless_random_flip_left_right(image, seed=seed)


@_op("value_range")
def value_range(low: float = -1.0, high: float = 1.0) -> Op:
    """Maps 0..255 pixels linearly to low..high as float32."""

    def fn(image, seed):
        return tf.cast(image, tf.float32) * ((high - low) / 255.0) + low

    return fn


@_op("normalize")
def normalize(stats: str = "imagenet") -> Op:
    """Scales to 0..1, subtracts the named per-channel mean and divides by the std."""
    if stats not in NORMALIZATIONS:
        raise ValueError(
            f"normalize: unknown statistics {stats!r}; known: {sorted(NORMALIZATIONS)}."
        )
    mean, std = NORMALIZATIONS[stats]

    def fn(image, seed):
        x = tf.cast(image, tf.float32) / 255.0
        return (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)

    return fn


def _parse_one(spec: str) -> tuple[str, tuple, dict]:
    spec = spec.strip()
    name, _, rest = spec.partition("(")
    name = name.strip()
    if name not in _OPS:
        raise ValueError(
            f"Unknown preprocessing op {name!r} in {spec!r}. Known ops: {', '.join(op_names())}."
        )
    if not rest:
        return name, (), {}
    if not rest.endswith(")"):
        raise ValueError(f"Preprocessing op {spec!r}: missing closing parenthesis.")
    call = ast.parse(f"f({rest}", mode="eval").body
    try:
        args = tuple(ast.literal_eval(a) for a in call.args)
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except ValueError:
        # Bare words such as normalize(imagenet) are read as strings.
        args = tuple(a.id if isinstance(a, ast.Name) else ast.literal_eval(a) for a in call.args)
        kwargs = {
            k.arg: k.value.id if isinstance(k.value, ast.Name) else ast.literal_eval(k.value)
            for k in call.keywords
        }
    return name, args, kwargs


def parse(pp: str) -> list[Op]:
    """Builds the op list of a pipeline string; raises ValueError naming a bad op or argument."""
    ops = []
    for spec in filter(str.strip, pp.split("|")):
        try:
            name, args, kwargs = _parse_one(spec)
        except SyntaxError as e:
            raise ValueError(f"Cannot parse preprocessing op {spec!r}: {e.msg}.") from e
        try:
            ops.append(_OPS[name](*args, **kwargs))
        except TypeError as e:
            raise ValueError(f"Bad arguments for preprocessing op {spec!r}: {e}.") from e
    return ops


def apply(ops: list[Op], image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Runs `ops` in order, giving each its own seed derived from the example's seed."""
    for i, op in enumerate(ops):
        image = op(image, tf.random.experimental.stateless_fold_in(seed, i))
    return image
