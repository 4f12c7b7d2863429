"""The one place that knows the device mesh: multi-host start-up, shardings, global batches.

Every array in a run is a global `jax.Array` on a 1-D mesh named `data` over every device
of every process; `jax.jit` partitions the computation. Consequences the rest of the code
relies on:
- BatchNorm statistics are means over the *global* batch axis, so XLA all-reduces them and
  they do not depend on the number of devices.
- Random numbers (dropout, mixup) are drawn for global shapes with partitionable threefry:
  each device computes only its own slice (its own stream) and the values are the same for
  any device count.
"""

import collections
import os
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxvision.console import log

DATA_AXIS = "data"

# Environment variables that mean "this process is one of several started by a launcher".
_CLUSTER_ENV = {
    "SLURM": ("SLURM_NTASKS", "SLURM_JOB_ID"),
    "Open MPI": ("OMPI_COMM_WORLD_SIZE",),
    "MPI (PMI)": ("PMI_SIZE",),
    "Cloud TPU pod": ("TPU_WORKER_HOSTNAMES",),
}


def _detected_cluster() -> str | None:
    for name, keys in _CLUSTER_ENV.items():
        if all(k in os.environ for k in keys):
            size = os.environ.get(keys[0], "")
            if name == "Cloud TPU pod":
                if len(os.environ[keys[0]].split(",")) > 1:
                    return name
            elif size.isdigit() and int(size) > 1:
                return name
    return None


def initialize_distributed(
    coordinator_address: str = "", num_processes: int = 0, process_id: int = -1
) -> None:
    """Starts JAX's multi-process runtime when asked or when a cluster launcher is detected.

    Must run before anything touches a device. Explicit arguments win; otherwise SLURM, MPI
    and Cloud TPU pods are recognised from their environment and JAX detects the rest.
    """
    # CPU processes exchange collectives over gloo (GPU/TPU ignore this setting).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator_address or num_processes:
        if not (coordinator_address and num_processes > 0 and process_id >= 0):
            raise ValueError(
                "Multi-process runs need all of --coordinator_address=HOST:PORT, "
                "--num_processes=N and --process_id=I (got "
                f"{coordinator_address!r}, {num_processes}, {process_id})."
            )
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
        )
    elif (cluster := _detected_cluster()) is not None:
        log.info("Detected a %s launch: initialising jax.distributed.", cluster)
        jax.distributed.initialize()
    else:
        return
    log.info("Process %d of %d.", jax.process_index(), jax.process_count())


def set_cpu_devices(count: int) -> None:
    """Splits the host CPU into `count` XLA devices (0 keeps JAX's default); call before JAX runs.

    XLA:CPU runs a batched matmul (e.g. attention over short sequences) on one thread; with
    the batch split over one device per core two run side by side (`docs/performance.md`).
    """
    if count <= 0:
        return
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # the backend already started
        have = len(jax.devices("cpu"))
        if have == count:
            return
        raise ValueError(
            f"parallel.cpu_devices={count}, but JAX already started in this process with "
            f"{have} CPU device(s), and the count cannot change afterwards. Set it before "
            "the first JAX computation (in a notebook: restart the runtime and run training "
            "first), or leave parallel.cpu_devices at 0."
        ) from None


def make_mesh() -> Mesh:
    """A 1-D mesh over every device of every process, named `data`."""
    # Already the default; results independent of the device count depend on it.
    jax.config.update("jax_threefry_partitionable", True)
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`, everything else whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device (parameters and optimizer state)."""
    return NamedSharding(mesh, PartitionSpec())


def fsdp_spec(shape: tuple[int, ...], num_devices: int, min_size: int) -> PartitionSpec:
    """Splits the largest axis divisible by the device count over `data`; small or
    indivisible arrays stay replicated (their all-gather would cost more than it saves)."""
    if num_devices == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return PartitionSpec()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % num_devices == 0:
            spec = [None] * len(shape)
            spec[axis] = DATA_AXIS
            return PartitionSpec(*spec)
    return PartitionSpec()


def state_shardings(abstract_state: Any, mesh: Mesh, *, fsdp: bool, min_size: int) -> Any:
    """Shardings for every leaf of the train state: replicated, or FSDP for large leaves."""
    if not fsdp:
        return jax.tree.map(lambda _: replicated(mesh), abstract_state)
    n = mesh.shape[DATA_AXIS]
    return jax.tree.map(
        lambda x: NamedSharding(mesh, fsdp_spec(x.shape, n, min_size)), abstract_state
    )


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles this process's slice of a batch into global arrays sharded over `data`."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def prefetch_to_mesh(
    batches: Iterable[dict[str, np.ndarray]], mesh: Mesh, size: int = 2
) -> Iterator[dict[str, jax.Array]]:
    """Keeps `size` batches in flight on the devices so transfers overlap with compute."""
    queue: collections.deque = collections.deque()
    it = iter(batches)
    for local in it:
        queue.append(global_batch(local, mesh))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier `name` (no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is true on any (a collective: all must call it)."""
    if jax.process_count() == 1:
        return flag
    flags = multihost_utils.process_allgather(np.asarray(flag, np.int32))
    return bool(np.any(flags))
