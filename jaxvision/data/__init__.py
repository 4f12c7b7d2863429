"""Input pipelines: config -> tfds or image folder -> tf.data -> global batches on the mesh.

Train batches are an endless, deterministic stream that can start at any step (the
shuffle order and the augmentation seeds are functions of the example's position), so
a resumed run sees exactly the batches an uninterrupted run would. Eval batches cover
each example of the split exactly once; the last batch is padded and `mask` is 0 on
the padding. Each process reads only its own shards of a split, and a global training
batch is the same whatever the number of processes (`order_shards`).
"""

import contextlib
import dataclasses
import math
import os
import sys
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
from jaxvision.console import log
from jaxvision.data import builders, catalog, folder, preprocess, sampling, sources
from jaxvision.data.catalog import DatasetSpec
from jaxvision.exit_status import BadInputError

tf.config.set_visible_devices([], "GPU")
tf.config.set_visible_devices([], "TPU") if tf.config.list_physical_devices("TPU") else None

__all__ = [
    "DataInfo",
    "EvalData",
    "builders",
    "catalog",
    "class_counts",
    "eval_batches",
    "format_class_counts",
    "prepare",
    "train_batches",
    "train_stream",
]

_FOREVER = 2**62
# Encoded splits up to this size are cached in host memory when dataset.cache is set.
_CACHE_LIMIT_BYTES = 4 << 30
# Eval batches (decoded, float32) up to this size are cached after preprocessing.
_EVAL_CACHE_LIMIT_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What the rest of a run needs to know about its dataset."""

    spec: DatasetSpec
    builder: tfds.core.DatasetBuilder | None  # None for image folders
    num_classes: int
    class_names: list[str]
    image_shape: tuple[int, int, int]
    num_train: int
    num_eval: int
    source: sources.TfdsSource | sources.FolderSource


def _data_dir(cfg: ml_collections.ConfigDict) -> str | None:
    return os.path.expanduser(cfg.data_dir) if cfg.data_dir else None


def _not_prepared(spec: DatasetSpec, builder: tfds.core.DatasetBuilder, cause: str = "") -> str:
    return (
        f"Dataset {spec.name!r} (tfds {builder.info.full_name}) is not prepared in "
        f"{builder.data_dir}{': ' + cause if cause else '.'}\n"
        + (spec.prepare + "\n" if spec.prepare else "")
        + f"Prepare it with `tfds build {spec.tfds_name} --data_dir=DIR` (on a machine with a "
        "network if needed) and pass --config.dataset.data_dir=DIR, or let jaxvision "
        "download it with --config.dataset.download=True."
    )


def _tfds_source(config: ml_collections.ConfigDict, spec: DatasetSpec) -> sources.TfdsSource:
    builder = tfds.builder(
        spec.tfds_name, data_dir=_data_dir(config.dataset), **spec.builder_kwargs
    )
    if catalog.is_offline(spec.name) or config.dataset.download:
        try:
            # tfds reports preparation on stdout; keep stdout for the tools' JSON lines.
            with contextlib.redirect_stdout(sys.stderr):
                builder.download_and_prepare()
        except Exception as e:
            raise RuntimeError(_not_prepared(spec, builder, f"preparing it failed: {e}")) from e
    elif not builder.is_prepared():
        raise BadInputError(_not_prepared(spec, builder))
    return sources.TfdsSource(builder)


def _folder_source(config: ml_collections.ConfigDict, spec: DatasetSpec) -> sources.FolderSource:
    """The verified files of a folder; fills the size and channels the config leaves unset."""
    cfg = config.dataset
    scanned = folder.scan(
        spec.folder,
        train_split=spec.train_split,
        eval_split=spec.eval_split,
        validation_fraction=cfg.validation_fraction,
        on_bad_file=cfg.on_bad_file,
        cache_dir=_data_dir(cfg) or "",
        max_image_pixels=cfg.max_image_pixels,
    )
    _choose_folder_input(config, scanned)
    return sources.FolderSource(scanned)


def _choose_folder_input(config: ml_collections.ConfigDict, scanned: folder.ImageFolder) -> None:
    """Fills the folder's unset dataset.image_size and dataset.channels from its images and
    logs the choice, so config.json records the size and channels the run trained at."""
    cfg, why = config.dataset, ""
    model_size = int(config.model.get("image_size", 0))
    if not cfg.image_size and model_size:
        # A model built for one resolution (ViTs) takes only that.
        cfg.image_size, why = model_size, f"model.image_size is {model_size}"
    elif not cfg.image_size:
        # Patches of 16 divide a pretrained model's size (pretrained ViTs resize their grid).
        multiple = 16 if config.pretrained else 8
        cfg.image_size, why = folder.choose_image_size(
            scanned.shapes, cap=catalog.FOLDER_DEFAULT_SIZE, multiple=multiple
        )
    if why:
        log.info(
            "%s: training at %d px because %s (set --config.dataset.image_size to override).",
            scanned.root,
            cfg.image_size,
            why,
        )
    if not cfg.channels:
        if config.pretrained:
            cfg.channels, why = 3, "the pretrained model takes RGB images"
        else:
            cfg.channels, why = folder.choose_channels(scanned.shapes)
        log.info(
            "%s: %d channel%s because %s (set --config.dataset.channels to override).",
            scanned.root,
            cfg.channels,
            "" if cfg.channels == 1 else "s",
            why,
        )


def _output_shape(source, split: str, pp: str, what: str) -> tuple[int, ...]:
    """The static image shape `pp` produces, traced without reading any data."""
    ds, _ = source.read(split)
    ops = preprocess.parse(pp)
    ds = ds.map(lambda image, label: preprocess.apply(ops, image, tf.zeros([2], tf.int64)))
    shape = ds.element_spec.shape
    if not shape.is_fully_defined() or shape.rank != 3:
        raise ValueError(
            f"dataset.{what}={pp!r} yields images of shape {shape}; it must end in a fixed "
            "[H, W, C], e.g. with resize(S), central_crop(S), random_crop(S) or inception_crop(S)."
        )
    return tuple(shape.as_list())


def prepare(config: ml_collections.ConfigDict) -> DataInfo:
    """Resolves the dataset, checks it is readable and its pipelines produce one image shape.

    For a folder, dataset.image_size and dataset.channels left at 0 are set in `config` to
    what its images suggest (logged with the reason)."""
    spec = catalog.resolve(config.dataset)
    if spec.folder:
        source = _folder_source(config, spec)
        spec = catalog.resolve(config.dataset)  # at the size and channels the folder chose
    else:
        source = _tfds_source(config, spec)
    num_classes = spec.num_classes or source.num_classes
    if not num_classes or (source.num_classes and num_classes < source.num_classes):
        raise ValueError(
            f"dataset.num_classes={spec.num_classes} but {spec.name!r} has "
            f"{source.num_classes or 'an unknown number of'} classes; set dataset.num_classes."
        )
    _, num_train = source.read(spec.train_split)
    _, num_eval = source.read(spec.eval_split)
    eval_shape = _output_shape(source, spec.eval_split, spec.eval_pp, "eval_pp")
    train_shape = _output_shape(source, spec.train_split, spec.train_pp, "train_pp")
    if train_shape != eval_shape:
        raise ValueError(
            f"dataset.train_pp gives {train_shape} images but dataset.eval_pp gives {eval_shape}: "
            f"train_pp={spec.train_pp!r}, eval_pp={spec.eval_pp!r}."
        )
    return DataInfo(
        spec=spec,
        builder=source.builder,
        num_classes=num_classes,
        class_names=source.class_names,
        image_shape=eval_shape,
        num_train=num_train,
        num_eval=num_eval,
        source=source,
    )


def _options(config: ml_collections.ConfigDict) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = bool(config.dataset.deterministic)
    options.experimental_optimization.map_parallelization = True
    # No autotuner: destroying an iterator can wait up to a minute for its sleeping thread
    # (docs/performance.md, "Input pipeline"); `map_parallelism` sets what it would search for.
    options.autotune.enabled = False
    if config.dataset.threads:
        options.threading.private_threadpool_size = config.dataset.threads
    return options


def map_parallelism(config: ml_collections.ConfigDict) -> int:
    """Parallel calls of the preprocessing map: `dataset.parallel_calls`, else one per thread."""
    return config.dataset.parallel_calls or config.dataset.threads or _usable_cores()


def _usable_cores() -> int:
    """Cores this process may run on (its affinity where the OS reports one)."""
    if hasattr(os, "sched_getaffinity"):  # Linux
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def local_batch_size(global_batch: int) -> int:
    """This process's share of a global batch."""
    return global_batch // jax.process_count()


def class_counts(info: DataInfo, split: str | None = None) -> np.ndarray:
    """Examples per class in `split` (default: the train split), read from the labels only."""
    labels = info.source.labels(split or info.spec.train_split)
    return np.bincount(labels, minlength=info.num_classes)[: info.num_classes]


def format_class_counts(info: DataInfo, counts: np.ndarray, limit: int = 20) -> str:
    """One line for the log: the smallest and largest classes and the imbalance ratio."""
    names = info.class_names or [str(i) for i in range(info.num_classes)]
    order = np.argsort(counts, kind="stable")
    shown = (
        order
        if len(order) <= limit
        else np.concatenate([order[: limit // 2], order[-limit // 2 :]])
    )
    present = counts[counts > 0]
    ratio = present.max() / present.min() if present.size else 0.0
    parts = ", ".join(f"{names[i]}={counts[i]}" for i in shown)
    return f"{counts.sum()} examples in {info.num_classes} classes (max/min {ratio:.1f}): {parts}"


def order_shards(config: ml_collections.ConfigDict, process_count: int) -> int:
    """How many fixed shards the training order is built from (a multiple of the processes).

    The order depends on this number, not on the process count: any process count that
    divides it reads the same global batches, each process its own shards' rows.
    """
    shards = math.lcm(max(1, config.dataset.order_shards), process_count)
    # Each shard gives the same number of rows to every batch.
    return math.gcd(shards, config.batch_size)


def train_stream(
    config: ml_collections.ConfigDict,
    info: DataInfo,
    start_step: int = 0,
    process: tuple[int, int] | None = None,
) -> tf.data.Dataset:
    """This process's endless, batched, preprocessed training stream from `start_step`.

    The global batch is the same for every process count: row block `s` of each batch
    comes from order shard `s` (its own shuffle and augmentation seeds), and process `p`
    of `P` reads the shards whose rows are its slice of the global batch. `process` is
    (index, count), by default this process's.
    """
    cfg = config.dataset
    index, count = process or (jax.process_index(), jax.process_count())
    local_batch = config.batch_size // count
    num_shards = order_shards(config, count)
    rows = config.batch_size // num_shards  # rows of every global batch per shard
    per_process = num_shards // count
    if info.num_train < num_shards:
        raise ValueError(
            f"Train split {info.spec.train_split!r} has {info.num_train} examples, fewer than "
            f"its {num_shards} order shards; set --config.dataset.order_shards=1."
        )
    streams = [
        _shard_stream(config, info, shard, num_shards, start_step * rows)
        for shard in range(index * per_process, (index + 1) * per_process)
    ]
    # Row blocks in shard order: `rows` examples from each of this process's shards in turn.
    blocks = tf.data.Dataset.zip(tuple(s.batch(rows) for s in streams))
    ds = blocks.map(lambda *b: tf.nest.map_structure(lambda *x: tf.concat(x, 0), *b)).unbatch()
    ops = preprocess.parse(info.spec.train_pp)
    weights = None
    if cfg.class_weighting != "none":
        weights = tf.constant(sampling.class_weights(class_counts(info), cfg.class_weighting))

    def augment(example_seed, image, label):
        out = {"image": preprocess.apply(ops, image, example_seed), "label": label}
        if weights is not None:
            out["weight"] = tf.gather(weights, label)
        return out

    ds = ds.map(
        augment, num_parallel_calls=map_parallelism(config), deterministic=cfg.deterministic
    )
    ds = ds.batch(local_batch, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(config))


def _shard_stream(
    config: ml_collections.ConfigDict, info: DataInfo, shard: int, num_shards: int, consumed: int
) -> tf.data.Dataset:
    """Order shard `shard`'s endless (augmentation seed, image, label) stream after `consumed`."""
    cfg = config.dataset
    split = info.spec.train_split
    base, n = info.source.read(split, shard, num_shards, drop_remainder=True)
    if n == 0:
        raise ValueError(f"Train split {split!r} has no examples in order shard {shard}.")
    if cfg.cache and info.source.encoded_bytes(split) <= _CACHE_LIMIT_BYTES:
        base = base.cache()
    seed = config.seed
    if cfg.class_balanced_sampling:
        labels = info.source.labels(split, shard, num_shards, drop_remainder=True)
        plan = sampling.BalancedEpochs(labels, info.num_classes)
        epoch_length, expand = plan.epoch_length, plan.epoch
    else:
        epoch_length, expand = n, lambda ds, e: ds
    # The shards share the shuffle buffer, so a process holds its share of it.
    buffer = max(1, min(cfg.shuffle_buffer // num_shards, epoch_length))

    def epoch(e):
        # A fixed permutation per (seed, shard, epoch): position alone decides the order.
        return expand(base, e).shuffle(
            buffer, seed=(e * 1_000_003 + seed) * 1_009 + shard, reshuffle_each_iteration=False
        )

    start_epoch, offset = divmod(consumed, epoch_length)
    examples = tf.data.Dataset.range(start_epoch, _FOREVER).flat_map(epoch).skip(offset)
    shard_seed = tf.constant([seed, shard], tf.int64)

    def with_seed(position, example):
        image, label = example
        return tf.random.experimental.stateless_fold_in(shard_seed, position), image, label

    positions = tf.data.Dataset.range(consumed, _FOREVER)
    return tf.data.Dataset.zip(positions, examples).map(with_seed)


def train_batches(
    config: ml_collections.ConfigDict, info: DataInfo, mesh: Mesh, start_step: int = 0
) -> Iterator[dict[str, jax.Array]]:
    """Endless augmented training batches, starting at `start_step`, as global arrays."""
    stream = train_stream(config, info, start_step)
    return parallel.prefetch_to_mesh(stream.as_numpy_iterator(), mesh)


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
    index, count = jax.process_index(), jax.process_count()
    sizes = [info.source.read(split, i, count)[1] for i in range(count)]
    if min(sizes) == 0:
        raise ValueError(f"Split {split!r} has fewer examples than processes: {sizes}.")
    num_batches = math.ceil(max(sizes) / local_batch)
    ops = preprocess.parse(info.spec.eval_pp)
    zero_seed = tf.zeros([2], tf.int64)

    def prep(image, label):
        image = preprocess.apply(ops, image, zero_seed)
        return {"image": image, "label": label, "mask": tf.constant(1.0)}

    ds, _ = info.source.read(split, index, count)
    decoded_bytes = sum(sizes) * 4 * math.prod(info.image_shape)
    cache = config.dataset.cache
    if cache and decoded_bytes > _EVAL_CACHE_LIMIT_BYTES:
        if info.source.encoded_bytes(split) <= _CACHE_LIMIT_BYTES:
            ds = ds.cache()
        cache = False
    ds = ds.map(prep, num_parallel_calls=map_parallelism(config), deterministic=True)
    pad = num_batches * local_batch - sizes[index]
    padding = ds.take(1).map(lambda ex: tf.nest.map_structure(tf.zeros_like, ex)).repeat(pad)
    ds = ds.concatenate(padding).batch(local_batch, drop_remainder=True)
    if cache:
        ds = ds.cache()
    ds = ds.prefetch(2).with_options(_options(config))
    return EvalData(ds, mesh, num_batches, sum(sizes))
