"""Logits of a whole eval split, every example exactly once, on every process."""

import functools
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec

from jaxvision import backend, data, parallel


def _local_rows(x: jax.Array, mesh: Any) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in its local order."""
    spec = PartitionSpec(parallel.DATA_AXIS)
    return np.asarray(multihost_utils.global_array_to_host_local_array(x, mesh, spec))


def forward_split(
    model: Any, variables: dict, eval_data: data.EvalData, mesh: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Labels [N] and logits [N, K] of every (unpadded) example of an eval split, in the
    split's order, on every process (a collective: all processes must call it)."""

    @functools.partial(
        backend.jit,
        in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
        out_shardings=parallel.batch_sharding(mesh),
    )
    def forward(variables, batch):
        logits = backend.forward(model, variables, batch["image"])
        return logits, batch["label"], batch["mask"]

    variables = jax.device_put(variables, parallel.replicated(mesh))
    local = []  # this process's rows of every batch: its contiguous shard of the split
    for batch in eval_data:
        local.append([_local_rows(x, mesh) for x in forward(variables, batch)])
    logits, labels, mask = (np.concatenate(parts) for parts in zip(*local, strict=True))
    if jax.process_count() > 1:
        # Every process holds the same number of rows (padded with mask 0); stacking them in
        # process order restores the split's order, since process i read its i-th shard.
        logits, labels, mask = (
            np.concatenate(list(x))
            for x in multihost_utils.process_allgather((logits, labels, mask))
        )
    keep = mask > 0
    return labels[keep].astype(np.int64), logits[keep]
