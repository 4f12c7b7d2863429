"""`shapes`: procedural coloured shapes, any image size and number of classes, by seed."""

import dataclasses

import tensorflow_datasets as tfds

from jaxvision.data.shapes_render import SHAPE_NAMES, render_shapes

_MADE: dict[str, "ShapesConfig"] = {}
# Bumped whenever the rendering changes, so copies prepared by an older release are
# regenerated instead of silently reused.
_VERSION = tfds.core.Version("2.0.0")


@dataclasses.dataclass(eq=False)
class ShapesConfig(tfds.core.BuilderConfig):
    """Image size, class count, split sizes and seed of one `shapes` variant."""

    image_size: int = 32
    num_classes: int = 10
    num_train: int = 5000
    num_test: int = 1000
    seed: int = 0

    @classmethod
    def make(
        cls,
        image_size: int = 32,
        num_classes: int = 10,
        num_train: int = 5000,
        num_test: int = 1000,
        seed: int = 0,
    ) -> "ShapesConfig":
        """A config whose name encodes every field, so each variant is prepared once."""
        name = f"{image_size}px_{num_classes}c_{num_train}_{num_test}_s{seed}"
        # tfds rejects a second, distinct config object under a registered name: reuse it.
        if name in _MADE:
            return _MADE[name]
        _MADE[name] = cls(
            name=name,
            version=_VERSION,
            image_size=image_size,
            num_classes=num_classes,
            num_train=num_train,
            num_test=num_test,
            seed=seed,
        )
        return _MADE[name]


class Shapes(tfds.core.GeneratorBasedBuilder):
    """Filled bright shapes in random hues, sizes and positions over a darker noisy background."""

    VERSION = _VERSION
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "2.0.0": "Shapes brighter than the background in every channel (was: any colours).",
    }
    BUILDER_CONFIGS = [ShapesConfig.make()]

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        size = cfg.image_size
        return self.dataset_info_from_configs(
            description="Procedurally drawn shapes; deterministic in the config's seed.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3)),
                    "label": tfds.features.ClassLabel(names=list(SHAPE_NAMES[: cfg.num_classes])),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        cfg = self.builder_config
        return {
            "train": self._generate_examples(cfg.num_train, cfg.seed),
            "test": self._generate_examples(cfg.num_test, cfg.seed + 1_000_003),
        }

    def _generate_examples(self, num: int, seed: int):
        cfg = self.builder_config
        images, labels = render_shapes(
            num, image_size=cfg.image_size, num_classes=cfg.num_classes, seed=seed
        )
        for i in range(num):
            yield i, {"image": images[i], "label": int(labels[i])}
