"""What the model looks at: attention rollout for ViTs and hybrids, Grad-CAM for CNNs/ResNets.

Both give one map per image at the input's spatial size, scaled to 0..1.
Attention rollout (Abnar & Zuidema, 2020) multiplies the head-averaged attention of
every layer, each mixed with the identity for the residual path. Grad-CAM (Selvaraju
et al., 2017) weighs the last conv feature map's channels by the spatially averaged
gradient of the class score and keeps the positive part.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxvision import backend
from jaxvision.models.cnn import Cnn
from jaxvision.models.resnet import ResNet
from jaxvision.models.resnet_v2 import ResNetV2
from jaxvision.models.vit import VisionTransformer

METHODS = {
    VisionTransformer: "attention_rollout",
    Cnn: "grad_cam",
    ResNet: "grad_cam",
    ResNetV2: "grad_cam",
}


def method_for(model: nn.Module) -> str:
    """The explanation method for this model family; ValueError for unsupported ones."""
    for cls, method in METHODS.items():
        if isinstance(model, cls):
            return method
    raise ValueError(
        f"No explanation method for {type(model).__name__}; supported: "
        f"{', '.join(c.__name__ for c in METHODS)}."
    )


def _normalise(maps: jnp.ndarray) -> jnp.ndarray:
    """Per-map min-max scaling to 0..1 (a constant map becomes all zeros)."""
    low = maps.min(axis=(1, 2), keepdims=True)
    high = maps.max(axis=(1, 2), keepdims=True)
    return (maps - low) / jnp.maximum(high - low, 1e-12)


def _upsample(maps: jnp.ndarray, height: int, width: int) -> jnp.ndarray:
    return jax.image.resize(maps, (maps.shape[0], height, width), method="bilinear")


def rollout(attention: jnp.ndarray, *, num_prefix_tokens: int) -> jnp.ndarray:
    """Relevance of each patch token [N, P] from attention [depth, N, heads, T, T].

    With a class token the relevance is its row of the rolled-out matrix; without one
    (gap/map pooling) it is the mean over all output tokens.
    """
    a = attention.astype(jnp.float32).mean(axis=2)  # [depth, N, T, T]
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)
    a = 0.5 * a + 0.5 * eye  # the residual connection carries half the signal
    a = a / a.sum(axis=-1, keepdims=True)

    def layer(joint, layer_attention):
        return jnp.einsum("nij,njk->nik", layer_attention, joint), None

    joint, _ = jax.lax.scan(layer, jnp.broadcast_to(eye, a.shape[1:]), a)
    if num_prefix_tokens:
        return joint[:, 0, num_prefix_tokens:]
    return joint.mean(axis=1)


def attention_rollout(
    model: VisionTransformer, variables: dict[str, Any], images: jnp.ndarray
) -> jnp.ndarray:
    """Attention-rollout maps [N, H, W] in 0..1 for a ViT or hybrid."""
    _, features = model.apply(variables, images, train=False, return_features=True)
    num_prefix = (2 if model.distill_token else 1) if model.pool == "token" else 0
    relevance = rollout(features["attention"], num_prefix_tokens=num_prefix)
    side = images.shape[1] // (model.patch_size * model.stem_stride)
    grid = relevance.reshape(relevance.shape[0], side, side)
    return _normalise(_upsample(grid, images.shape[1], images.shape[2]))


def grad_cam(
    model: nn.Module, variables: dict[str, Any], images: jnp.ndarray, classes: jnp.ndarray
) -> jnp.ndarray:
    """Grad-CAM maps [N, H, W] in 0..1 for `classes` [N] of a CNN or ResNet."""
    variables = {k: v for k, v in variables.items() if k != "perturbations"}
    _, features = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False, return_features=True), variables, images
    )
    zeros = {"feature_map": jnp.zeros(features["feature_map"].shape, jnp.float32)}

    def class_score(perturbations):
        logits, feats = model.apply(
            {**variables, "perturbations": perturbations},
            images,
            train=False,
            return_features=True,
        )
        # Summing over the batch keeps each image's gradient its own (images are independent).
        score = jnp.take_along_axis(logits, classes[:, None], axis=1).sum()
        return score, feats["feature_map"]

    grads, feature_map = jax.grad(class_score, has_aux=True)(zeros)
    weights = grads["feature_map"].mean(axis=(1, 2))  # [N, C]
    cam = jax.nn.relu(jnp.einsum("nhwc,nc->nhw", feature_map, weights))
    return _normalise(_upsample(cam, images.shape[1], images.shape[2]))


def explainer(model: nn.Module) -> Callable[..., tuple[np.ndarray, str]]:
    """`explain` for `model` with its jitted functions built once: reuse it across batches."""
    method = method_for(model)
    rollout_fn = backend.jit(lambda v, x: attention_rollout(model, v, x))
    logits_fn = backend.jit(lambda v, x: model.apply(v, x, train=False))
    cam_fn = backend.jit(lambda v, x, c: grad_cam(model, v, x, c))

    def run(
        variables: dict[str, Any], images: np.ndarray, classes: np.ndarray | None = None
    ) -> tuple[np.ndarray, str]:
        images = jnp.asarray(images, jnp.float32)
        if method == "attention_rollout":
            return np.asarray(rollout_fn(variables, images)), method
        if classes is None:
            classes = jnp.argmax(logits_fn(variables, images), axis=-1)
        return np.asarray(cam_fn(variables, images, jnp.asarray(classes, jnp.int32))), method

    return run


def explain(
    model: nn.Module,
    variables: dict[str, Any],
    images: np.ndarray,
    classes: np.ndarray | None = None,
) -> tuple[np.ndarray, str]:
    """Maps [N, H, W] in 0..1 and the method's name; Grad-CAM explains `classes` (default top-1).

    Attention rollout is class-agnostic, so `classes` only matters for Grad-CAM.
    """
    return explainer(model)(variables, images, classes)
