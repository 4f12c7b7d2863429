"""Reads published `.npz` checkpoints into jaxvision's flat parameter naming.

Understands the google-research/vision_transformer layout (ViT, R50+ViT hybrids: the
names jaxvision uses), the big_vision layout (`MultiHeadDotProductAttention_0`,
`MlpBlock_0`, root `pos_embedding`, scanned `encoderblock` stacks) and npz files of
jaxvision's own variables (`params/...`, `batch_stats/...`).
"""

import logging
import re
import zipfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

Flat = dict[str, np.ndarray]

POSEMB = "Transformer/posembed_input/pos_embedding"

# big_vision numbers the submodules of a block per type, vision_transformer counted
# across types (pre-Linen naming), so the same block has different names.
_BIG_VISION_BLOCK = {
    "LayerNorm_0": "LayerNorm_0",
    "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
    "LayerNorm_1": "LayerNorm_2",
    "MlpBlock_0": "MlpBlock_3",
}
_BLOCK_RE = re.compile(r"^Transformer/(encoderblock(?:_\d+)?)/([^/]+)/(.*)$")
_OTHER_COLLECTIONS = ("opt", "opt_state", "state", "step")
_MAP_HEAD_PARTS = ("probe", "MultiHeadDotProductAttention_0", "LayerNorm_0", "MlpBlock_0")


class CheckpointFileError(ValueError):
    """The file is not a checkpoint this loader can read (wrong format, damaged, pickled)."""


def read_npz(path: Path) -> Flat:
    """Every array of an `.npz` file by its key; never unpickles anything."""
    if not zipfile.is_zipfile(path):
        raise CheckpointFileError(
            f"{path} is not an .npz file (no zip archive found; a truncated download also "
            "looks like this). Expected a checkpoint from google-research/vision_transformer "
            "or big_vision (.npz) or a timm .safetensors file; download it again."
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except ValueError as e:
        if "allow_pickle" in str(e) or "pickled" in str(e):
            raise CheckpointFileError(
                f"{path} holds pickled Python objects (object arrays). They are never "
                "unpickled because that can run arbitrary code; re-save the checkpoint with "
                "plain numeric arrays (np.savez with one array per parameter)."
            ) from e
        raise CheckpointFileError(f"{path} is a damaged .npz file: {e}") from e
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise CheckpointFileError(
            f"{path} is a damaged or truncated .npz file ({e}); download it again."
        ) from e


def npz_to_variables(flat: Flat) -> dict[str, Flat]:
    """Maps a published npz's keys to jaxvision names: {"params": flat, "batch_stats": flat}.

    Transformer blocks come out unscanned (`encoderblock_{i}`) and the position embedding
    at `Transformer/posembed_input/pos_embedding` with whatever token count the file had.
    """
    collections: dict[str, Flat] = {"params": {}, "batch_stats": {}}
    for key, value in flat.items():
        head, _, rest = key.partition("/")
        if head in ("params", "batch_stats") and rest:
            collections[head][rest] = value
        elif head in _OTHER_COLLECTIONS:
            log.info("load_pretrained: ignoring %s (not model variables).", key)
        else:
            collections["params"][key] = value
    params = _unscan_blocks(collections["params"])
    params = _rename_big_vision(params)
    out = {"params": params}
    if collections["batch_stats"]:
        out["batch_stats"] = collections["batch_stats"]
    return out


def _unscan_blocks(params: Flat) -> Flat:
    """Splits a scanned `Transformer/encoderblock` stack (leading depth axis) into blocks."""
    prefix = "Transformer/encoderblock/"
    out: Flat = {}
    for key, value in params.items():
        if key.startswith(prefix):
            for i, layer in enumerate(value):
                out[f"Transformer/encoderblock_{i}/{key[len(prefix) :]}"] = layer
        else:
            out[key] = value
    return out


def _rename_big_vision(params: Flat) -> Flat:
    """big_vision -> vision_transformer names (blocks, root pos_embedding, inlined MAP head)."""
    block_modules = {m.group(2) for k in params if (m := _BLOCK_RE.match(k))}
    big_vision = "MlpBlock_0" in block_modules or "LayerNorm_1" in block_modules
    inlined_map_head = "probe" in params
    out: Flat = {}
    for key, value in params.items():
        m = _BLOCK_RE.match(key)
        if big_vision and m and m.group(2) in _BIG_VISION_BLOCK:
            key = f"Transformer/{m.group(1)}/{_BIG_VISION_BLOCK[m.group(2)]}/{m.group(3)}"
        elif key in ("pos_embedding", "Transformer/pos_embedding"):
            # big_vision adds posemb before prepending [cls]: a grid without a cls position.
            key = POSEMB
        elif inlined_map_head and key.split("/")[0] in _MAP_HEAD_PARTS:
            # MAP-head checkpoints from ViT-G development had the head inlined at the root.
            key = f"MAPHead_0/{key}"
        out[key] = value
    return out
