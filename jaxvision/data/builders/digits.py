"""`digits`: the 1,797 8x8 handwritten digits shipped by scikit-learn."""

import numpy as np
import tensorflow_datasets as tfds

from jaxvision.data.builders.split import stratified_split


class Digits(tfds.core.GeneratorBasedBuilder):
    """UCI 8x8 digits (values 0..16 rescaled to 0..255), stratified split, 30 test per class."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=(
                "The 1,797 8x8 grayscale digits of sklearn.datasets.load_digits, pixel values "
                "0..16 scaled to 0..255, split once with a fixed seed into 1,497 train and "
                "300 test images (30 per class). Needs no download."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(names=[str(i) for i in range(10)]),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        from sklearn.datasets import load_digits

        data = load_digits()
        images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        labels = data.target.astype(np.int64)
        train_idx, test_idx = stratified_split(labels, test_per_class=30, seed=0)
        return {
            "train": self._generate_examples(images[train_idx], labels[train_idx], train_idx),
            "test": self._generate_examples(images[test_idx], labels[test_idx], test_idx),
        }

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray, ids: np.ndarray):
        for image, label, i in zip(images, labels, ids, strict=True):
            yield int(i), {"image": image, "label": int(label)}
