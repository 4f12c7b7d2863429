"""The classic LeNet-style CNN: conv-pool-conv-pool-fc-fc-fc, any input size and width."""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxvision.models.registry import register


class Cnn(nn.Module):
    """Two 5x5 conv + max-pool stages, then three dense layers (the last is the head)."""

    num_classes: int
    features: Sequence[int] = (32, 64)
    hidden: Sequence[int] = (256, 128)
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, *, train: bool = False) -> jnp.ndarray:
        x = x.astype(self.dtype)
        for i, f in enumerate(self.features):
            x = nn.Conv(f, (5, 5), padding="SAME", dtype=self.dtype, name=f"conv{i}")(x)
            x = nn.relu(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        for i, h in enumerate(self.hidden):
            x = nn.relu(nn.Dense(h, dtype=self.dtype, name=f"fc{i}")(x))
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)


register("cnn", Cnn)
