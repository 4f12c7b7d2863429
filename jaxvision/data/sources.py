"""Where examples come from: a tfds builder or an image folder, behind one interface.

A source yields (encoded image bytes, int32 label) pairs in a fixed storage order, for a
split or one process's shard of it. Decoding is a preprocessing op, so shuffling moves
compressed bytes, not pixels, and both kinds of source share every later stage.
"""

import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxvision.data.folder import ImageFolder


def shard_bounds(n: int, shard: int, num_shards: int, drop_remainder: bool) -> tuple[int, int]:
    """[start, end) of shard `shard` of `n` examples, as tfds.even_splits cuts them."""
    if drop_remainder:
        k = n // num_shards
        return shard * k, (shard + 1) * k
    edges = np.linspace(0, n, num_shards + 1).round().astype(int)
    return int(edges[shard]), int(edges[shard + 1])


class TfdsSource:
    """A prepared tfds dataset; the image and label keys come from its supervised_keys."""

    def __init__(self, builder: tfds.core.DatasetBuilder):
        self.builder = builder
        keys = builder.info.supervised_keys
        self.image_key, self.label_key = keys[:2] if keys else ("image", "label")
        features = builder.info.features
        for key in (self.image_key, self.label_key):
            if key not in features:
                raise ValueError(
                    f"tfds {builder.info.full_name} has no {key!r} feature; features: "
                    f"{', '.join(features)}. jaxvision needs an image and a class label."
                )
        label = features[self.label_key]
        self.num_classes = getattr(label, "num_classes", 0) or 0
        self.class_names = list(getattr(label, "names", None) or [])

    def _split(self, split: str, shard: int, num_shards: int, drop_remainder: bool) -> str:
        if num_shards == 1:
            return split
        return tfds.even_splits(split, n=num_shards, drop_remainder=drop_remainder)[shard]

    def _dataset(self, split: str, decoders) -> tf.data.Dataset:
        try:
            return self.builder.as_dataset(
                split=split,
                shuffle_files=False,
                decoders=decoders,
                read_config=tfds.ReadConfig(try_autocache=False),
            )
        except (KeyError, ValueError, AssertionError) as e:
            raise ValueError(
                f"Cannot read split {split!r} of {self.builder.info.full_name}: {e}. "
                f"Available splits: {', '.join(self.builder.info.splits.keys()) or 'unknown'}."
            ) from e

    def read(
        self, split: str, shard: int = 0, num_shards: int = 1, *, drop_remainder: bool = False
    ) -> tuple[tf.data.Dataset, int]:
        """(encoded image, label) pairs of one shard of `split`, and how many there are."""
        sub = self._split(split, shard, num_shards, drop_remainder)
        # Only the two features we use: other features (masks, boxes) are never parsed.
        decoders = tfds.decode.PartialDecoding(
            {self.image_key: True, self.label_key: True},
            decoders={self.image_key: tfds.decode.SkipDecoding()},
        )
        ds = self._dataset(sub, decoders)
        n = int(ds.cardinality())
        if n < 0:
            n = self.builder.info.splits[sub].num_examples
        ik, lk = self.image_key, self.label_key
        return ds.map(lambda ex: (ex[ik], tf.cast(ex[lk], tf.int32))), n

    def labels(
        self, split: str, shard: int = 0, num_shards: int = 1, *, drop_remainder: bool = False
    ) -> np.ndarray:
        """The labels of one shard of `split` in storage order (images are not decoded)."""
        sub = self._split(split, shard, num_shards, drop_remainder)
        ds = self._dataset(sub, tfds.decode.PartialDecoding({self.label_key: True}))
        chunks = ds.map(lambda ex: ex[self.label_key]).batch(8192).as_numpy_iterator()
        return np.concatenate([np.zeros([0], np.int64), *chunks]).astype(np.int64)

    def encoded_bytes(self, split: str) -> int:
        """Approximate bytes of `split` as stored (0 when unknown)."""
        try:
            return int(self.builder.info.splits[split].num_bytes)
        except (KeyError, ValueError, TypeError):
            return int(self.builder.info.dataset_size or 0)


class FolderSource:
    """An image folder whose files were verified by `folder.scan`; read lazily from disk."""

    def __init__(self, folder: ImageFolder):
        self.folder = folder
        self.builder = None
        self.num_classes = len(folder.class_names)
        self.class_names = list(folder.class_names)

    def _shard(self, split, shard, num_shards, drop_remainder):
        paths, labels = self.folder.paths_and_labels(split)
        a, b = shard_bounds(len(paths), shard, num_shards, drop_remainder)
        return paths[a:b], labels[a:b]

    def read(
        self, split: str, shard: int = 0, num_shards: int = 1, *, drop_remainder: bool = False
    ) -> tuple[tf.data.Dataset, int]:
        """(file bytes, label) pairs of one shard of `split`, and how many there are."""
        paths, labels = self._shard(split, shard, num_shards, drop_remainder)
        ds = tf.data.Dataset.from_tensor_slices(
            (tf.constant(paths, tf.string, [len(paths)]), tf.constant(labels, tf.int32))
        )
        ds = ds.map(
            lambda p, y: (tf.io.read_file(p), y),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        return ds, len(paths)

    def labels(
        self, split: str, shard: int = 0, num_shards: int = 1, *, drop_remainder: bool = False
    ) -> np.ndarray:
        """The labels of one shard of `split` in storage order."""
        return self._shard(split, shard, num_shards, drop_remainder)[1].astype(np.int64)

    def encoded_bytes(self, split: str) -> int:
        """Bytes of the files of `split` on disk."""
        return sum(os.path.getsize(p) for p in self.folder.paths_and_labels(split)[0])
