"""Parameter counts and XLA-measured GFLOPs of a registered model, without allocating it.

Shapes come from `jax.eval_shape` and FLOPs from compiling the forward pass on abstract
inputs, so even ViT-H/14 is summarised in seconds and a few hundred MB of host memory.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.models.registry import create

DEFAULT_IMAGE_SIZE = 224


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """What `python -m jaxvision.models NAME` reports."""

    name: str
    image_size: int
    num_classes: int
    total_params: int
    gflops: float
    modules: list[tuple[str, int]]  # (top-level module or param, parameter count)


def build(
    name: str, *, num_classes: int, image_size: int | None = None, **overrides: Any
) -> tuple[nn.Module, int]:
    """Creates `name` and its input size; only fixed-size models (ViT) take `image_size`."""
    model = create(name, num_classes=num_classes, **overrides)
    if image_size is not None and hasattr(model, "image_size"):
        model = create(name, num_classes=num_classes, image_size=image_size, **overrides)
    size = getattr(model, "image_size", None) or image_size or DEFAULT_IMAGE_SIZE
    return model, size


def abstract_variables(model: nn.Module, image_size: int) -> Any:
    """The variable tree of `model` as ShapeDtypeStructs (nothing is allocated)."""
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)


def count_params(variables: Any) -> int:
    """Number of trainable parameters (the `params` collection only, not BatchNorm stats)."""
    return sum(int(leaf.size) for leaf in jax.tree.leaves(variables["params"]))


def xla_flops(stage: Any) -> float:
    """FLOPs from XLA's cost analysis of a lowered or compiled computation (0 if unknown).

    Count on the lowered stage for a multi-device step: a compiled one is one device's
    partition and counts only its share.
    """
    cost = stage.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax returns one dict per computation
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def forward_gflops(model: nn.Module, variables: Any, image_size: int) -> float:
    """GFLOPs of one inference forward pass on one image, from XLA's cost analysis.

    XLA counts a multiply-add as 2 FLOPs, so this is about twice the "GMACs" timm quotes.
    """
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).compile()
    return (xla_flops(compiled) or float("nan")) / 1e9


def summarize(name: str, *, num_classes: int = 1000, image_size: int | None = None) -> ModelSummary:
    """Counts parameters per top-level module and measures forward GFLOPs of model `name`."""
    model, size = build(name, num_classes=num_classes, image_size=image_size)
    variables = abstract_variables(model, size)
    params = variables["params"]
    modules = [
        (key, sum(int(leaf.size) for leaf in jax.tree.leaves(params[key]))) for key in params
    ]
    return ModelSummary(
        name=name,
        image_size=size,
        num_classes=num_classes,
        total_params=count_params(variables),
        gflops=forward_gflops(model, variables, size),
        modules=modules,
    )


def format_summary(s: ModelSummary) -> str:
    """Renders a summary as a plain-text report with a per-module table."""
    lines = [
        f"model:       {s.name} ({s.image_size}x{s.image_size}, {s.num_classes} classes)",
        f"parameters:  {s.total_params:,}",
        f"GFLOPs/img:  {s.gflops:.2f}  (XLA cost analysis, 1 multiply-add = 2 FLOPs)",
        "",
    ]
    width = max([len("module"), *(len(k) for k, _ in s.modules)])
    lines.append(f"{'module':<{width}}  {'params':>13}  {'share':>6}")
    for key, n in s.modules:
        share = 100.0 * n / max(s.total_params, 1)
        lines.append(f"{key:<{width}}  {n:>13,}  {share:>5.1f}%")
    return "\n".join(lines)
