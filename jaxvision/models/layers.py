"""Building blocks shared by the models: per-example dropout and drop-path, attention, MLP,
position embeddings.

Every random mask is drawn per example from (the layer's rng, the example's index in the
global batch), so training does not depend on how a batch is split over devices,
processes, accumulation steps or branches: the same example gets the same mask.

Submodule and parameter names follow google-research/vision_transformer so that the
published .npz checkpoints map 1:1 onto the trees these layers create.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def example_indices(x: jnp.ndarray, example_index: jnp.ndarray | None) -> jnp.ndarray:
    """`example_index` [N], or the examples' positions 0..N-1 in `x` when none is given."""
    if example_index is None:
        return jnp.arange(x.shape[0], dtype=jnp.int32)
    return example_index


def example_keep_mask(
    rng: jax.Array, example_index: jnp.ndarray, keep_prob: float | jnp.ndarray, shape: tuple
) -> jnp.ndarray:
    """Bernoulli(keep_prob) masks [N, *shape], example i's drawn from fold_in(rng, index[i])."""

    def draw(index: jnp.ndarray) -> jnp.ndarray:
        return jax.random.bernoulli(jax.random.fold_in(rng, index), keep_prob, shape)

    return jax.vmap(draw)(example_index)


class ExampleDropout(nn.Module):
    """Dropout (as `nn.Dropout`) whose mask is a function of the example, not of the batch."""

    rate: float

    @nn.compact
    def __call__(
        self, x: jnp.ndarray, *, deterministic: bool, example_index: jnp.ndarray | None = None
    ) -> jnp.ndarray:
        """Zeroes each element of `x` [N, ...] with probability `rate` (scaled to keep the mean)."""
        if deterministic or self.rate == 0.0:
            return x
        keep_prob = 1.0 - self.rate
        index = example_indices(x, example_index)
        keep = example_keep_mask(self.make_rng("dropout"), index, keep_prob, x.shape[1:])
        return jnp.where(keep, x / keep_prob, 0.0).astype(x.dtype)


class MultiHeadDotProductAttention(nn.Module):
    """Multi-head attention with `query/key/value/out` DenseGeneral params, as in Flax/ViT.

    Calls `jax.nn.dot_product_attention` (fused kernels where the backend has them) unless
    the attention weights are needed, either to return them or to apply attention dropout.
    """

    num_heads: int
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0
    kernel_init: Any = nn.initializers.xavier_uniform()

    @nn.compact
    def __call__(
        self,
        inputs_q: jnp.ndarray,
        inputs_kv: jnp.ndarray,
        *,
        deterministic: bool = True,
        return_weights: bool = False,
        example_index: jnp.ndarray | None = None,
    ) -> tuple[jnp.ndarray, jnp.ndarray | None]:
        """Attends `inputs_q` [N, Tq, D] to `inputs_kv` [N, Tk, D]; weights are [N, H, Tq, Tk]."""
        features = inputs_q.shape[-1]
        if features % self.num_heads:
            raise ValueError(
                f"Attention width {features} is not divisible by num_heads={self.num_heads}."
            )
        head_dim = features // self.num_heads

        def dense(name: str) -> nn.DenseGeneral:
            return nn.DenseGeneral(
                (self.num_heads, head_dim),
                dtype=self.dtype,
                kernel_init=self.kernel_init,
                name=name,
            )

        q = dense("query")(inputs_q)
        k = dense("key")(inputs_kv)
        v = dense("value")(inputs_kv)

        use_dropout = not deterministic and self.dropout_rate > 0.0
        weights = None
        if return_weights or use_dropout:
            q = q / jnp.sqrt(head_dim).astype(q.dtype)
            logits = jnp.einsum("nqhd,nkhd->nhqk", q, k)
            # Softmax in fp32: bf16 logits lose the small differences between keys.
            weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
            probs = weights
            if use_dropout:
                index = example_indices(probs, example_index)
                keep_prob = 1.0 - self.dropout_rate
                rng = self.make_rng("dropout")
                keep = example_keep_mask(rng, index, keep_prob, probs.shape[1:])
                probs = jnp.where(keep, probs / (1.0 - self.dropout_rate), 0.0)
            y = jnp.einsum("nhqk,nkhd->nqhd", probs.astype(v.dtype), v)
        else:
            y = jax.nn.dot_product_attention(q, k, v)

        out = nn.DenseGeneral(
            features,
            axis=(-2, -1),
            dtype=self.dtype,
            kernel_init=self.kernel_init,
            name="out",
        )(y)
        return out, weights


class MlpBlock(nn.Module):
    """Transformer feed-forward block: Dense -> GELU -> dropout -> Dense -> dropout.

    `gelu_approximate=True` is the tanh GELU of the published JAX ViT checkpoints; timm
    (PyTorch) weights were trained with the exact (erf) GELU: use False for those.
    """

    mlp_dim: int
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.0
    gelu_approximate: bool = True

    @nn.compact
    def __call__(
        self,
        x: jnp.ndarray,
        *,
        deterministic: bool = True,
        example_index: jnp.ndarray | None = None,
    ) -> jnp.ndarray:
        """Maps [N, ..., D] to [N, ..., D] through a hidden layer of width `mlp_dim`."""
        # Tiny bias noise instead of zeros, as in the reference ViT initialisation.
        dense = dict(
            dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.normal(stddev=1e-6),
        )
        # The Dense layers see [tokens, D]. On [N, T, D] the weight gradients contract two
        # axes, and XLA:CPU first copies each activation gradient into a transposed layout:
        # flat, the ViT-Ti/4 train step is 9-13% faster (docs/performance.md).
        shape = x.shape

        def drop(y: jnp.ndarray) -> jnp.ndarray:
            if deterministic or self.dropout_rate == 0.0:
                return y
            # Per example, so on the [N, ..., width] view of the flat activations.
            y = y.reshape(*shape[:-1], y.shape[-1])
            y = ExampleDropout(self.dropout_rate)(
                y, deterministic=deterministic, example_index=example_index
            )
            return y.reshape(-1, y.shape[-1])

        x = x.reshape(-1, shape[-1])
        x = nn.Dense(self.mlp_dim, **dense)(x)
        x = nn.gelu(x, approximate=self.gelu_approximate)
        x = drop(x)
        x = nn.Dense(shape[-1], **dense)(x)
        x = drop(x)
        return x.reshape(shape)


def drop_path(
    x: jnp.ndarray,
    rate: float | jnp.ndarray,
    rng: jax.Array,
    *,
    deterministic: bool,
    example_index: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Stochastic depth: zeroes whole examples of a residual branch with probability `rate`.

    `rate` may be a traced scalar so that a scanned stack can give each layer its own rate.
    """
    if deterministic:
        return x
    keep_prob = 1.0 - rate
    index = example_indices(x, example_index)
    keep = example_keep_mask(rng, index, keep_prob, ())
    keep = keep.reshape((x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x / keep_prob, 0.0).astype(x.dtype)


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 2-D sine-cosine position embedding [1, h*w, width] (MoCo v3 / big_vision)."""
    if width % 4:
        raise ValueError(f"posemb='sincos2d' needs a width divisible by 4, got {width}.")
    y, x = np.mgrid[:h, :w]
    quarter = width // 4
    omega = np.arange(quarter) / max(quarter - 1, 1)
    omega = 1.0 / (temperature**omega)
    y = np.einsum("m,d->md", y.flatten(), omega)
    x = np.einsum("m,d->md", x.flatten(), omega)
    pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
    return pe[None].astype(np.float32)


class AddPositionEmbs(nn.Module):
    """Adds a learned position embedding `pos_embedding` [1, T, D] (init normal 0.02, BERT)."""

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """Adds the embedding to tokens [N, T, D]."""
        pe = self.param(
            "pos_embedding", nn.initializers.normal(stddev=0.02), (1, *x.shape[1:]), jnp.float32
        )
        return x + pe.astype(x.dtype)


class MAPHead(nn.Module):
    """Multihead attention pooling: a learned probe attends over the tokens (big_vision)."""

    num_heads: int
    mlp_dim: int
    dtype: Dtype = jnp.float32
    gelu_approximate: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """Pools tokens [N, T, D] into [N, D]."""
        n, _, d = x.shape
        probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, d), jnp.float32)
        probe = jnp.tile(probe.astype(x.dtype), [n, 1, 1])
        x, _ = MultiHeadDotProductAttention(self.num_heads, dtype=self.dtype)(probe, x)
        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype)(x)
        x = x + MlpBlock(self.mlp_dim, dtype=self.dtype, gelu_approximate=self.gelu_approximate)(y)
        return x[:, 0]


def classifier_output(
    pre_logits: jnp.ndarray,
    num_classes: int,
    dtype: Dtype,
    features: dict[str, jnp.ndarray] | None,
    *,
    zero_head: bool = False,
) -> jnp.ndarray | tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """The `head` Dense on `pre_logits` -> fp32 logits, with the features if asked (not None).

    Called inside a model's compact `__call__`, so `head` is that model's parameter.
    """
    zeros = nn.initializers.zeros
    inits = {"kernel_init": zeros, "bias_init": zeros} if zero_head else {}
    logits = nn.Dense(num_classes, dtype=dtype, name="head", **inits)(pre_logits)
    logits = logits.astype(jnp.float32)
    if features is None:
        return logits
    as_f32 = {k: v.astype(jnp.float32) for k, v in features.items()}
    return logits, {**as_f32, "pre_logits": pre_logits.astype(jnp.float32)}
