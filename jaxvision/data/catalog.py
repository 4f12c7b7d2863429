"""Dataset presets: the tfds name, splits, image size and default preprocessing of each."""

import dataclasses

import ml_collections


@dataclasses.dataclass(frozen=True)
class Preset:
    """What jaxvision knows about one dataset name."""

    tfds_name: str
    train_split: str
    eval_split: str
    image_size: int  # the stored size; also the default model input size
    channels: int
    train_pp: str  # with "{size}" for the configured image size
    eval_pp: str
    offline: bool = False  # built from data installed with jaxvision's dependencies


def _mnist_like(name: str, offline: bool, size: int = 28, test: str = "test") -> Preset:
    return Preset(
        tfds_name=name,
        train_split="train",
        eval_split=test,
        image_size=size,
        channels=1,
        train_pp="decode(1)|resize({size})|random_crop({size},2)|value_range(0,1)",
        eval_pp="decode(1)|resize({size})|value_range(0,1)",
        offline=offline,
    )


def _cifar_like(name: str, stats: str) -> Preset:
    return Preset(
        tfds_name=name,
        train_split="train",
        eval_split="test",
        image_size=32,
        channels=3,
        train_pp=f"decode|resize({{size}})|random_crop({{size}},4)|flip_lr|normalize({stats})",
        eval_pp=f"decode|resize({{size}})|normalize({stats})",
    )


PRESETS: dict[str, Preset] = {
    "mnist5k": _mnist_like("mnist5k", offline=True),
    "digits": Preset(
        tfds_name="digits",
        train_split="train",
        eval_split="test",
        image_size=8,
        channels=1,
        train_pp="decode(1)|resize({size})|random_crop({size},1)|value_range(0,1)",
        eval_pp="decode(1)|resize({size})|value_range(0,1)",
        offline=True,
    ),
    "shapes": Preset(
        tfds_name="shapes",
        train_split="train",
        eval_split="test",
        image_size=32,
        channels=3,
        train_pp="decode|resize({size})|flip_lr|value_range(-1,1)",
        eval_pp="decode|resize({size})|value_range(-1,1)",
        offline=True,
    ),
    "mnist": _mnist_like("mnist", offline=False),
    "cifar10": _cifar_like("cifar10", "cifar10"),
    "cifar100": _cifar_like("cifar100", "cifar100"),
}


def names() -> list[str]:
    """Every dataset preset name."""
    return sorted(PRESETS)


def is_offline(name: str) -> bool:
    """True for datasets that need no download."""
    return name in PRESETS and PRESETS[name].offline


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A dataset as one run uses it: resolved from the preset and the config's overrides."""

    name: str
    tfds_name: str
    builder_kwargs: dict
    train_split: str
    eval_split: str
    image_size: int
    train_pp: str
    eval_pp: str


def resolve(cfg: ml_collections.ConfigDict) -> DatasetSpec:
    """Combines the preset for `cfg.name` with the config's non-empty overrides."""
    name = cfg.name
    preset = PRESETS.get(name)
    if preset is None:
        import tensorflow_datasets as tfds

        if name.split("/")[0].split(":")[0] not in tfds.list_builders():
            raise ValueError(
                f"Unknown dataset.name {name!r}. Known presets: {', '.join(names())}; "
                "or any tensorflow-datasets name (see `tfds.list_builders()`)."
            )
        missing = [
            k
            for k in ("train_split", "eval_split", "image_size", "train_pp", "eval_pp")
            if not cfg[k]
        ]
        if missing:
            raise ValueError(
                f"dataset.name {name!r} is not a preset, so the config must set "
                f"{', '.join('dataset.' + k for k in missing)}."
            )
        preset = Preset(
            name, cfg.train_split, cfg.eval_split, cfg.image_size, 3, cfg.train_pp, cfg.eval_pp
        )
    size = cfg.image_size or preset.image_size
    builder_kwargs = {}
    if preset.tfds_name == "shapes":
        from jaxvision.data.builders import ShapesConfig

        builder_kwargs["config"] = ShapesConfig.make(
            image_size=size, num_classes=cfg.num_classes or 10
        )
    return DatasetSpec(
        name=name,
        tfds_name=preset.tfds_name,
        builder_kwargs=builder_kwargs,
        train_split=cfg.train_split or preset.train_split,
        eval_split=cfg.eval_split or preset.eval_split,
        image_size=size,
        train_pp=(cfg.train_pp or preset.train_pp).format(size=size),
        eval_pp=(cfg.eval_pp or preset.eval_pp).format(size=size),
    )
