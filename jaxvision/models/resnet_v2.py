"""BiT ResNet-V2 (google-research/big_transfer): pre-activation bottlenecks, GroupNorm(32),
weight-standardised convs; `bit_r50x1` is the BiT-M R50x1 architecture.

Parameter names follow the published BiT files after `pretrained_bit` renames them:
`conv_root`, `block{s}/unit{uu}/{gn1,conv1,gn2,conv2,gn3,conv3,conv_proj}`,
`norm_pre_head`, `head`. Padding is explicit (zeros) wherever the published model pads, so
imported weights compute the function they were trained as.
"""

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxvision.models.layers import classifier_output
from jaxvision.models.registry import register
from jaxvision.models.resnet import BitStage

Dtype = Any

GROUPS = 32
# The published models normalise activations with eps 1e-5 and kernels with eps 1e-10 inside
# the square root (not added to the std as the v1 hybrid backbone in resnet.py does).
_GN_EPS = 1e-5
_WS_EPS = 1e-10


class WSConv(nn.Conv):
    """Conv whose kernel is standardised over (H, W, Cin) on every call, BiT-V2 style."""

    def param(self, name: str, init_fn: Any, *init_args: Any, **init_kwargs: Any) -> Any:
        """Returns the stored param, standardising `kernel` (the stored value stays raw)."""
        p = super().param(name, init_fn, *init_args, **init_kwargs)
        if name == "kernel":
            p = p - jnp.mean(p, axis=(0, 1, 2), keepdims=True)
            p = p * (jnp.mean(jnp.square(p), axis=(0, 1, 2), keepdims=True) + _WS_EPS) ** -0.5
        return p


def group_norm(x: jnp.ndarray, dtype: Dtype, name: str) -> jnp.ndarray:
    """GroupNorm(32) as published; narrower test-size models get one channel per group."""
    groups = min(GROUPS, x.shape[-1])
    return nn.GroupNorm(num_groups=groups, epsilon=_GN_EPS, dtype=dtype, name=name)(x)


def _pad(x: jnp.ndarray, k: int) -> jnp.ndarray:
    """Zero-pads H and W for a k x k window with VALID padding (BiT's fixed padding)."""
    lo = (k - 1) // 2
    return jnp.pad(x, ((0, 0), (lo, k - 1 - lo), (lo, k - 1 - lo), (0, 0)))


class PreActUnit(nn.Module):
    """Pre-activation bottleneck: GN-ReLU-conv1x1, GN-ReLU-conv3x3 (strided), GN-ReLU-conv1x1.

    The projection shortcut, where the shape changes, reads the pre-activated input.
    """

    features: int  # the bottleneck width; the unit outputs 4x this
    strides: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """Applies the unit to NHWC features."""
        conv = partial(WSConv, use_bias=False, padding="VALID", dtype=self.dtype)
        gn = partial(group_norm, dtype=self.dtype)
        out = self.features * 4
        y = nn.relu(gn(x, name="gn1"))
        shortcut = x
        if x.shape[-1] != out or self.strides != 1:
            shortcut = conv(out, (1, 1), self.strides, name="conv_proj")(y)
        y = conv(self.features, (1, 1), name="conv1")(y)
        y = nn.relu(gn(y, name="gn2"))
        y = conv(self.features, (3, 3), self.strides, name="conv2")(_pad(y, 3))
        y = nn.relu(gn(y, name="gn3"))
        y = conv(out, (1, 1), name="conv3")(y)
        return y + shortcut


class ResNetV2(nn.Module):
    """BiT ResNet-V2 classifier: root, four stages of pre-activation units, GN-ReLU head."""

    num_classes: int
    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    width: float = 1.0  # BiT's width factor: the root has 64 * width channels
    dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        base = 64 * self.width
        # Every width then has channel counts GroupNorm can split: 32 groups, or fewer
        # channels than that (one per group) in narrow models.
        if not (base == int(base) >= 1 and (base % GROUPS == 0 or GROUPS % base == 0)):
            raise ValueError(
                f"width={self.width!r} gives {base} root channels; use a width whose 64 * width "
                f"is a multiple or a divisor of {GROUPS}: 0.25, 0.5, 1, 2, 3, ..."
            )
        if not self.stage_sizes or min(self.stage_sizes) < 1:
            raise ValueError(f"stage_sizes must be positive unit counts, got {self.stage_sizes}.")
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        x: jnp.ndarray,
        *,
        train: bool = False,
        return_features: bool = False,
        example_index: jnp.ndarray | None = None,
    ) -> jnp.ndarray | tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
        """Maps images [N, H, W, C] to fp32 logits [N, num_classes] (and features if asked).

        `train` and `example_index` are accepted like the other models' and unused:
        GroupNorm has no batch statistics and nothing is random.

        Features: `feature_map` [N, h, w, C'] (after the head's GN-ReLU, before pooling;
        what Grad-CAM weighs) and `pre_logits` [N, C'].
        """
        base = int(64 * self.width)
        x = x.astype(self.dtype)
        x = WSConv(
            base, (7, 7), 2, padding="VALID", use_bias=False, dtype=self.dtype, name="conv_root"
        )(_pad(x, 7))
        # Zero padding before the pool, not -inf: the published model pools this way, and
        # the root's outputs are not yet rectified, so the two differ.
        x = nn.max_pool(_pad(x, 3), (3, 3), strides=(2, 2), padding="VALID")
        for s, n_units in enumerate(self.stage_sizes, start=1):
            x = BitStage(
                n_units,
                base * 2 ** (s - 1),
                1 if s == 1 else 2,
                self.dtype,
                unit=PreActUnit,
                unit_name="unit{:02d}",  # as the published files number them
                name=f"block{s}",
            )(x)
        x = group_norm(x, self.dtype, "norm_pre_head")
        x = nn.relu(x)
        feature_map = None
        if return_features:
            # A no-op unless a "perturbations" collection is passed (Grad-CAM's gradient).
            x = feature_map = self.perturb("feature_map", x)
        x = jnp.mean(x, axis=(1, 2))
        features = {"feature_map": feature_map} if return_features else None
        return classifier_output(x, self.num_classes, self.dtype, features, zero_head=True)


register("bit_r50x1", partial(ResNetV2, stage_sizes=(3, 4, 6, 3), width=1.0))
