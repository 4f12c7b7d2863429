"""Geometric and colour augmentations: inception_crop, rotate, color_jitter, random_erasing.

All are stateless in the per-example seed (see `image_ops.py`), so resumed runs repeat
them exactly.
"""

import math

import tensorflow as tf

from jaxvision.data import image_ops
from jaxvision.data.image_ops import Op, check, positive_int, probability, register, split_seed


def transform(
    image: tf.Tensor, matrix: tf.Tensor, fill: float = 0.0, interpolation: str = "BILINEAR"
) -> tf.Tensor:
    """Applies a projective transform [a0,a1,a2,b0,b1,b2,c0,c1] mapping output to input pixels."""
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=tf.reshape(tf.cast(matrix, tf.float32), [1, 8]),
        output_shape=tf.shape(image)[:2],
        fill_value=tf.cast(fill, tf.float32),
        interpolation=interpolation,
        fill_mode="CONSTANT",
    )[0]
    out.set_shape(image.shape)
    return out


def rotation_matrix(image: tf.Tensor, degrees: tf.Tensor) -> tf.Tensor:
    """The transform rotating `image` by `degrees` about its centre."""
    theta = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    h = tf.cast(tf.shape(image)[0], tf.float32)
    w = tf.cast(tf.shape(image)[1], tf.float32)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    c, s = tf.cos(theta), tf.sin(theta)
    return tf.stack([c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy, 0.0, 0.0])


@register("rotate")
def rotate(degrees: float = 15.0, fill: float = 0.0) -> Op:
    """Rotates by an angle drawn uniformly from [-degrees, degrees]; corners get `fill`."""
    check(
        isinstance(degrees, int | float) and 0 <= degrees <= 180,
        "rotate",
        f"degrees must be in [0, 180], got {degrees!r}.",
    )

    def fn(image, seed):
        angle = tf.random.stateless_uniform([], seed, -degrees, degrees)
        return transform(image, rotation_matrix(image, angle), fill)

    return fn


class InceptionCrop:
    """Random resized crop (Szegedy et al.): a random area and aspect ratio, resized to size."""

    def __init__(
        self,
        size: int,
        area_min: float = 0.08,
        area_max: float = 1.0,
        ratio_min: float = 3 / 4,
        ratio_max: float = 4 / 3,
    ):
        self.size = positive_int("inception_crop", "size", size)
        check(
            0 < area_min <= area_max <= 1,
            "inception_crop",
            f"need 0 < area_min <= area_max <= 1, got {area_min}, {area_max}.",
        )
        check(0 < ratio_min <= ratio_max, "inception_crop", "need 0 < ratio_min <= ratio_max.")
        self.area = (float(area_min), float(area_max))
        self.ratio = (float(ratio_min), float(ratio_max))

    def window(self, shape: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(begin [y, x], size [h, w]) of the crop for an image of `shape` [H, W, C]."""
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape,
            tf.zeros([0, 0, 4], tf.float32),
            seed=seed,
            min_object_covered=0.0,
            aspect_ratio_range=self.ratio,
            area_range=self.area,
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        return begin[:2], size[:2]

    def finish(self, crop: tf.Tensor) -> tf.Tensor:
        """Resizes the cropped window to size x size."""
        out = image_ops.resize_to(crop, (self.size, self.size), "bilinear")
        out.set_shape([self.size, self.size, crop.shape[-1]])
        return out

    def __call__(self, image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        begin, size = self.window(tf.shape(image), seed)
        return self.finish(tf.slice(image, [begin[0], begin[1], 0], [size[0], size[1], -1]))


register("inception_crop")(InceptionCrop)


def decode_inception_crop(crop: InceptionCrop, channels: int = 3) -> Op:
    """decode|inception_crop fused: a JPEG decodes only the cropped window."""
    check(channels in (1, 3), "decode", f"channels must be 1 or 3, got {channels!r}.")

    def jpeg(data, seed):
        begin, size = crop.window(tf.image.extract_jpeg_shape(data), seed)
        window = tf.concat([begin, size], 0)
        image = tf.image.decode_and_crop_jpeg(data, window, channels=3)
        return image if channels == 3 else tf.image.rgb_to_grayscale(image)

    def fn(image, seed):
        if image.dtype != tf.string:
            return crop(image_ops.decode(channels)(image, seed), seed)
        out = tf.cond(
            tf.io.is_jpeg(image),
            lambda: jpeg(image, seed),
            lambda: crop(image_ops.decode_bytes(image, channels), seed),
        )
        out.set_shape([None, None, channels])
        return crop.finish(out)

    return fn


@register("color_jitter")
def color_jitter(
    brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4, hue: float = 0.0
) -> Op:
    """Random brightness, contrast, saturation and hue changes of the given strengths."""
    for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        check(0 <= v <= 1, "color_jitter", f"{name} must be in [0, 1], got {v!r}.")
    check(0 <= hue <= 0.5, "color_jitter", f"hue must be in [0, 0.5], got {hue!r}.")

    def fn(image, seed):
        s = split_seed(seed, 4)
        x = tf.image.convert_image_dtype(image, tf.float32)
        if brightness:
            x = tf.image.stateless_random_brightness(x, brightness, s[0])
        if contrast:
            x = tf.image.stateless_random_contrast(x, 1 - contrast, 1 + contrast, s[1])
        if image.shape[-1] == 3 and saturation:
            x = tf.image.stateless_random_saturation(x, 1 - saturation, 1 + saturation, s[2])
        if image.shape[-1] == 3 and hue:
            x = tf.image.stateless_random_hue(x, hue, s[3])
        return tf.image.convert_image_dtype(tf.clip_by_value(x, 0.0, 1.0), image.dtype, True)

    return fn


@register("random_erasing")
def random_erasing(
    prob: float = 0.25,
    area_min: float = 0.02,
    area_max: float = 1 / 3,
    ratio_min: float = 0.3,
    ratio_max: float = 3.3,
) -> Op:
    """With probability `prob`, fills a random rectangle with noise (Zhong et al., 2017).

    Float images (after normalize) get standard normal noise, uint8 images uniform pixels.
    """
    prob = probability("random_erasing", "prob", prob)
    check(0 < area_min <= area_max <= 1, "random_erasing", "need 0 < area_min <= area_max <= 1.")
    check(0 < ratio_min <= ratio_max, "random_erasing", "need 0 < ratio_min <= ratio_max.")

    def fn(image, seed):
        s = split_seed(seed, 6)
        shape = tf.shape(image)
        h, w = shape[0], shape[1]
        hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
        area = tf.random.stateless_uniform([], s[0], area_min, area_max) * hf * wf
        ratio = tf.exp(
            tf.random.stateless_uniform([], s[1], math.log(ratio_min), math.log(ratio_max))
        )
        eh = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(area * ratio)), tf.int32), 1, h)
        ew = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(area / ratio)), tf.int32), 1, w)
        top = tf.random.stateless_uniform([], s[2], 0, h - eh + 1, tf.int32)
        left = tf.random.stateless_uniform([], s[3], 0, w - ew + 1, tf.int32)
        rows = tf.range(h)[:, None, None]
        cols = tf.range(w)[None, :, None]
        inside = (rows >= top) & (rows < top + eh) & (cols >= left) & (cols < left + ew)
        inside &= tf.random.stateless_uniform([], s[4]) < prob
        if image.dtype == tf.uint8:
            noise = tf.random.stateless_uniform(shape, s[5], 0, 256, tf.int32)
        else:
            noise = tf.random.stateless_normal(shape, s[5])
        return tf.where(inside, tf.cast(noise, image.dtype), image)

    return fn
