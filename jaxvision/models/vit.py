"""Vision Transformer (ViT) and hybrid ResNet+ViT, in the google-research/vision_transformer layout.

The parameter tree matches the published .npz checkpoints 1:1: `embedding`, `cls`,
`Transformer/posembed_input`, `Transformer/encoderblock_{i}/...`, `Transformer/encoder_norm`,
`head`, and for hybrids the BiT params (`conv_root`, `gn_root`, `block{s}/unit{u}`) at the
top level. With `scan=True` the blocks live in `Transformer/encoderblock` with a leading
[depth] axis, which compiles once per block instead of once per layer.

With `distill_token=True` (DeiT, Touvron et al. 2021) a second learned token `dist` follows
`cls` and has its own head `head_dist`; the model's logits are the mean of both heads, and
`heads=True` returns them stacked [N, 2, K] (class head, distillation head) for training.
"""

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxvision.models.layers import (
    AddPositionEmbs,
    ExampleDropout,
    MAPHead,
    MlpBlock,
    MultiHeadDotProductAttention,
    classifier_output,
    drop_path,
    example_indices,
    posemb_sincos_2d,
)
from jaxvision.models.registry import register
from jaxvision.models.resnet import bit_backbone, bit_stride

Dtype = Any

POOLS = ("token", "gap", "map")
POSEMBS = ("learn", "sincos2d")
PATCH_SIZES = (4, 8, 14, 16, 32)
# name: (hidden_size, depth, num_heads, mlp_dim)
VIT_SIZES: dict[str, tuple[int, int, int, int]] = {
    "ti": (192, 12, 3, 768),
    "s": (384, 12, 6, 1536),
    "b": (768, 12, 12, 3072),
    "l": (1024, 24, 16, 4096),
    "h": (1280, 32, 16, 5120),
}
_LN_EPS = 1e-6


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)), each with drop-path."""

    mlp_dim: int
    num_heads: int
    dropout: float = 0.0
    attention_dropout: float = 0.0
    use_drop_path: bool = False
    deterministic: bool = True
    return_attention: bool = False
    gelu_approximate: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, drop_rate: float | jnp.ndarray, example_index: jnp.ndarray
    ) -> tuple[jnp.ndarray, jnp.ndarray | None]:
        """Returns the new tokens and (if asked) attention weights [N, H, T, T].

        The (carry, per-layer input, broadcast) -> (carry, per-layer output) signature is
        what `nn.scan` needs; `drop_rate` is this layer's stochastic-depth rate and
        `example_index` [N] what the examples' random masks are drawn from.
        """
        det = self.deterministic
        index = example_index

        def branch(y: jnp.ndarray) -> jnp.ndarray:
            # No rng is needed (or drawn) at eval time, so init works without a dropout key.
            if not self.use_drop_path or det:
                return y
            rng = self.make_rng("dropout")
            return drop_path(y, drop_rate, rng, deterministic=det, example_index=index)

        y = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, name="LayerNorm_0")(x)
        y, attn = MultiHeadDotProductAttention(
            self.num_heads,
            dtype=self.dtype,
            dropout_rate=self.attention_dropout,
            name="MultiHeadDotProductAttention_1",
        )(y, y, deterministic=det, return_weights=self.return_attention, example_index=index)
        y = ExampleDropout(self.dropout)(y, deterministic=det, example_index=index)
        x = x + branch(y)
        y = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, name="LayerNorm_2")(x)
        y = MlpBlock(
            self.mlp_dim,
            dtype=self.dtype,
            dropout_rate=self.dropout,
            gelu_approximate=self.gelu_approximate,
            name="MlpBlock_3",
        )(y, deterministic=det, example_index=index)
        return x + branch(y), attn


class Encoder(nn.Module):
    """Position embedding, `depth` encoder blocks (unrolled or scanned), final LayerNorm."""

    depth: int
    mlp_dim: int
    num_heads: int
    learned_posemb: bool = True
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path: float = 0.0
    scan: bool = False
    remat: bool = False
    gelu_approximate: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: jnp.ndarray,
        *,
        train: bool,
        return_attention: bool = False,
        example_index: jnp.ndarray | None = None,
    ) -> tuple[jnp.ndarray, jnp.ndarray | None]:
        """Encodes tokens [N, T, D]; attention weights come back as [depth, N, H, T, T]."""
        if self.learned_posemb:
            x = AddPositionEmbs(name="posembed_input")(x)
        index = example_indices(x, example_index)
        x = ExampleDropout(self.dropout)(x, deterministic=not train, example_index=index)

        # Stochastic depth grows linearly from 0 at the first block to `drop_path` at the last.
        rates = np.linspace(0.0, self.drop_path, self.depth).astype(np.float32)
        block_cls = EncoderBlock
        if self.remat:
            block_cls = nn.remat(block_cls, prevent_cse=not self.scan)
        block = partial(
            block_cls,
            mlp_dim=self.mlp_dim,
            num_heads=self.num_heads,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            use_drop_path=self.drop_path > 0.0,
            deterministic=not train,
            return_attention=return_attention,
            gelu_approximate=self.gelu_approximate,
            dtype=self.dtype,
        )
        if self.scan:
            stack = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(0, nn.broadcast),
                length=self.depth,
            )
            x, attention = stack(name="encoderblock")(x, jnp.asarray(rates), index)
        else:
            maps = []
            for i in range(self.depth):
                x, attn = block(name=f"encoderblock_{i}")(x, rates[i], index)
                maps.append(attn)
            attention = jnp.stack(maps) if return_attention else None
        x = nn.LayerNorm(epsilon=_LN_EPS, dtype=self.dtype, name="encoder_norm")(x)
        return x, attention


class VisionTransformer(nn.Module):
    """ViT classifier; with `resnet_stages` set it is the hybrid with a BiT ResNet stem.

    `resnet_stages=()` means the BiT root only (conv + pool, stride 4), as in R+ViT-Ti.
    """

    num_classes: int
    hidden_size: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    patch_size: int = 16
    image_size: int = 224
    posemb: str = "learn"
    pool: str = "token"
    dropout: float = 0.0
    attention_dropout: float = 0.0
    drop_path: float = 0.0
    representation_size: int | None = None
    scan: bool = False
    remat: bool = False
    resnet_stages: Sequence[int] | None = None
    resnet_width: int = 64
    # tanh GELU as in the published JAX checkpoints; False: exact erf GELU, as timm weights need.
    gelu_approximate: bool = True
    distill_token: bool = False  # DeiT: a distillation token and head (module docstring)
    dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        self._validate()
        super().__post_init__()

    def _validate(self) -> None:
        if self.pool not in POOLS:
            raise ValueError(f"pool={self.pool!r} is not one of {POOLS}.")
        if self.distill_token and self.pool != "token":
            raise ValueError(f"distill_token=True needs pool='token', got pool={self.pool!r}.")
        if self.posemb not in POSEMBS:
            raise ValueError(f"posemb={self.posemb!r} is not one of {POSEMBS}.")
        if self.posemb == "sincos2d" and self.hidden_size % 4:
            raise ValueError(
                f"posemb='sincos2d' needs hidden_size divisible by 4, got {self.hidden_size}."
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}."
            )
        if not isinstance(self.patch_size, int) or self.patch_size < 1:
            raise ValueError(f"patch_size must be a positive int, got {self.patch_size!r}.")
        step = self.patch_size * self.stem_stride
        if not isinstance(self.image_size, int) or self.image_size < step or self.image_size % step:
            what = f"patch_size={self.patch_size}"
            if self.resnet_stages is not None:
                what += f" times the ResNet stem stride {self.stem_stride} (= {step})"
            raise ValueError(
                f"image_size={self.image_size!r} must be a positive multiple of {what}."
            )
        for name in ("dropout", "attention_dropout", "drop_path"):
            rate = getattr(self, name)
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{name}={rate!r} must be in [0, 1).")
        if self.representation_size is not None and self.representation_size < 1:
            raise ValueError(
                f"representation_size={self.representation_size!r} must be None or a positive int."
            )

    @property
    def stem_stride(self) -> int:
        """Downsampling before the patch embedding: 1 for ViT, 4 * 2**(S-1) for hybrids."""
        return 1 if self.resnet_stages is None else bit_stride(self.resnet_stages)

    @property
    def num_patches(self) -> int:
        """Number of patch tokens at `image_size`."""
        return (self.image_size // (self.patch_size * self.stem_stride)) ** 2

    @nn.compact
    def __call__(
        self,
        x: jnp.ndarray,
        *,
        train: bool = False,
        return_features: bool = False,
        example_index: jnp.ndarray | None = None,
        heads: bool = False,
    ) -> jnp.ndarray | tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
        """Maps images [N, H, W, C] to fp32 logits [N, num_classes] (and features if asked).

        `heads` (with `distill_token` only): both heads' logits [N, 2, num_classes].

        `example_index` [N]: each example's index in the global batch, which its dropout
        and drop-path masks are drawn from (default: its position in `x`).

        Features: `pre_logits` [N, D'] (the head's input), `tokens` [N, T, D] after the final
        norm, `attention` [depth, N, heads, T, T].
        """
        if x.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(
                f"Input images are {x.shape[1]}x{x.shape[2]} but the model was built for "
                f"image_size={self.image_size}; create it with image_size={x.shape[1]} "
                "(square inputs only)."
            )
        x = x.astype(self.dtype)
        if self.resnet_stages is not None:
            x = bit_backbone(x, self.resnet_stages, self.resnet_width, dtype=self.dtype)
        p = self.patch_size
        x = nn.Conv(
            self.hidden_size,
            (p, p),
            strides=(p, p),
            padding="VALID",
            dtype=self.dtype,
            kernel_init=nn.initializers.lecun_normal(),
            name="embedding",
        )(x)
        n, h, w, d = x.shape
        x = x.reshape(n, h * w, d)
        if self.posemb == "sincos2d":
            # Fixed embedding for the patches only; the class token carries no position.
            x = x + jnp.asarray(posemb_sincos_2d(h, w, d), self.dtype)
        if self.pool == "token":
            cls = self.param("cls", nn.initializers.zeros, (1, 1, d), jnp.float32)
            prefix = [cls]
            if self.distill_token:
                prefix.append(self.param("dist", nn.initializers.zeros, (1, 1, d), jnp.float32))
            prefix = jnp.concatenate(prefix, axis=1).astype(x.dtype)
            x = jnp.concatenate([jnp.tile(prefix, [n, 1, 1]), x], axis=1)

        tokens, attention = Encoder(
            depth=self.depth,
            mlp_dim=self.mlp_dim,
            num_heads=self.num_heads,
            learned_posemb=self.posemb == "learn",
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            drop_path=self.drop_path,
            scan=self.scan,
            remat=self.remat,
            gelu_approximate=self.gelu_approximate,
            dtype=self.dtype,
            name="Transformer",
        )(x, train=train, return_attention=return_features, example_index=example_index)

        if self.pool == "token":
            x = tokens[:, 0]
        elif self.pool == "gap":
            x = jnp.mean(tokens, axis=1)
        else:
            x = MAPHead(
                self.num_heads,
                self.mlp_dim,
                dtype=self.dtype,
                gelu_approximate=self.gelu_approximate,
                name="MAPHead_0",
            )(tokens)
        if self.representation_size is not None:
            pre_logits = nn.Dense(self.representation_size, dtype=self.dtype, name="pre_logits")
            x = nn.tanh(pre_logits(x))
        # Zero head: fine-tuning starts from uniform predictions (reference ViT recipe).
        features = {"tokens": tokens, "attention": attention} if return_features else None
        out = classifier_output(x, self.num_classes, self.dtype, features, zero_head=True)
        if not self.distill_token:
            return out
        dist = tokens[:, 1]
        if self.representation_size is not None:
            dist = nn.tanh(pre_logits(dist))
        zeros = nn.initializers.zeros
        head_dist = nn.Dense(
            self.num_classes, dtype=self.dtype, kernel_init=zeros, bias_init=zeros, name="head_dist"
        )
        logits = out[0] if return_features else out
        both = jnp.stack([logits, head_dist(dist).astype(jnp.float32)], axis=1)
        if heads:
            return (both, out[1]) if return_features else both
        return (both.mean(axis=1), out[1]) if return_features else both.mean(axis=1)


def _register_vits() -> None:
    for size, (hidden, depth, heads, mlp) in VIT_SIZES.items():
        for patch in PATCH_SIZES:
            register(
                f"vit_{size}{patch}",
                partial(
                    VisionTransformer,
                    hidden_size=hidden,
                    depth=depth,
                    num_heads=heads,
                    mlp_dim=mlp,
                    patch_size=patch,
                ),
            )


def _hybrid(size: str, stages: tuple[int, ...], patch: int) -> Any:
    hidden, depth, heads, mlp = VIT_SIZES[size]
    return partial(
        VisionTransformer,
        hidden_size=hidden,
        depth=depth,
        num_heads=heads,
        mlp_dim=mlp,
        patch_size=patch,
        resnet_stages=stages,
    )


_register_vits()
# ResNet-50 with (3, 4, 9) units gives stride 16, so 1x1 patches make it "/16".
register("r50_vit_b16", _hybrid("b", (3, 4, 9), 1))
# The full ResNet-50 (3, 4, 6, 3) gives stride 32.
register("r50_vit_l32", _hybrid("l", (3, 4, 6, 3), 1))
# Root only (stride 4) with 8x8 patches, as the reference R+ViT-Ti_16 config; note that the
# reference root includes the max-pool, so the effective patch is 32 pixels, not 16.
register("r_ti16", _hybrid("ti", (), 8))
