"""A tfds builder for small labelled image arrays that ship inside an installed package."""

import numpy as np
import tensorflow_datasets as tfds

from jaxvision.data.builders.split import stratified_split


class LabelledArrays(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Ten-class grayscale images from `load_arrays()`, split once per class with a fixed seed.

    A subclass names its images' shape, how many of each class go to test, its homepage
    and how to load the arrays; its docstring is the dataset's description.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    IMAGE_SHAPE: tuple[int, int, int]
    TEST_PER_CLASS: int
    HOMEPAGE: str

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns (uint8 images [N, *IMAGE_SHAPE], int64 labels [N])."""
        raise NotImplementedError(f"{type(self).__name__} must define load_arrays()")

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            # The docstring, on one line: what the description said before it was shared.
            description=" ".join(f"{type(self).__doc__} Needs no download.".split()),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=self.IMAGE_SHAPE),
                    "label": tfds.features.ClassLabel(names=[str(i) for i in range(10)]),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=self.HOMEPAGE,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        images, labels = self.load_arrays()
        train_idx, test_idx = stratified_split(labels, test_per_class=self.TEST_PER_CLASS, seed=0)
        return {
            "train": self._generate_examples(images[train_idx], labels[train_idx], train_idx),
            "test": self._generate_examples(images[test_idx], labels[test_idx], test_idx),
        }

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray, ids: np.ndarray):
        # The example's index in the source arrays is its key, so splits are stable.
        for image, label, i in zip(images, labels, ids, strict=True):
            yield int(i), {"image": image, "label": int(label)}
