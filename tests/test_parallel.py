"""Sharding: the same losses on 1 and 4 devices (CNN and a BatchNorm ResNet), FSDP equal to
replicated, FSDP rules, and multi-host start-up arguments."""

import json

import numpy as np
import pytest
from jax.sharding import PartitionSpec

from jaxvision import parallel
from tests.trained_runs import run_cli

# Runs 20 train steps of each config through the real setup and data pipeline, printing
# the per-step losses and how many state leaves are split over devices.
_LOSSES = """
import json, sys
import jax
from configs import quickstart
from jaxvision import config as config_lib, data, step_factory

def config(model=None, fsdp=False):
    c = quickstart.get_config("smoke"); c.unlock()
    c.batch_size = 32
    if model is not None:
        c.model = model
        c.dataset.name = "shapes"
        c.dataset.num_classes = 6
    c.parallel.fsdp = fsdp
    c.parallel.fsdp_min_size = 256
    return c

def losses(c):
    info = data.prepare(c)
    s = step_factory.build(
        c, num_classes=info.num_classes, image_shape=info.image_shape,
        num_train_examples=info.num_train,
    )
    state = s.init_fn()
    sharded = sum(not x.sharding.is_fully_replicated for x in jax.tree.leaves(state))
    batches = data.train_batches(c, info, s.mesh)
    out = []
    for _ in range(20):
        state, metrics = s.train_fn(state, next(batches))
        out.append(metrics["loss"])
    return {"losses": [float(x) for x in jax.device_get(out)], "sharded": sharded}

resnet = config_lib.model("resnet18", stem="cifar", width=0.125)
runs = {"cnn": config(), "resnet": config(resnet)}
if jax.device_count() > 1:
    runs["cnn_fsdp"] = config(fsdp=True)
    runs["resnet_fsdp"] = config(resnet, fsdp=True)
print(json.dumps({name: losses(c) for name, c in runs.items()}))
"""


def _run(devices: int) -> dict:
    env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    out = run_cli(["-c", _LOSSES], env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # ~2 min idle, ~7 min on 2 busy cores: compiles 6 setups
def test_one_and_four_devices_and_fsdp_give_the_same_losses():
    one, four = _run(1), _run(4)
    for name in ("cnn", "resnet"):
        assert len(one[name]["losses"]) == 20
        # Training moves: the comparison is not between constant sequences.
        assert one[name]["losses"][-1] < one[name]["losses"][0]
        np.testing.assert_allclose(four[name]["losses"], one[name]["losses"], rtol=1e-4)
        fsdp = four[f"{name}_fsdp"]
        assert fsdp["sharded"] > 0 and four[name]["sharded"] == 0
        np.testing.assert_allclose(fsdp["losses"], four[name]["losses"], rtol=1e-4)


def test_cpu_devices_cannot_change_once_jax_has_started():
    import jax

    jax.numpy.zeros(1).block_until_ready()  # the backend is up
    have = len(jax.devices("cpu"))
    parallel.set_cpu_devices(0)  # JAX's default: nothing to do
    parallel.set_cpu_devices(have)  # what it already has: fine
    with pytest.raises(ValueError, match=rf"cpu_devices={have + 1}.*already started.*{have} CPU"):
        parallel.set_cpu_devices(have + 1)


def test_fsdp_shards_the_largest_divisible_axis_of_large_arrays_only():
    spec = parallel.fsdp_spec
    assert spec((3, 3, 64, 128), 4, 1024) == PartitionSpec(None, None, None, "data")
    assert spec((6, 64), 4, 1) == PartitionSpec(None, "data")  # 6 is not divisible by 4
    assert spec((10,), 4, 1) == PartitionSpec()  # nothing divisible: replicated
    assert spec((64, 64), 4, 10**6) == PartitionSpec()  # small: replicated
    assert spec((1024, 1024), 1, 1) == PartitionSpec()  # one device


def test_incomplete_multi_host_arguments_are_refused():
    with pytest.raises(ValueError, match="--coordinator_address=HOST:PORT, --num_processes"):
        parallel.initialize_distributed("127.0.0.1:1234", 0, -1)
    with pytest.raises(ValueError, match="--process_id"):
        parallel.initialize_distributed("127.0.0.1:1234", 2, -1)


def test_cluster_launchers_are_detected_from_their_environment(monkeypatch):
    for key in ("SLURM_NTASKS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("TPU_WORKER_HOSTNAMES", raising=False)
    assert parallel._detected_cluster() is None
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert parallel._detected_cluster() is None  # one task: nothing to coordinate
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert parallel._detected_cluster() == "SLURM"
    monkeypatch.delenv("SLURM_NTASKS")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t0,t1")
    assert parallel._detected_cluster() == "Cloud TPU pod"
