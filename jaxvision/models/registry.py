"""Model registry: every model family adds its names here, `create` builds them by name."""

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn

ModelFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelFactory] = {}
_NOT_OVERRIDES = ("parent", "name", "num_classes")


def register(name: str, factory: ModelFactory) -> None:
    """Adds `factory(num_classes=..., **overrides) -> nn.Module` under `name`."""
    if name in _REGISTRY:
        raise ValueError(f"Model name {name!r} is registered twice.")
    _REGISTRY[name] = factory


def names() -> list[str]:
    """Every registered model name, sorted."""
    return sorted(_REGISTRY)


def create(name: str, *, num_classes: int, **overrides: Any) -> nn.Module:
    """Builds the registered model `name` with a `num_classes`-way classifier head."""
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown model name {name!r}. Known models: {', '.join(names())}. "
            "Set model.name in the config to one of these."
        )
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
    try:
        return _REGISTRY[name](num_classes=num_classes, **overrides)
    except TypeError as e:
        raise ValueError(f"Model {name!r} does not accept these overrides {overrides}: {e}") from e


def constructor_arguments(name: str) -> dict[str, Any]:
    """The overrides model `name` accepts, each with its default (what `create` may be given)."""
    if name not in _REGISTRY:
        create(name, num_classes=1)  # raises, listing the known names
    factory = _REGISTRY[name]
    preset = dict(getattr(factory, "keywords", None) or {})  # functools.partial presets
    cls = getattr(factory, "func", factory)
    # Flax modules are dataclasses; `parent` and `name` are Flax's own, not the model's.
    fields = [f for f in dataclasses.fields(cls) if f.init and f.name not in _NOT_OVERRIDES]
    return {
        f.name: preset.get(f.name, None if f.default is dataclasses.MISSING else f.default)
        for f in fields
    }
