"""The training order is a function of (seed, step, example), not of the process count:
process p of P reads exactly its rows of the global batch one process reads."""

import itertools

import numpy as np
import pytest

from jaxvision import config as config_lib
from jaxvision import data


def _config(**dataset):
    c = config_lib.base()
    c.dataset.name = "digits"
    c.dataset.train_split = "train[:400]"
    c.dataset.train_pp = "decode(1)|random_crop(8,2)|flip_lr|value_range(0,1)"
    c.batch_size = 16
    for k, v in dataset.items():
        c.dataset[k] = v
    return c


def _global_batches(config, info, count: int, start_step: int, steps: int) -> dict:
    """`steps` global batches from `start_step`, assembled from `count` processes' streams."""
    parts = [
        list(
            itertools.islice(
                data.train_stream(config, info, start_step, process=(i, count)).as_numpy_iterator(),
                steps,
            )
        )
        for i in range(count)
    ]
    return {
        key: np.stack([np.concatenate([p[s][key] for p in parts]) for s in range(steps)])
        for key in parts[0][0]
    }


@pytest.mark.parametrize(
    "counts, dataset", [((2, 8), {}), ((2,), {"class_balanced_sampling": True})]
)
def test_every_process_count_reads_the_same_global_batches(counts, dataset):
    config = _config(**dataset)
    info = data.prepare(config)
    one = _global_batches(config, info, 1, 0, 3)
    assert one["image"].shape == (3, 16, 8, 8, 1)
    # Augmentation is on: the same digit twice gives different crops, so equal batches
    # below mean equal random draws, not just equal files.
    assert len({b.tobytes() for b in one["image"][0]}) == 16
    for count in counts:
        other = _global_batches(config, info, count, 0, 3)
        for key in one:
            np.testing.assert_array_equal(other[key], one[key], err_msg=f"{key}, {count} procs")


def test_a_resumed_stream_continues_the_same_order_on_another_process_count():
    config = _config()
    info = data.prepare(config)
    straight = _global_batches(config, info, 1, 0, 5)
    resumed = _global_batches(config, info, 2, 3, 2)
    np.testing.assert_array_equal(resumed["image"], straight["image"][3:])
    np.testing.assert_array_equal(resumed["label"], straight["label"][3:])


def test_order_shards_fit_the_processes_and_the_batch():
    config = _config()
    assert data.order_shards(config, 1) == 8
    assert data.order_shards(config, 3) == 8  # lcm 24, 16 rows a batch: gcd 8
    config.batch_size = 48
    assert data.order_shards(config, 3) == 24
    config.batch_size = 6
    assert data.order_shards(config, 1) == 2


def test_a_split_smaller_than_the_order_shards_says_what_to_set():
    config = _config()
    config.dataset.train_split = "train[:5]"
    info = data.prepare(config)
    with pytest.raises(ValueError, match="order_shards=1"):
        data.train_stream(config, info)
    config.dataset.order_shards = 1
    assert next(data.train_stream(config, info).as_numpy_iterator())["image"].shape[0] == 16
