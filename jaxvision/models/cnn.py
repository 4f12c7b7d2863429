"""The classic LeNet-style CNN: conv-pool-conv-pool-fc-fc-fc, any input size and width."""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxvision.models.layers import ExampleDropout, classifier_output
from jaxvision.models.registry import register


class Cnn(nn.Module):
    """Two 5x5 conv + max-pool stages, then three dense layers (the last is the head)."""

    num_classes: int
    features: Sequence[int] = (32, 64)
    hidden: Sequence[int] = (256, 128)
    dropout: float = 0.0
    dtype: jnp.dtype = jnp.float32

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

        `example_index` [N]: each example's index in the global batch, which its dropout
        masks are drawn from (default: its position in `x`).

        Features: `feature_map` [N, h, w, C'], the last conv's activations before pooling
        (what Grad-CAM weighs), and `pre_logits` [N, D] (the head's input).
        """
        x = x.astype(self.dtype)
        for i, f in enumerate(self.features):
            x = nn.Conv(f, (5, 5), padding="SAME", dtype=self.dtype, name=f"conv{i}")(x)
            x = nn.relu(x)
            if return_features and i == len(self.features) - 1:
                # A no-op unless a "perturbations" collection is passed: then its gradient
                # is the gradient w.r.t. this map (how Grad-CAM reads it).
                x = self.perturb("feature_map", x)
                feature_map = x
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        for i, h in enumerate(self.hidden):
            x = nn.relu(nn.Dense(h, dtype=self.dtype, name=f"fc{i}")(x))
            x = ExampleDropout(self.dropout)(
                x, deterministic=not train, example_index=example_index
            )
        features = {"feature_map": feature_map} if return_features else None
        return classifier_output(x, self.num_classes, self.dtype, features)


register("cnn", Cnn)
