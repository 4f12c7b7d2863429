"""Input pipelines: config -> tfds/tf.data -> global batches sharded over the mesh.

Train batches are an endless, deterministic stream that can start at any step (the
shuffle order and the augmentation seeds are functions of the example's position), so
a resumed run sees exactly the batches an uninterrupted run would. Eval batches cover
each example of the split exactly once; the last batch is padded and `mask` is 0 on
the padding.
"""

import dataclasses
import math
import os
from collections.abc import Iterator

# tf.data runs on the host only: keep TensorFlow off accelerators jax owns.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.sharding import Mesh

from jaxvision import parallel
from jaxvision.data import builders, catalog, preprocess
from jaxvision.data.catalog import DatasetSpec

tf.config.set_visible_devices([], "GPU")
tf.config.set_visible_devices([], "TPU") if tf.config.list_physical_devices("TPU") else None

__all__ = ["DataInfo", "EvalData", "builders", "catalog", "prepare", "train_batches"]

_FOREVER = 2**62


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What the rest of a run needs to know about its dataset."""

    spec: DatasetSpec
    builder: tfds.core.DatasetBuilder
    num_classes: int
    class_names: list[str]
    image_shape: tuple[int, int, int]
    num_train: int
    num_eval: int


def _data_dir(cfg: ml_collections.ConfigDict) -> str | None:
    return os.path.expanduser(cfg.data_dir) if cfg.data_dir else None


def prepare(config: ml_collections.ConfigDict) -> DataInfo:
    """Resolves the dataset, prepares it if needed (offline builders only download nothing)."""
    spec = catalog.resolve(config.dataset)
    builder = tfds.builder(
        spec.tfds_name, data_dir=_data_dir(config.dataset), **spec.builder_kwargs
    )
    if not builder.is_prepared():
        try:
            builder.download_and_prepare()
        except Exception as e:
            raise RuntimeError(
                f"Dataset {spec.name!r} (tfds {builder.info.full_name}) is not prepared in "
                f"{builder.data_dir} and preparing it failed: {e}\n"
                f"Prepare it on a machine with a network with `tfds build {spec.tfds_name} "
                f"--data_dir=DIR` and point --config.dataset.data_dir=DIR at it."
            ) from e
    splits = builder.info.splits
    for key, split in (("train_split", spec.train_split), ("eval_split", spec.eval_split)):
        try:
            splits[split]
        except (KeyError, ValueError) as e:
            raise ValueError(
                f"dataset.{key}={split!r} is not a split of {builder.info.full_name}; "
                f"available: {', '.join(splits.keys())}."
            ) from e
    label = builder.info.features["label"]
    num_classes = config.dataset.num_classes or label.num_classes
    channels = builder.info.features["image"].shape[-1] or 3
    return DataInfo(
        spec=spec,
        builder=builder,
        num_classes=num_classes,
        class_names=list(label.names) if hasattr(label, "names") else [],
        image_shape=(spec.image_size, spec.image_size, channels),
        num_train=splits[spec.train_split].num_examples,
        num_eval=splits[spec.eval_split].num_examples,
    )


def _read(builder: tfds.core.DatasetBuilder, split: str) -> tf.data.Dataset:
    """(encoded image bytes, label) pairs in file order; decoding is a preprocessing op."""
    ds = builder.as_dataset(
        split=split,
        shuffle_files=False,
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(try_autocache=False),
    )
    return ds.map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32)))


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    return options


def local_batch_size(global_batch: int) -> int:
    """This process's share of a global batch."""
    return global_batch // jax.process_count()


def train_batches(
    config: ml_collections.ConfigDict, info: DataInfo, mesh: Mesh, start_step: int = 0
) -> Iterator[dict[str, jax.Array]]:
    """Endless augmented training batches, starting at `start_step`, as global arrays."""
    local_batch = local_batch_size(config.batch_size)
    split = tfds.split_for_jax_process(info.spec.train_split)
    n = info.builder.info.splits[split].num_examples
    base = _read(info.builder, split)
    if config.dataset.cache:
        base = base.cache()
    buffer = max(1, min(config.dataset.shuffle_buffer, n))
    seed = config.seed

    def epoch(e):
        # A fixed permutation per (seed, epoch): position alone decides the order.
        return base.shuffle(buffer, seed=e * 1_000_003 + seed, reshuffle_each_iteration=False)

    consumed = start_step * local_batch
    start_epoch, offset = divmod(consumed, n)
    examples = tf.data.Dataset.range(start_epoch, _FOREVER).flat_map(epoch).skip(offset)
    positions = tf.data.Dataset.range(consumed, _FOREVER)
    ops = preprocess.parse(info.spec.train_pp)
    base_seed = tf.constant([seed, jax.process_index()], tf.int64)

    def augment(position, example):
        image, label = example
        example_seed = tf.random.experimental.stateless_fold_in(base_seed, position)
        return {"image": preprocess.apply(ops, image, example_seed), "label": label}

    ds = tf.data.Dataset.zip(positions, examples)
    ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_batch, drop_remainder=True).prefetch(2).with_options(_options())
    return parallel.prefetch_to_mesh(ds.as_numpy_iterator(), mesh)


@dataclasses.dataclass
class EvalData:
    """Eval batches over a whole split: iterate as often as needed."""

    dataset: tf.data.Dataset
    mesh: Mesh
    num_batches: int
    num_examples: int

    def __iter__(self) -> Iterator[dict[str, jax.Array]]:
        return parallel.prefetch_to_mesh(self.dataset.as_numpy_iterator(), self.mesh)


def eval_batches(
    config: ml_collections.ConfigDict, info: DataInfo, mesh: Mesh, split: str | None = None
) -> EvalData:
    """Every example of `split` exactly once, padded to whole batches with mask 0."""
    split = split or info.spec.eval_split
    local_batch = local_batch_size(config.eval_batch_size or config.batch_size)
    parts = tfds.even_splits(split, n=jax.process_count(), drop_remainder=False)
    sizes = [info.builder.info.splits[p].num_examples for p in parts]
    if min(sizes) == 0:
        raise ValueError(f"Split {split!r} has fewer examples than processes: {sizes}.")
    num_batches = math.ceil(max(sizes) / local_batch)
    ops = preprocess.parse(info.spec.eval_pp)
    zero_seed = tf.zeros([2], tf.int64)

    def prep(image, label):
        image = preprocess.apply(ops, image, zero_seed)
        return {"image": image, "label": label, "mask": tf.constant(1.0)}

    ds = _read(info.builder, parts[jax.process_index()])
    ds = ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    pad = num_batches * local_batch - sizes[jax.process_index()]
    padding = ds.take(1).map(lambda ex: tf.nest.map_structure(tf.zeros_like, ex)).repeat(pad)
    ds = ds.concatenate(padding).batch(local_batch, drop_remainder=True)
    if config.dataset.cache:
        ds = ds.cache()
    ds = ds.prefetch(2).with_options(_options())
    return EvalData(ds, mesh, num_batches, sum(sizes))


def class_counts(info: DataInfo, split: str) -> np.ndarray:
    """Examples per class in `split` (read from the labels only)."""
    counts = np.zeros(info.num_classes, np.int64)
    labels = _read(info.builder, split).map(lambda img, lbl: lbl).batch(4096)
    for chunk in labels.as_numpy_iterator():
        counts += np.bincount(chunk, minlength=info.num_classes)[: info.num_classes]
    return counts
