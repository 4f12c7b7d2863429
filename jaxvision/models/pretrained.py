"""Loads published pretrained weights into jaxvision models: `load_pretrained(path, model)`.

Reads, without unpickling anything:
- `.npz` from google-research/vision_transformer (ViT, R50+ViT and R+Ti hybrids; the
  parameter names jaxvision uses) and from big_vision (its renamed blocks, root
  `pos_embedding`, scanned `encoderblock` stacks), and npz files of jaxvision variables;
- `.npz` from google-research/big_transfer (BiT ResNet-V2, `pretrained_bit`);
- `.safetensors` state dicts of timm `VisionTransformer` and `ResNet` models.

Where files come from: `download(name)` fetches a catalog entry
(`jaxvision.models.pretrained_catalog`) into the weights cache (`jaxvision.weights_cache`);
`models.create(name, pretrained=...)` and `config.pretrained` also take `hf-hub:` names,
URLs, files and workdirs (`jaxvision.models.pretrained_source`).

Usage:
    model = create("vit_b16", num_classes=10, image_size=384)
    variables = load_pretrained("B_16-i21k-...-res_224.npz", model)
    logits = model.apply(variables, images, train=False)
"""

import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jaxvision.models.pretrained_bit import bit_npz_to_variables, is_bit_npz
from jaxvision.models.pretrained_npz import (
    POSEMB,
    CheckpointFileError,
    Flat,
    npz_to_variables,
    read_npz,
)
from jaxvision.models.pretrained_timm import (
    is_timm_resnet,
    is_timm_vit,
    read_safetensors,
    timm_resnet_to_variables,
    timm_vit_to_variables,
)

log = logging.getLogger(__name__)

Variables = dict[str, Any]


def load_pretrained(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    image_size: int | None = None,
    rng: jax.Array | None = None,
    channels: int | None = None,
) -> Variables:
    """Reads a checkpoint file into the variables dict `model.apply` takes.

    Always returns `{"params": ...}`, plus `"batch_stats"` when the model has BatchNorm.
    Position embeddings are resized to the model's grid, a head of another class count
    is replaced by the model's fresh initialisation (from `rng`, default PRNGKey(0)), and
    anything else that does not fit raises a ValueError listing every mismatch.
    `image_size` is the input resolution used to build the model's parameter shapes; it
    defaults to (and, for models with an `image_size` field, must equal) `model.image_size`.
    """
    path = Path(path)
    raw, kind = _read(path)
    return variables_from_arrays(
        raw, kind, model, path, image_size=image_size, rng=rng, channels=channels
    )


def variables_from_arrays(
    raw: Flat,
    kind: str,
    model: nn.Module,
    path: Any,
    *,
    image_size: int | None = None,
    rng: jax.Array | None = None,
    channels: int | None = None,
) -> Variables:
    """`load_pretrained` on arrays already read: `kind` "npz" (flat "/"-joined names, also
    jaxvision's own `params/...`) or "safetensors" (timm); `path` names them in messages.
    `channels`: input channels (default: read from the first conv of ViTs and ResNets)."""
    size = _image_size(model, image_size)
    channels = channels or _in_channels(raw)
    expected = _abstract_variables(model, size, channels)
    try:
        source = _to_variables(raw, kind, expected, path)
    except KeyError as e:
        raise ValueError(
            f"{path} is an incomplete {kind} checkpoint: key {e} is missing. "
            "Check that the file is a complete ViT or ResNet checkpoint."
        ) from e
    notes: list[str] = []
    if kind == "safetensors" and is_timm_vit(raw) and getattr(model, "gelu_approximate", False):
        notes.append(
            f"{path} holds timm weights, trained with the exact (erf) GELU, but the model uses "
            "the tanh approximation (logits move by ~3e-4 in a 2-block test ViT). Create it with "
            "gelu_approximate=False (see recommended_overrides) to compute what was trained."
        )
    source = _fit_to_model(source, expected, path, notes)
    _check(source, expected, path, model)
    reinit = [(c, k) for c, flat in source.items() for k, v in flat.items() if _is_placeholder(v)]
    if reinit:
        # Only now, once the file is known to fit: a full init costs a forward pass.
        key = jax.random.PRNGKey(0) if rng is None else rng
        dummy = jnp.zeros((1, size, size, channels), jnp.float32)
        fresh = jax.jit(lambda k: model.init(k, dummy, train=False))(key)
        fresh = {c: _flatten(v) for c, v in fresh.items()}
        for c, k in reinit:
            source[c][k] = fresh[c][k]
    for note in notes:
        log.warning("load_pretrained: %s", note)
    return {
        c: traverse_util.unflatten_dict(
            {tuple(k.split("/")): jnp.asarray(v, expected[c][k].dtype) for k, v in flat.items()}
        )
        for c, flat in source.items()
    }


def recommended_overrides(path: str | os.PathLike) -> dict[str, Any]:
    """Model overrides under which the weights in `path` compute the function they were
    trained as: `gelu_approximate=False` for timm ViTs (PyTorch's exact GELU), else none.

    Reads only the names of a safetensors file's tensors; an unreadable file gives {} (and
    `load_pretrained` then reports what is wrong with it).
    """
    path = Path(path)
    if path.suffix.lower() == ".npz":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            keys = list(f.keys())
    except Exception:  # any unreadable file: load_pretrained explains what is wrong
        return {}
    return {"gelu_approximate": False} if is_timm_vit(dict.fromkeys(keys)) else {}


def resize_posemb_grid(grid: np.ndarray, new_hw: tuple[int, int]) -> np.ndarray:
    """Bilinearly resizes a position-embedding grid [h, w, D] to [*new_hw, D]."""
    out = jax.image.resize(
        jnp.asarray(grid, jnp.float32), (*new_hw, grid.shape[-1]), method="bilinear"
    )
    return np.asarray(out)


def _read(path: Path) -> tuple[Flat, str]:
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint file {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix in (".pth", ".pt", ".bin", ".ckpt", ".pkl"):
        raise CheckpointFileError(
            f"{path} looks like a pickled PyTorch/Python checkpoint; those are not loaded "
            "because unpickling can run arbitrary code. Convert it to safetensors: "
            "safetensors.torch.save_file(torch.load(f, weights_only=True), 'model.safetensors')."
        )
    if suffix == ".npz":
        return read_npz(path), "npz"
    if suffix == ".safetensors":
        return read_safetensors(path), "safetensors"
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic.startswith(b"PK"):
        return read_npz(path), "npz"
    try:
        return read_safetensors(path), "safetensors"
    except CheckpointFileError as e:
        raise CheckpointFileError(
            f"{path} is neither an .npz nor a .safetensors checkpoint ({e})."
        ) from e


def _image_size(model: nn.Module, image_size: int | None) -> int:
    own = getattr(model, "image_size", None)
    if image_size is None:
        return own if isinstance(own, int) else 224
    if isinstance(own, int) and own != image_size:
        raise ValueError(
            f"load_pretrained(image_size={image_size}) but the model was built for "
            f"image_size={own}, so it could not apply the result. Create the model with "
            f"image_size={image_size}; position embeddings are resized to its grid."
        )
    return image_size


def _in_channels(raw: Flat) -> int:
    """Input channels of the checkpoint's first conv (HWIO in npz, OIHW in timm)."""
    # The hybrid's ResNet root comes before its `embedding`, so it is looked at first.
    for key, axis in (
        ("conv_root/kernel", 2),
        ("resnet/root_block/standardized_conv2d/kernel", 2),
        ("params/conv_root/kernel", 2),
        ("stem_conv/kernel", 2),
        ("params/stem_conv/kernel", 2),
        ("embedding/kernel", 2),
        ("params/embedding/kernel", 2),
        ("patch_embed.proj.weight", 1),
        ("conv1.weight", 1),
    ):
        if key in raw and raw[key].ndim == 4:
            return int(raw[key].shape[axis])
    return 3


def _flatten(tree: Any) -> Flat:
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def _abstract_variables(model: nn.Module, size: int, channels: int) -> dict[str, Flat]:
    """Shapes and dtypes of the model's variables, without computing anything."""
    dummy = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), dummy)
    return {c: _flatten(v) for c, v in shapes.items()}


def _to_variables(raw: Flat, kind: str, expected: dict[str, Flat], path: Path) -> dict[str, Flat]:
    if kind == "npz":
        return bit_npz_to_variables(raw) if is_bit_npz(raw) else npz_to_variables(raw)
    params = expected.get("params", {})
    if is_timm_vit(raw):
        heads = [v.shape[1] for k, v in params.items() if k.endswith("/query/kernel")]
        variables, unused = timm_vit_to_variables(raw, heads[0] if heads else 1)
    elif is_timm_resnet(raw):
        variables, unused = timm_resnet_to_variables(raw)
    else:
        raise ValueError(
            f"{path} is a safetensors file but not a timm ViT or ResNet state dict "
            f"(first keys: {', '.join(sorted(raw)[:5])}). Supported: timm VisionTransformer "
            "(patch_embed/blocks/norm/head) and ResNet (conv1/bn1/layer1..4/fc)."
        )
    # Keys the converter did not recognise stay visible in the mismatch table.
    variables["params"].update({f"(timm) {k}": v for k, v in unused.items()})
    return variables


def _fit_to_model(
    source: dict[str, Flat],
    expected: dict[str, Flat],
    path: Path,
    notes: list[str],
) -> dict[str, Flat]:
    """Adapts layout differences that keep the function: scan, posemb, head, squeezed dims.

    A head that does not fit becomes shape placeholders, filled from a fresh init later.
    """
    params = dict(source.get("params", {}))
    want = expected.get("params", {})
    if any(k.startswith("Transformer/encoderblock/") for k in want):
        params = _scan_blocks(params)
    if POSEMB in params and POSEMB in want:
        params[POSEMB] = _fit_posemb(params[POSEMB], want[POSEMB].shape, path)
    if "pre_logits/kernel" in params and "pre_logits/kernel" not in want:
        notes.append(f"{path} has a pre_logits layer the model lacks; dropped it.")
        params = {k: v for k, v in params.items() if not k.startswith("pre_logits/")}
    head_keys = [k for k in want if k.startswith("head/")]
    if any(k not in params or params[k].shape != want[k].shape for k in head_keys):
        found = params.get("head/kernel")
        notes.append(
            f"the head of {path} "
            + ("is absent" if found is None else f"has kernel {tuple(found.shape)}")
            + f", the model's is {tuple(want['head/kernel'].shape)}: keeping the model's "
            "freshly initialised head."
        )
        params = {k: v for k, v in params.items() if not k.startswith("head/")}
        params.update({k: jax.ShapeDtypeStruct(want[k].shape, want[k].dtype) for k in head_keys})
    out = {"params": params}
    if "batch_stats" in source:
        out["batch_stats"] = dict(source["batch_stats"])
    for c, flat in out.items():
        for k, v in flat.items():
            target = expected.get(c, {}).get(k)
            # Old checkpoints store GroupNorm scale/bias as [1, 1, 1, C].
            if (
                target is not None
                and not _is_placeholder(v)
                and _same_up_to_unit_dims(v.shape, target.shape)
            ):
                flat[k] = np.reshape(v, target.shape)
    return out


def _is_placeholder(value: Any) -> bool:
    return isinstance(value, jax.ShapeDtypeStruct)


def _same_up_to_unit_dims(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return a != b and tuple(d for d in a if d != 1) == tuple(d for d in b if d != 1)


def _scan_blocks(params: Flat) -> Flat:
    """Stacks `encoderblock_{i}` leaves on a leading depth axis (the `nn.scan` layout)."""
    prefix = "Transformer/encoderblock_"
    per_leaf: dict[str, dict[int, np.ndarray]] = {}
    out: Flat = {}
    for key, value in params.items():
        if key.startswith(prefix):
            index, _, leaf = key[len(prefix) :].partition("/")
            per_leaf.setdefault(leaf, {})[int(index)] = value
        else:
            out[key] = value
    for leaf, layers in per_leaf.items():
        shapes = {v.shape for v in layers.values()}
        if sorted(layers) != list(range(len(layers))) or len(shapes) != 1:
            # Cannot stack a gappy or ragged set; leave it to the mismatch table.
            out.update({f"{prefix}{i}/{leaf}": v for i, v in layers.items()})
            continue
        out[f"Transformer/encoderblock/{leaf}"] = np.stack([layers[i] for i in sorted(layers)])
    return out


def _split_tokens(n: int) -> tuple[int, int]:
    """(extra tokens, grid side) for a posemb of n positions: n = extra + side**2."""
    side = math.isqrt(n)
    return n - side * side, side


def _fit_posemb(pe: np.ndarray, shape: tuple[int, ...], path: Path) -> np.ndarray:
    """Resizes the grid part of a [1, T, D] posemb; the class-token position stays apart."""
    if pe.ndim != 3 or pe.shape[-1] != shape[-1]:
        return pe  # a different width: reported as mis-shaped
    extra, side = _split_tokens(pe.shape[1])
    extra_new, side_new = _split_tokens(shape[1])
    if extra > 1 or extra_new > 1:
        return pe
    tok, grid = pe[:, :extra], pe[0, extra:]
    if extra_new > extra:
        # big_vision/timm grids without a class position: the class token had no offset.
        tok = np.zeros((1, 1, pe.shape[-1]), pe.dtype)
    tok = tok[:, :extra_new]
    if side != side_new:
        log.info(
            "load_pretrained: resizing posemb grid of %s from %d^2 to %d^2", path, side, side_new
        )
        grid = resize_posemb_grid(grid.reshape(side, side, -1), (side_new, side_new))
    grid = grid.reshape(1, side_new * side_new, -1).astype(pe.dtype)
    return np.concatenate([tok, grid], axis=1)


def _check(source: dict[str, Flat], expected: dict[str, Flat], path: Path, model: Any) -> None:
    """Raises a ValueError with a table of missing, unexpected and mis-shaped variables."""
    rows: list[tuple[str, str, str, str]] = []
    for c in sorted(set(source) | set(expected)):
        have, want = source.get(c, {}), expected.get(c, {})
        prefix = "" if c == "params" else f"{c}/"
        for k in sorted(set(have) | set(want)):
            got = tuple(have[k].shape) if k in have else None
            exp = tuple(want[k].shape) if k in want else None
            if got == exp:
                continue
            what = "missing" if got is None else "unexpected" if exp is None else "mis-shaped"
            rows.append((what, prefix + k, str(exp or "-"), str(got or "-")))
    if not rows:
        return
    counts = {w: sum(r[0] == w for r in rows) for w in ("missing", "unexpected", "mis-shaped")}
    rows = _collapse_blocks(rows)
    limit = 40
    width = min(max(len(r[1]) for r in rows), 80)
    lines = [f"{'':10}  {'key':{width}}  {'model expects':18}  {'file has':18}"]
    lines += [f"{w:10}  {k:{width}}  {e:18}  {g:18}" for w, k, e, g in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"... and {len(rows) - limit} more")
    raise ValueError(
        f"Checkpoint {path} does not fit the model {type(model).__name__} "
        f"({', '.join(f'{n} {w}' for w, n in counts.items())}):\n"
        + "\n".join(lines)
        + _describe(source.get("params", {}))
        + "\nCreate the model with the checkpoint's architecture (width, depth, heads, "
        "patch size, pool, representation_size, ResNet depth); the head, position-embedding "
        "grid and scan layout are adapted automatically."
    )


def _collapse_blocks(rows: list[tuple[str, str, str, str]]) -> list[tuple[str, str, str, str]]:
    """Merges rows that differ only in the block index: `encoderblock_{0-11}/...`."""
    groups: dict[tuple[str, str, str, str], list[int]] = {}
    for what, key, exp, got in rows:
        m = re.search(r"encoderblock_(\d+)/", key)
        pattern = key if m is None else key[: m.start(1)] + "{}" + key[m.end(1) :]
        groups.setdefault((what, pattern, exp, got), []).append(-1 if m is None else int(m[1]))
    out = []
    for (what, pattern, exp, got), idx in groups.items():
        if idx != [-1]:
            span = f"{idx[0]}" if len(idx) == 1 else f"{{{min(idx)}-{max(idx)}}}"
            if len(idx) > 1 and sorted(idx) != list(range(min(idx), max(idx) + 1)):
                span = "{" + ",".join(map(str, sorted(idx))) + "}"
            pattern = pattern.replace("{}", span)
        out.append((what, pattern, exp, got))
    order = {"mis-shaped": 0, "missing": 1, "unexpected": 2}
    return sorted(out, key=lambda r: (order[r[0]], r[1]))


def _describe(params: Flat) -> str:
    """One line on the architecture the file holds, to help pick the right model."""
    emb = params.get("embedding/kernel")
    if emb is not None and emb.ndim == 4:
        blocks = {k.split("/")[1] for k in params if k.startswith("Transformer/encoderblock_")}
        stacked = params.get("Transformer/encoderblock/LayerNorm_0/scale")
        depth = len(blocks) if blocks else (0 if stacked is None else stacked.shape[0])
        heads = [v.shape[-2] for k, v in params.items() if k.endswith("query/kernel")]
        mlp = [v.shape[-1] for k, v in params.items() if k.endswith("Dense_0/kernel")]
        return (
            f"\nThe file holds a ViT with hidden_size={emb.shape[-1]}, depth={depth}, "
            f"num_heads={heads[0] if heads else '?'}, mlp_dim={mlp[0] if mlp else '?'}, "
            f"patch_size={emb.shape[0]}, pool={'token' if 'cls' in params else 'gap/map'}."
        )
    stages = {}
    for k in params:
        if k.startswith("stage") and "_block" in k:
            stage, block = k.split("/")[0][len("stage") :].split("_block")
            stages[int(stage)] = max(stages.get(int(stage), 0), int(block))
    if stages:
        per_stage = tuple(stages[s] for s in sorted(stages))
        return f"\nThe file holds a ResNet with blocks per stage {per_stage}."
    root = params.get("conv_root/kernel")
    if "norm_pre_head/scale" in params and root is not None and root.ndim == 4:
        units: dict[int, set[str]] = {}
        for k in params:
            if m := re.match(r"block(\d+)/(unit\d+)/", k):
                units.setdefault(int(m[1]), set()).add(m[2])
        per_stage = tuple(len(units[s]) for s in sorted(units))
        return (
            f"\nThe file holds a BiT ResNet-V2 (bit_r50x1 family) with stage_sizes={per_stage}, "
            f"width={root.shape[-1] / 64:g}."
        )
    return ""
