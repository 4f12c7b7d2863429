"""Mixup and CutMix on device, inside the jitted train step.

One mixing coefficient per global batch, each example paired with the batch reversed (as
in timm's "batch" mode). Everything is drawn from one key over global arrays, so the
result does not depend on how many devices hold the batch.
"""

import jax
import jax.numpy as jnp


def _mixup(images, targets, lam):
    mixed = lam * images + (1.0 - lam) * images[::-1]
    return mixed.astype(images.dtype), lam * targets + (1.0 - lam) * targets[::-1]


def _cutmix(rng, images, targets, lam):
    """Pastes a box covering ~(1 - lam) of the image from the paired example."""
    _, h, w, _ = images.shape
    cut = jnp.sqrt(1.0 - lam)
    cy, cx = jax.random.uniform(rng, (2,))
    y0 = jnp.clip(jnp.round((cy - cut / 2) * h), 0, h)
    y1 = jnp.clip(jnp.round((cy + cut / 2) * h), 0, h)
    x0 = jnp.clip(jnp.round((cx - cut / 2) * w), 0, w)
    x1 = jnp.clip(jnp.round((cx + cut / 2) * w), 0, w)
    rows = jnp.arange(h)[:, None]
    cols = jnp.arange(w)[None, :]
    box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    mixed = jnp.where(box[None, :, :, None], images[::-1], images)
    # The label weight is the pasted area actually kept after clipping to the image.
    kept = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    return mixed, kept * targets + (1.0 - kept) * targets[::-1]


def mix_batch(
    rng: jax.Array,
    images: jax.Array,
    targets: jax.Array,
    *,
    mixup_alpha: float,
    cutmix_alpha: float,
    switch_prob: float = 0.5,
) -> tuple[jax.Array, jax.Array]:
    """Mixed images [N, H, W, C] and soft targets [N, K]; identity when both alphas are 0."""
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images, targets
    k_switch, k_mix, k_cut, k_box = jax.random.split(rng, 4)
    if cutmix_alpha <= 0:
        return _mixup(images, targets, jax.random.beta(k_mix, mixup_alpha, mixup_alpha))
    cut = _cutmix(k_box, images, targets, jax.random.beta(k_cut, cutmix_alpha, cutmix_alpha))
    if mixup_alpha <= 0:
        return cut
    mixed = _mixup(images, targets, jax.random.beta(k_mix, mixup_alpha, mixup_alpha))
    use_cut = jax.random.uniform(k_switch) < switch_prob
    return jax.tree.map(lambda a, b: jnp.where(use_cut, a, b), cut, mixed)
