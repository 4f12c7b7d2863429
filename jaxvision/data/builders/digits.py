"""`digits`: the 1,797 8x8 handwritten digits shipped by scikit-learn."""

import numpy as np

from jaxvision.data.builders.labelled_arrays import LabelledArrays


class Digits(LabelledArrays):
    """The 1,797 8x8 grayscale digits of sklearn.datasets.load_digits, pixel values 0..16
    scaled to 0..255, split once with a fixed seed into 1,497 train and 300 test images
    (30 per class)."""

    IMAGE_SHAPE = (8, 8, 1)
    TEST_PER_CLASS = 30
    HOMEPAGE = "https://archive.ics.uci.edu/dataset/80"

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The scikit-learn digits as uint8 [1797, 8, 8, 1] images and int64 labels."""
        from sklearn.datasets import load_digits

        data = load_digits()
        images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        return images, data.target.astype(np.int64)
