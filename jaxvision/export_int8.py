"""Int8 kernels kept int8 in an export: the values and per-output-channel scales a compressed
workdir stores in weights.npz, dequantized inside the exported graph.

The compressed workdir's checkpoint holds the same weights dequantized to float32 (what
evaluate and predict read); an export of it would be as large as the float model's. Here
every kernel weights.npz holds as int8 (whatever the method that made it) becomes
`{"int8_values": int8, "scale": float32}` in the exported variables, so the artifact's
weights take about a quarter of the float bytes and the graph computes `values * scale`.
"""

import io
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision import workdir as workdir_lib
from jaxvision import workdir_files
from jaxvision.compression import kernels, storage

WEIGHTS_FILE = "weights.npz"  # written by jaxvision.compress next to checkpoints/
_VALUES, _SCALE = "int8_values", "scale"
# Largest |stored - checkpoint| allowed, relative to the kernel's largest |w|: both are the
# same int8 * scale product, so only float rounding may differ.
_MATCH_RTOL = 1e-6


def is_int8_kernel(node: Any) -> bool:
    """Whether a node of exported variables is an int8 kernel with its scales."""
    return isinstance(node, dict) and set(node) == {_VALUES, _SCALE}


def stored_int8_kernels(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The int8 kernels (values, scales) of a compressed workdir's weights.npz, by name
    ("params/conv0/kernel"); empty for a workdir without int8 kernels."""
    path = workdir_files.join(workdir, WEIGHTS_FILE)
    if not workdir or not workdir_files.exists(path):
        return {}
    return storage.read_int8_kernels(io.BytesIO(workdir_files.read_bytes(path)))


def int8_variables(run: workdir_lib.LoadedRun) -> dict[str, Any] | None:
    """`run.variables` with each kernel stored as int8 replaced by its int8 values and
    scales; None when the workdir stores no int8 kernels."""
    stored = stored_int8_kernels(run.workdir)
    if not stored:
        return None
    variables = jax.device_get(run.variables)
    found = set()

    def swap(path: tuple, leaf: Any) -> Any:
        name = kernels.layer_name(path)
        if name not in stored:
            return leaf
        values, scale = stored[name]
        _check_matches(run.workdir, name, values, scale, np.asarray(leaf))
        found.add(name)
        return {_VALUES: values, _SCALE: scale.astype(np.float32)}

    exported = jax.tree_util.tree_map_with_path(swap, variables)
    missing = sorted(set(stored) - found)
    if missing:
        raise workdir_lib.WorkdirError(
            f"{WEIGHTS_FILE} of {run.workdir} holds int8 kernels the model has no parameter "
            f"for: {', '.join(missing)}. Recompress the run (python -m jaxvision.compress)."
        )
    return exported


def _check_matches(workdir: str, name: str, values, scale, checkpointed: np.ndarray) -> None:
    """weights.npz and the checkpoint must hold the same kernel: refuse a stale file."""
    dequantized = values.astype(np.float32) * scale
    if dequantized.shape != checkpointed.shape:
        raise workdir_lib.WorkdirError(
            f"{WEIGHTS_FILE} of {workdir}: {name} has shape {dequantized.shape}, the "
            f"checkpoint {checkpointed.shape}. Recompress the run."
        )
    tolerance = _MATCH_RTOL * max(float(np.abs(checkpointed).max()), 1e-12)
    if float(np.abs(dequantized - checkpointed).max()) > tolerance:
        raise workdir_lib.WorkdirError(
            f"{WEIGHTS_FILE} of {workdir}: {name} differs from the checkpoint being "
            "exported (another checkpoint or EMA weights?). Export the compressed checkpoint "
            "itself, or recompress the run."
        )


def dequantize(variables: Any) -> Any:
    """Float32 variables from exported ones: int8 values times their scales (traceable)."""
    return jax.tree.map(
        lambda n: (
            jnp.asarray(n[_VALUES]).astype(jnp.float32) * n[_SCALE] if is_int8_kernel(n) else n
        ),
        variables,
        is_leaf=is_int8_kernel,
    )


def summary(variables: Any) -> dict[str, int]:
    """How many int8 kernels the exported variables hold and their bytes by dtype."""
    int8 = [n for n in jax.tree.leaves(variables, is_leaf=is_int8_kernel) if is_int8_kernel(n)]
    by_dtype: dict[str, int] = {}
    for leaf in jax.tree.leaves(variables):
        dtype = str(np.asarray(leaf).dtype)
        by_dtype[dtype] = by_dtype.get(dtype, 0) + int(np.asarray(leaf).nbytes)
    return {"count": len(int8), **{f"{k}_bytes": v for k, v in sorted(by_dtype.items())}}
