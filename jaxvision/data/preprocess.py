"""Named preprocessing ops composed with "|": "decode|random_crop(32,4)|flip_lr|normalize(cifar10)".

This module parses a pipeline string into the ops of `image_ops.py` (the registry and the
basic ops), `augment.py` and `randaugment.py` (imported here so that theirs are
registered), and applies them to an example with its seed.
"""

import ast
import dataclasses

import tensorflow as tf

from jaxvision.data import augment, randaugment  # noqa: F401 (they register their ops)
from jaxvision.data.image_ops import Op, check, factory, op_names


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """One parsed op: its name and literal arguments."""

    name: str
    args: tuple
    kwargs: dict


def _literal(node: ast.AST) -> object:
    # Bare words such as normalize(imagenet) are read as strings.
    if isinstance(node, ast.Name):
        return node.id
    return ast.literal_eval(node)


def _parse_one(spec: str) -> OpSpec:
    spec = spec.strip()
    name, _, rest = spec.partition("(")
    name = name.strip()
    if factory(name) is None:
        raise ValueError(
            f"Unknown preprocessing op {name!r} in {spec!r}. Known ops: {', '.join(op_names())}."
        )
    if not rest:
        return OpSpec(name, (), {})
    if not rest.endswith(")"):
        raise ValueError(f"Preprocessing op {spec!r}: missing closing parenthesis.")
    try:
        call = ast.parse(f"f({rest}", mode="eval").body
        args = tuple(_literal(a) for a in call.args)
        kwargs = {k.arg: _literal(k.value) for k in call.keywords}
    except (SyntaxError, ValueError) as e:
        raise ValueError(f"Cannot parse the arguments of preprocessing op {spec!r}: {e}.") from e
    return OpSpec(name, args, kwargs)


def parse_specs(pp: str) -> list[OpSpec]:
    """The op names and arguments of a pipeline string (no checks of the arguments)."""
    return [_parse_one(s) for s in pp.split("|") if s.strip()]


_TO_FLOAT = ("value_range", "normalize")
_NEEDS_PIXELS = ("color_jitter", "randaugment", "autoaugment")


def parse(pp: str) -> list[Op]:
    """Builds the op list of a pipeline string; raises ValueError naming a bad op or argument."""
    specs = parse_specs(pp)
    floats = [i for i, s in enumerate(specs) if s.name in _TO_FLOAT]
    for s in specs[floats[0] :] if floats else []:
        check(
            s.name not in _NEEDS_PIXELS,
            s.name,
            "needs uint8 pixels: put it before value_range/normalize.",
        )
    ops = []
    i = 0
    while i < len(specs):
        s = specs[i]
        fuse = s.name == "decode" and i + 1 < len(specs) and specs[i + 1].name == "inception_crop"
        spec = specs[i + 1] if fuse else s
        try:
            op = factory(spec.name)(*spec.args, **spec.kwargs)
            if fuse:
                # decode|inception_crop decodes only the cropped window of a JPEG: ~2x faster.
                op = augment.decode_inception_crop(op, *s.args, **s.kwargs)
            ops.append(op)
        except TypeError as e:
            raise ValueError(f"Bad arguments for preprocessing op {spec.name!r}: {e}.") from e
        i += 2 if fuse else 1
    return ops


def apply(ops: list[Op], image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Runs `ops` in order, giving each its own seed derived from the example's seed."""
    for i, op in enumerate(ops):
        image = op(image, tf.random.experimental.stateless_fold_in(seed, i))
    return image
