"""The compressed weight file: int8 kernels with their scales, sparse kernels as a bitmask
plus their non-zero values (when that is smaller), everything else float32; an
uncompressed `.npz`, so its size on disk is the real parameter size.

Entries, by "/"-joined parameter path NAME (e.g. `params/conv0/kernel`):
- `NAME.values`: the array (int8 for a quantized kernel), or only its non-zero values when
  `NAME.bits` (np.packbits of the non-zero mask, C order) and `NAME.shape` are present;
- `NAME.scale`: float32 per-output-channel scale of an int8 kernel (w = values * scale,
  broadcast; the scale keeps the kernel's rank with size 1 on the input axes);
- `act_scales/<module path>/<op>_scale.values`: int8 models with static activation scales
  (`compress --method=int8`) only: the float32 scale of the int8 input of that layer's op
  (qwix's names, e.g. `act_scales/conv0/conv_general_dilated0_lhs_scale`): the input is
  quantized as clip(round(x / scale), -128, 127).
"""

from typing import Any, BinaryIO

import jax
import numpy as np
import qwix

from jaxvision.compression import kernels, quantize, quantized_model


def _is_leaf(x: Any) -> bool:
    return quantize.is_quantized(x) or quantized_model.is_quantized_param(x)


def _flat(tree: Any, prefix: str) -> list[tuple[str, tuple, Any]]:
    """(NAME, path, leaf); a PTQ model's parameters unwrapped: its int8 kernels as kernels,
    its static input scales under `act_scales/`."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_leaf)[0]:
        name = f"{prefix}/{kernels.layer_name(path)}"
        if quantized_model.is_quantized_param(leaf):
            leaf = leaf.array
            if not quantize.is_quantized(leaf):
                name = f"act_scales/{kernels.layer_name(path)}"
        out.append((name, path, leaf))
    return out


def _sparse_is_smaller(values: np.ndarray) -> bool:
    """Whether a bitmask plus the non-zero values takes fewer bytes than the dense array."""
    nonzero = int(np.count_nonzero(values))
    return (values.size + 7) // 8 + nonzero * values.itemsize < values.nbytes


def encode(params: Any, batch_stats: Any, *, sparse: bool = True) -> dict[str, np.ndarray]:
    """The arrays of the weight file. `params` may hold int8 kernels (`quantize_kernels`);
    with `sparse`, a kernel is stored as a bitmask of non-zeros plus those values when
    that is smaller."""
    arrays = {}
    for name, path, leaf in _flat(params, "params") + _flat(batch_stats or {}, "batch_stats"):
        if quantize.is_quantized(leaf):
            values = np.asarray(leaf.qvalue)
            arrays[f"{name}.scale"] = np.asarray(leaf.scale)
        else:
            values = np.asarray(leaf)
        is_kernel = kernels.output_axes(path, values.shape) is not None
        if sparse and is_kernel and name.startswith("params/") and _sparse_is_smaller(values):
            nonzero = values != 0
            arrays[f"{name}.shape"] = np.asarray(values.shape, np.int64)
            arrays[f"{name}.bits"] = np.packbits(nonzero.ravel())
            arrays[f"{name}.values"] = values[nonzero]
        else:
            arrays[f"{name}.values"] = values
    return arrays


def write(path: str, params: Any, batch_stats: Any, *, sparse: bool = True) -> int:
    """Writes the weight file; returns its size in bytes."""
    import os

    with open(path, "wb") as f:
        np.savez(f, **encode(params, batch_stats, sparse=sparse))
    return os.path.getsize(path)


def _stored_values(arrays: dict[str, np.ndarray], name: str) -> np.ndarray:
    """The dense array as stored (int8 for a quantized kernel), bitmasks expanded."""
    values = arrays[f"{name}.values"]
    if f"{name}.bits" in arrays:
        shape = tuple(int(d) for d in arrays[f"{name}.shape"])
        nonzero = np.unpackbits(arrays[f"{name}.bits"], count=int(np.prod(shape))).astype(bool)
        dense = np.zeros(nonzero.size, values.dtype)
        dense[nonzero] = values
        values = dense.reshape(shape)
    return values


def _decode_one(arrays: dict[str, np.ndarray], name: str) -> np.ndarray:
    values = _stored_values(arrays, name)
    if f"{name}.scale" in arrays:
        qarray = qwix.QArray(values, arrays[f"{name}.scale"], None, np.int8)
        values = np.asarray(qwix.dequantize(qarray))
    return values


def read(path: str) -> dict[str, dict]:
    """{"params": ..., "batch_stats": ...} as float32 nested dicts, from a weight file (and
    "act_scales" when it has static activation scales)."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    names = sorted({k.rsplit(".", 1)[0] for k in arrays})
    out: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for name in names:
        node = out
        *parents, leaf = name.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _decode_one(arrays, name)
    return out


def read_int8_kernels(file: str | BinaryIO) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"params/conv0/kernel": (int8 values, float32 scales)} of every int8 kernel in a
    weight file (a path or an open file; dense, bitmasks expanded); empty if it holds none."""
    with np.load(file, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    names = sorted(k.removesuffix(".scale") for k in arrays if k.endswith(".scale"))
    return {n: (_stored_values(arrays, n), arrays[f"{n}.scale"]) for n in names}
