"""Dataset presets: the tfds name, splits, classes, image size and preprocessing of each.

Preprocessing strings are templates: `{size}` is the configured image size, `{resize}`
the side to resize to before a central crop (size * 8/7, i.e. 256 for 224), `{norm}`
the preset's normalisation op.
"""

import dataclasses

import ml_collections

FOLDER_PREFIX = "folder:"
# An image folder's size when dataset.image_size is unset and its images were not measured
# (and the cap of the measured size): the natural size of ImageNet-trained models.
FOLDER_DEFAULT_SIZE = 224
# Folders of images up to this side train with low-resolution preprocessing (no crops that
# would cut away a tiny image's edges).
SMALL_FOLDER_SIZE = 64

# Natural-image defaults shared by ImageNet-like presets and image folders.
_INCEPTION_TRAIN = "decode|inception_crop({size})|flip_lr|{norm}"
_CENTRAL_EVAL = "decode|resize_small({resize})|central_crop({size})|{norm}"


@dataclasses.dataclass(frozen=True)
class Preset:
    """What jaxvision knows about one dataset name."""

    tfds_name: str
    train_split: str
    eval_split: str  # validation during training: a held-out slice of train if no val split
    test_split: str  # the split for final numbers (`evaluate --split=...`)
    num_classes: int
    image_size: int  # the default model input size
    channels: int
    normalization: str  # a preprocessing op, substituted for {norm}
    train_pp: str
    eval_pp: str
    offline: bool = False  # built from data installed with jaxvision's dependencies
    prepare: str = ""  # extra preparation steps (manual downloads)


def _small(name: str, classes: int, size: int, channels: int, norm: str, **kw) -> Preset:
    """A low-resolution preset: pad-and-crop training, no crop at eval."""
    decode = "decode(1)" if channels == 1 else "decode"
    flip = kw.pop("flip", True)
    pad = kw.pop("pad", 4 if size >= 32 else 2)
    return Preset(
        tfds_name=name,
        train_split=kw.pop("train_split", "train[:98%]"),
        eval_split=kw.pop("eval_split", "train[98%:]"),
        test_split="test",
        num_classes=classes,
        image_size=size,
        channels=channels,
        normalization=norm,
        train_pp=f"{decode}|resize({{size}})|random_crop({{size}},{pad})"
        + ("|flip_lr" if flip else "")
        + "|{norm}",
        eval_pp=f"{decode}|resize({{size}})|{{norm}}",
        **kw,
    )


def _natural(name: str, classes: int, train: str, val: str, test: str, size: int = 224, **kw):
    """A photo preset: inception crop + flip for training, resize + central crop for eval."""
    return Preset(
        tfds_name=name,
        train_split=train,
        eval_split=val,
        test_split=test,
        num_classes=classes,
        image_size=size,
        channels=3,
        normalization="normalize(imagenet)",
        train_pp=_INCEPTION_TRAIN,
        eval_pp=_CENTRAL_EVAL,
        **kw,
    )


IMAGENET_PREPARE = (
    "imagenet2012 needs a manual download: register at https://image-net.org/download-images, "
    "download ILSVRC2012_img_train.tar (138 GB) and ILSVRC2012_img_val.tar (6.3 GB) and put "
    "both files, unextracted, in DATA_DIR/downloads/manual/ (DATA_DIR is "
    "--config.dataset.data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets). Then run "
    "`tfds build imagenet2012 --data_dir=DATA_DIR` (about 2-3 h; needs ~300 GB free)."
)

PRESETS: dict[str, Preset] = {
    # Offline: prepared from installed packages or procedurally, no download.
    "mnist5k": _small(
        "mnist5k",
        10,
        28,
        1,
        "value_range(0,1)",
        train_split="train",
        eval_split="test",
        offline=True,
        flip=False,
    ),
    "digits": _small(
        "digits",
        10,
        8,
        1,
        "value_range(0,1)",
        train_split="train",
        eval_split="test",
        offline=True,
        flip=False,
        pad=1,
    ),
    "shapes": Preset(
        tfds_name="shapes",
        train_split="train",
        eval_split="test",
        test_split="test",
        num_classes=10,
        image_size=32,
        channels=3,
        normalization="value_range(-1,1)",
        train_pp="decode|resize({size})|flip_lr|{norm}",
        eval_pp="decode|resize({size})|{norm}",
        offline=True,
    ),
    "mnist": _small("mnist", 10, 28, 1, "normalize(mnist)", flip=False),
    "fashion_mnist": _small("fashion_mnist", 10, 28, 1, "normalize(fashion_mnist)"),
    "cifar10": _small("cifar10", 10, 32, 3, "normalize(cifar10)"),
    "cifar100": _small("cifar100", 100, 32, 3, "normalize(cifar100)"),
    # Digits must not be mirrored.
    "svhn_cropped": _small("svhn_cropped", 10, 32, 3, "normalize(svhn)", flip=False),
    "imagenet2012": _natural(
        "imagenet2012", 1000, "train", "validation", "validation", prepare=IMAGENET_PREPARE
    ),
    "imagenette": _natural("imagenette/full-size-v2", 10, "train", "validation", "validation", 160),
    "oxford_iiit_pet": _natural("oxford_iiit_pet", 37, "train[:90%]", "train[90%:]", "test"),
    "oxford_flowers102": _natural("oxford_flowers102", 102, "train", "validation", "test"),
    "food101": _natural("food101", 101, "train", "validation", "validation"),
}


def names() -> list[str]:
    """Every dataset preset name."""
    return sorted(PRESETS)


def is_offline(name: str) -> bool:
    """True for datasets that need no download."""
    return name in PRESETS and PRESETS[name].offline


def is_folder(name: str) -> bool:
    """True for `folder:/path/to/root` (a user's own images)."""
    return name.startswith(FOLDER_PREFIX)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A dataset as one run uses it: resolved from the preset and the config's overrides."""

    name: str
    tfds_name: str  # "" for image folders
    builder_kwargs: dict
    train_split: str
    eval_split: str
    test_split: str
    num_classes: int  # 0 = from the dataset
    image_size: int
    normalization: str
    train_pp: str
    eval_pp: str
    prepare: str = ""

    @property
    def folder(self) -> str:
        """The root directory of an image-folder dataset, else ""."""
        return self.name[len(FOLDER_PREFIX) :] if is_folder(self.name) else ""


def format_pp(template: str, size: int, norm: str) -> str:
    """Fills a preprocessing template's {size}, {resize} and {norm}."""
    return template.format(size=size, resize=round(size * 8 / 7), norm=norm)


def _folder_preset(size: int, channels: int) -> Preset:
    """An image folder: small images are padded and cropped like CIFAR, photos inception-cropped."""
    norm = "value_range(-1,1)" if channels == 1 else "normalize(imagenet)"
    if size <= SMALL_FOLDER_SIZE:
        return _small(
            "", 0, size, channels, norm, train_split="train", eval_split="test", offline=True
        )
    decode = "decode(1)" if channels == 1 else "decode"
    return Preset(
        tfds_name="",
        train_split="train",
        eval_split="test",
        test_split="test",
        num_classes=0,
        image_size=size,
        channels=channels,
        normalization=norm,
        train_pp=_INCEPTION_TRAIN.replace("decode", decode),
        eval_pp=_CENTRAL_EVAL.replace("decode", decode),
        offline=True,
    )


def _preset_for(cfg: ml_collections.ConfigDict) -> Preset:
    name = cfg.name
    if name in PRESETS:
        return PRESETS[name]
    if is_folder(name):
        return _folder_preset(cfg.image_size or FOLDER_DEFAULT_SIZE, cfg.channels or 3)
    import tensorflow_datasets as tfds

    if name.split("/")[0].split(":")[0] not in tfds.list_builders():
        raise ValueError(
            f"Unknown dataset.name {name!r}. Known presets: {', '.join(names())}; "
            "any tensorflow-datasets name (see `tfds.list_builders()`); "
            "or folder:/path/to/root for your own images."
        )
    missing = [
        k for k in ("train_split", "eval_split", "image_size", "train_pp", "eval_pp") if not cfg[k]
    ]
    if missing:
        raise ValueError(
            f"dataset.name {name!r} is not a preset, so the config must set "
            f"{', '.join('dataset.' + k for k in missing)}."
        )
    return Preset(
        name,
        cfg.train_split,
        cfg.eval_split,
        cfg.eval_split,
        0,
        cfg.image_size,
        3,
        "",
        cfg.train_pp,
        cfg.eval_pp,
    )


def resolve(cfg: ml_collections.ConfigDict) -> DatasetSpec:
    """Combines the preset for `cfg.name` with the config's non-empty overrides."""
    preset = _preset_for(cfg)
    size = cfg.image_size or preset.image_size
    builder_kwargs = {}
    if preset.tfds_name == "shapes":
        from jaxvision.data.builders import ShapesConfig

        builder_kwargs["config"] = ShapesConfig.make(
            image_size=size, num_classes=cfg.num_classes or 10
        )
    norm = preset.normalization
    return DatasetSpec(
        name=cfg.name,
        tfds_name=preset.tfds_name,
        builder_kwargs=builder_kwargs,
        train_split=cfg.train_split or preset.train_split,
        eval_split=cfg.eval_split or preset.eval_split,
        test_split=preset.test_split,
        num_classes=cfg.num_classes or preset.num_classes,
        image_size=size,
        normalization=norm,
        train_pp=format_pp(cfg.train_pp or preset.train_pp, size, norm),
        eval_pp=format_pp(cfg.eval_pp or preset.eval_pp, size, norm),
        prepare=preset.prepare,
    )


def validate_config(cfg: ml_collections.ConfigDict) -> None:
    """Checks the `dataset` section and parses its preprocessing; errors name the key."""
    from jaxvision.data import preprocess, sampling

    def require(ok: bool, message: str) -> None:
        if not ok:
            raise ValueError(message)

    require(cfg.on_bad_file in ("skip", "error"), "dataset.on_bad_file must be 'skip' or 'error'.")
    require(
        cfg.class_weighting in sampling.WEIGHTINGS,
        f"dataset.class_weighting must be one of {sampling.WEIGHTINGS}, "
        f"got {cfg.class_weighting!r}.",
    )
    require(
        0 <= cfg.validation_fraction < 1,
        f"dataset.validation_fraction must be in [0, 1), got {cfg.validation_fraction}.",
    )
    require(cfg.shuffle_buffer >= 1, "dataset.shuffle_buffer must be >= 1.")
    require(cfg.image_size >= 0 and cfg.num_classes >= 0, "dataset.image_size/num_classes >= 0.")
    require(cfg.parallel_calls >= 0 and cfg.threads >= 0, "dataset.parallel_calls/threads >= 0.")
    require(cfg.channels in (0, 1, 3), f"dataset.channels must be 0, 1 or 3, got {cfg.channels}.")
    if is_folder(cfg.name):
        require(bool(cfg.name[len(FOLDER_PREFIX) :]), "dataset.name 'folder:' needs a path.")
    else:
        require(
            not cfg.channels,
            "dataset.channels applies to folder: datasets only; the catalog's datasets have "
            "their own (change the decode op of dataset.train_pp/eval_pp instead).",
        )
    spec = resolve(cfg)
    for key, pp in (("train_pp", spec.train_pp), ("eval_pp", spec.eval_pp)):
        try:
            preprocess.parse(pp)
        except ValueError as e:
            raise ValueError(f"dataset.{key}={pp!r}: {e}") from e
