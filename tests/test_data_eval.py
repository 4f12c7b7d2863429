"""Eval sees each example exactly once: 1 and 4 devices, 2 processes, any batch size.

Run as a script (`python tests/test_data_eval.py BATCH [PROCESS_ID PORT OUT]`) it prints
or writes the hashes of the examples this process evaluated; the tests start it with 4
fake devices or as 2 processes of a jax.distributed job.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

SPLIT_SIZE = 1000  # shapes/test


def _config(eval_batch: int):
    from jaxvision import config as config_lib

    c = config_lib.base()
    c.dataset.name = "shapes"
    c.batch_size = 8
    c.eval_batch_size = eval_batch
    return c


def _hash(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()[:16]


def evaluated(eval_batch: int) -> dict:
    """Hashes of the real (mask 1) examples this process saw, and the mask total."""
    import jax

    from jaxvision import data, parallel

    config = _config(eval_batch)
    info = data.prepare(config)
    eval_data = data.eval_batches(config, info, parallel.make_mesh())
    hashes, mask_sum, batches = [], 0.0, 0
    for batch in eval_data:
        batches += 1
        # Only this process's rows: the global array spans every process.
        parts = {k: [np.asarray(s.data) for s in v.addressable_shards] for k, v in batch.items()}
        images, masks = np.concatenate(parts["image"]), np.concatenate(parts["mask"])
        mask_sum += float(masks.sum())
        hashes += [_hash(im) for im, m in zip(images, masks) if m > 0]
    return {
        "hashes": hashes,
        "mask_sum": mask_sum,
        "batches": batches,
        "num_batches": eval_data.num_batches,
        "num_examples": eval_data.num_examples,
        "devices": jax.device_count(),
        "processes": jax.process_count(),
    }


def _expected_hashes() -> list[str]:
    """Every example of the split, read directly with the same eval preprocessing."""
    import tensorflow as tf

    from jaxvision import data
    from jaxvision.data import preprocess

    info = data.prepare(_config(8))
    ds, _ = info.source.read(info.spec.eval_split)
    ops = preprocess.parse(info.spec.eval_pp)
    ds = ds.map(lambda im, y: preprocess.apply(ops, im, tf.zeros([2], tf.int64)))
    return sorted(_hash(x) for x in ds.as_numpy_iterator())


@pytest.fixture(scope="module")
def expected():
    hashes = _expected_hashes()
    assert len(hashes) == SPLIT_SIZE and len(set(hashes)) == SPLIT_SIZE  # shapes are unique
    return hashes


@pytest.mark.parametrize("eval_batch", [40, 64])  # 1000 = 25 * 40 = 15 * 64 + 40
def test_exactly_once_on_one_device(expected, eval_batch):
    out = evaluated(eval_batch)
    assert out["mask_sum"] == SPLIT_SIZE == out["num_examples"]
    assert out["batches"] == out["num_batches"] == -(-SPLIT_SIZE // eval_batch)
    assert sorted(out["hashes"]) == expected


def _script(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("eval_batch", [40, 64])
def test_exactly_once_on_four_devices(expected, eval_batch):
    proc = _script([str(eval_batch)], {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    out = json.loads(stdout.strip().splitlines()[-1])
    assert out["devices"] == 4
    assert out["mask_sum"] == SPLIT_SIZE
    assert sorted(out["hashes"]) == expected


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("eval_batch", [40, 64])
def test_exactly_once_with_two_processes(expected, eval_batch, tmp_path):
    port = str(_free_port())
    outs = [str(tmp_path / f"p{i}.json") for i in range(2)]
    procs = [_script([str(eval_batch), str(i), port, outs[i]], {}) for i in range(2)]
    for p in procs:
        _, stderr = p.communicate(timeout=900)
        assert p.returncode == 0, stderr[-3000:]
    results = []
    for o in outs:
        with open(o) as f:
            results.append(json.load(f))
    assert all(r["processes"] == 2 and r["devices"] == 2 for r in results)
    assert results[0]["num_batches"] == results[1]["num_batches"]
    assert sum(r["mask_sum"] for r in results) == SPLIT_SIZE
    merged = sorted(results[0]["hashes"] + results[1]["hashes"])
    assert merged == expected  # every example once, none on both processes


if __name__ == "__main__":
    batch = int(sys.argv[1])
    if len(sys.argv) > 2:
        import jax

        process_id, port, out_path = int(sys.argv[2]), sys.argv[3], sys.argv[4]
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id
        )
        with open(out_path, "w") as f:
            json.dump(evaluated(batch), f)
    else:
        print(json.dumps(evaluated(batch)))
