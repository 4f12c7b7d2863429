"""ResNet v1.5 (BatchNorm, torchvision/timm layout) and BiT ResNet (StdConv + GroupNorm).

ResNet v1.5 puts the stride on the 3x3 conv of the bottleneck. Parameter names
(`stem_conv`, `stage{s}_block{b}/conv1`, `proj_bn`, `head`) are what the timm
safetensors loader maps onto, and convs use torch-style symmetric padding so that
imported weights compute the same function.

BiT ResNet is the backbone of the hybrid ViT (google-research/vision_transformer): weight
standardised convs, GroupNorm(32), names `conv_root`, `gn_root`, `block{s}/unit{u}/...`.
"""

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxvision.models.layers import classifier_output
from jaxvision.models.registry import register

Dtype = Any

STEMS = ("imagenet", "cifar")

# He init on fan-out, as torchvision does for ResNets.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
    return ((k // 2, k // 2), (k // 2, k // 2))


def _block_conv(dtype: Dtype, conv_op: Any) -> Any:
    """The blocks' bias-free conv, computed by `conv_op` (None: `lax.conv_general_dilated`)."""
    return partial(
        nn.Conv,
        use_bias=False,
        dtype=dtype,
        kernel_init=_conv_init,
        conv_general_dilated=conv_op,
    )


def _block_norm(dtype: Dtype, train: bool) -> Any:
    """ResNet's BatchNorm (torchvision's momentum and epsilon)."""
    return partial(
        nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype
    )


class _Block(nn.Module):
    """What every residual block has: its width, stride, dtype and conv."""

    features: int
    strides: int = 1
    dtype: Dtype = jnp.float32
    block_conv: Any = None

    def layers(self, train: bool) -> tuple[Any, Any]:
        """The block's conv and BatchNorm constructors."""
        return _block_conv(self.dtype, self.block_conv), _block_norm(self.dtype, train)


class BasicBlock(_Block):
    """Two 3x3 convs; used by resnet18/34."""

    expansion = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        """Applies the block to NHWC features."""
        conv, norm = self.layers(train)
        y = conv(self.features, (3, 3), self.strides, padding=_pad(3), name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = conv(self.features, (3, 3), padding=_pad(3), name="conv2")(y)
        # Zero-init the last BN scale so each residual branch starts as the identity.
        y = norm(scale_init=nn.initializers.zeros, name="bn2")(y)
        return nn.relu(_shortcut(x, y.shape[-1], self.strides, conv, norm) + y)


class BottleneckBlock(_Block):
    """1x1 reduce, 3x3 (strided, v1.5), 1x1 expand x4; used by resnet50 and deeper."""

    expansion = 4

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool) -> jnp.ndarray:
        """Applies the block to NHWC features."""
        conv, norm = self.layers(train)
        y = conv(self.features, (1, 1), name="conv1")(x)
        y = nn.relu(norm(name="bn1")(y))
        y = conv(self.features, (3, 3), self.strides, padding=_pad(3), name="conv2")(y)
        y = nn.relu(norm(name="bn2")(y))
        y = conv(self.features * 4, (1, 1), name="conv3")(y)
        y = norm(scale_init=nn.initializers.zeros, name="bn3")(y)
        return nn.relu(_shortcut(x, y.shape[-1], self.strides, conv, norm) + y)


def _shortcut(x: jnp.ndarray, features: int, strides: int, conv: Any, norm: Any) -> jnp.ndarray:
    # Called inside a block's compact method, so proj_conv/proj_bn land in that block.
    if x.shape[-1] == features and strides == 1:
        return x
    x = conv(features, (1, 1), strides, name="proj_conv")(x)
    return norm(name="proj_bn")(x)


class ResNet(nn.Module):
    """ResNet v1.5 classifier; `stem="cifar"` swaps the 7x7/2 conv + pool for a 3x3/1 conv."""

    num_classes: int
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    bottleneck: bool = False
    width: float = 1.0
    stem: str = "imagenet"
    dtype: Dtype = jnp.float32
    # A drop-in for `lax.conv_general_dilated` that computes the blocks' convs (a backend may
    # supply a faster one for the same function); None: lax's.
    block_conv: Any = None

    def __post_init__(self) -> None:
        if self.stem not in STEMS:
            raise ValueError(f"stem={self.stem!r} is not one of {STEMS}.")
        if not self.width > 0:
            raise ValueError(f"width must be a positive multiplier, got {self.width!r}.")
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

        `example_index` is accepted like the other models' and unused: nothing is random.

        Features: `feature_map` [N, h, w, C'], the last stage's output before global
        pooling (what Grad-CAM weighs), and `pre_logits` [N, C'] (the head's input).
        """
        base = max(int(64 * self.width), 1)
        x = x.astype(self.dtype)
        k = 7 if self.stem == "imagenet" else 3
        s = 2 if self.stem == "imagenet" else 1
        x = nn.Conv(
            base,
            (k, k),
            s,
            padding=_pad(k),
            use_bias=False,
            dtype=self.dtype,
            kernel_init=_conv_init,
            name="stem_conv",
        )(x)
        x = _block_norm(self.dtype, train)(name="stem_bn")(x)
        x = nn.relu(x)
        if self.stem == "imagenet":
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_pad(3))
        block_cls = BottleneckBlock if self.bottleneck else BasicBlock
        for s, n_blocks in enumerate(self.stage_sizes, start=1):
            for b in range(1, n_blocks + 1):
                strides = 2 if s > 1 and b == 1 else 1
                x = block_cls(
                    base * 2 ** (s - 1),
                    strides,
                    dtype=self.dtype,
                    block_conv=self.block_conv,
                    name=f"stage{s}_block{b}",
                )(x, train=train)
        if return_features:
            # A no-op unless a "perturbations" collection is passed: then its gradient is
            # the gradient w.r.t. this map (how Grad-CAM reads it).
            x = self.perturb("feature_map", x)
            feature_map = x
        x = jnp.mean(x, axis=(1, 2))
        features = {"feature_map": feature_map} if return_features else None
        return classifier_output(x, self.num_classes, self.dtype, features)


RESNET_STAGES: dict[int, tuple[tuple[int, ...], bool]] = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
    200: ((3, 24, 36, 3), True),
}

for _depth, (_stages, _bottleneck) in RESNET_STAGES.items():
    register(f"resnet{_depth}", partial(ResNet, stage_sizes=_stages, bottleneck=_bottleneck))


# ---------------------------------------------------------------------------------------
# BiT ResNet (hybrid ViT backbone)


class StdConv(nn.Conv):
    """Conv whose kernel is standardised (zero mean, unit std over H, W, Cin) on every call."""

    def param(self, name: str, init_fn: Any, *init_args: Any, **init_kwargs: Any) -> Any:
        """Returns the stored param, standardising `kernel` (the stored value stays raw)."""
        p = super().param(name, init_fn, *init_args, **init_kwargs)
        if name == "kernel":
            # eps is added to the std (not the variance), matching the published weights.
            p = p - jnp.mean(p, axis=(0, 1, 2))
            p = p / (jnp.std(p, axis=(0, 1, 2)) + 1e-5)
        return p


class BitUnit(nn.Module):
    """BiT bottleneck unit (v1: stride on the 3x3 conv, relu after the residual sum)."""

    features: int
    strides: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """Applies the unit to NHWC features."""
        conv = partial(StdConv, use_bias=False, dtype=self.dtype)
        gn = partial(nn.GroupNorm, num_groups=32, epsilon=1e-6, dtype=self.dtype)
        residual = x
        if x.shape[-1] != self.features * 4 or self.strides != 1:
            residual = conv(self.features * 4, (1, 1), self.strides, name="conv_proj")(x)
            residual = gn(name="gn_proj")(residual)
        y = nn.relu(gn(name="gn1")(conv(self.features, (1, 1), name="conv1")(x)))
        y = conv(self.features, (3, 3), self.strides, padding="SAME", name="conv2")(y)
        y = nn.relu(gn(name="gn2")(y))
        y = conv(self.features * 4, (1, 1), name="conv3")(y)
        y = gn(scale_init=nn.initializers.zeros, name="gn3")(y)
        return nn.relu(residual + y)


class BitStage(nn.Module):
    """`num_units` BiT units; the first one carries the stride.

    `unit` and `unit_name` serve both BiT families: v1 units `unit1, unit2, ...` (the hybrid
    ViT's backbone) and ResNet-V2's pre-activation units `unit01, unit02, ...`.
    """

    num_units: int
    features: int
    first_stride: int
    dtype: Dtype = jnp.float32
    unit: Any = BitUnit  # a module class taking (features, strides, dtype=...)
    unit_name: str = "unit{}"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """Applies the stage to NHWC features."""
        for u in range(1, self.num_units + 1):
            stride = self.first_stride if u == 1 else 1
            x = self.unit(self.features, stride, dtype=self.dtype, name=self.unit_name.format(u))(x)
        return x


def bit_backbone(
    x: jnp.ndarray, stage_sizes: Sequence[int], width: int = 64, dtype: Dtype = jnp.float32
) -> jnp.ndarray:
    """BiT root (7x7/2 StdConv, GN, relu, 3x3/2 max-pool) then stages; stride 4 * 2**(S-1).

    Must be called inside a compact method: the submodules attach to the calling module,
    which is how the hybrid ViT keeps `conv_root`, `block1/...` at the top of its tree.
    """
    x = StdConv(width, (7, 7), 2, use_bias=False, dtype=dtype, name="conv_root")(x)
    x = nn.GroupNorm(num_groups=32, epsilon=1e-6, dtype=dtype, name="gn_root")(x)
    x = nn.relu(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    for s, n_units in enumerate(stage_sizes, start=1):
        x = BitStage(
            n_units, width * 2 ** (s - 1), 1 if s == 1 else 2, dtype=dtype, name=f"block{s}"
        )(x)
    return x


def bit_stride(stage_sizes: Sequence[int]) -> int:
    """Total downsampling of `bit_backbone` for these stages."""
    return 4 * 2 ** max(len(stage_sizes) - 1, 0)
