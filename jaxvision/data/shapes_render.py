"""Procedural coloured-shape images: a dataset that needs no download, at any size."""

import numpy as np

SHAPE_NAMES = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "diamond",
    "horizontal_bar",
    "vertical_bar",
    "ellipse",
    "checker",
)


def _shape_mask(kind: int, yy: np.ndarray, xx: np.ndarray, r: float) -> np.ndarray:
    """Boolean mask of shape `kind` of radius `r` on centred coordinates (yy, xx)."""
    ay, ax = np.abs(yy), np.abs(xx)
    name = SHAPE_NAMES[kind]
    if name == "circle":
        return yy**2 + xx**2 <= r**2
    if name == "square":
        return (ay <= r * 0.8) & (ax <= r * 0.8)
    if name == "triangle":
        return (yy <= r * 0.8) & (yy >= -r) & (ax <= (yy + r) * 0.55)
    if name == "cross":
        w = r * 0.3
        return ((ay <= w) & (ax <= r)) | ((ax <= w) & (ay <= r))
    if name == "ring":
        d = yy**2 + xx**2
        return (d <= r**2) & (d >= (0.55 * r) ** 2)
    if name == "diamond":
        return ay + ax <= r
    if name == "horizontal_bar":
        return (ay <= r * 0.3) & (ax <= r)
    if name == "vertical_bar":
        return (ax <= r * 0.3) & (ay <= r)
    if name == "ellipse":
        return (yy / (0.5 * r)) ** 2 + (xx / r) ** 2 <= 1.0
    # checker: a 2x2 checkerboard inside the square.
    inside = (ay <= r * 0.8) & (ax <= r * 0.8)
    return inside & ((yy >= 0) ^ (xx >= 0))


def render_shapes(
    num: int, *, image_size: int, num_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Returns `num` uint8 RGB images [num, S, S, 3] and int labels, deterministic in `seed`.

    Each image holds one filled shape (its class) of random size, position and bright
    colour on a noisy background of a random dark colour.
    """
    images, labels, _ = render_shapes_with_masks(
        num, image_size=image_size, num_classes=num_classes, seed=seed
    )
    return images, labels


def render_shapes_with_masks(
    num: int, *, image_size: int, num_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`render_shapes` plus each image's boolean shape mask [num, S, S] (to score explanations)."""
    if not 2 <= num_classes <= len(SHAPE_NAMES):
        raise ValueError(
            f"shapes supports 2..{len(SHAPE_NAMES)} classes, got num_classes={num_classes}."
        )
    if image_size < 8:
        raise ValueError(f"shapes needs image_size >= 8, got {image_size}.")
    rng = np.random.default_rng(seed)
    labels = np.arange(num) % num_classes
    rng.shuffle(labels)
    images = np.empty((num, image_size, image_size, 3), np.uint8)
    masks = np.empty((num, image_size, image_size), bool)
    grid = np.arange(image_size, dtype=np.float32) + 0.5
    for i, label in enumerate(labels):
        r = rng.uniform(0.2, 0.4) * image_size
        cy, cx = rng.uniform(r, image_size - r, size=2)
        yy, xx = np.meshgrid(grid - cy, grid - cx, indexing="ij")
        masks[i] = _shape_mask(int(label), yy, xx, r)
        # Random hues, fixed polarity: every channel of the shape is brighter than the
        # background's, so the outline is an edge of one sign that a first layer can detect
        # and colour alone says nothing about the class.
        background = rng.uniform(0, 100, size=3)
        foreground = rng.uniform(155, 255, size=3)
        img = np.where(masks[i][..., None], foreground, background)
        img = img + rng.normal(0, 12, size=img.shape)
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64), masks
