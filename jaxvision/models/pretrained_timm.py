"""Reads timm `.safetensors` state dicts (ViT, ResNet) into jaxvision's flat naming.

PyTorch stores convs as OIHW and linears as [out, in]; Flax wants HWIO and [in, out].
timm fuses q/k/v into one `attn.qkv` linear whose outputs are ordered (q|k|v, head,
head_dim), which is split here into the per-head DenseGeneral kernels of
`MultiHeadDotProductAttention`.
"""

import re
from pathlib import Path

import numpy as np

from jaxvision.models.pretrained_npz import POSEMB, CheckpointFileError, Flat


def read_safetensors(path: Path) -> Flat:
    """Every tensor of a `.safetensors` file as a NumPy array (no pickle is involved)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except TypeError as e:
        if "bfloat16" not in str(e):
            raise CheckpointFileError(f"{path} is not a readable .safetensors file ({e}).") from e
        return _read_bfloat16(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointFileError(
            f"{path} is not a readable .safetensors file ({e}). A truncated download also "
            "looks like this: download it again."
        ) from e


def _read_bfloat16(path: Path) -> Flat:
    """NumPy has no bfloat16, so such files go through JAX and come out as float32."""
    from safetensors import safe_open

    with safe_open(str(path), framework="flax") as f:
        arrays = {k: np.asarray(f.get_tensor(k)) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    return {k: v.astype(np.float32) if v.dtype.name == "bfloat16" else v for k, v in arrays.items()}


def is_timm_vit(sd: Flat) -> bool:
    """Whether a state dict has timm VisionTransformer keys."""
    return "patch_embed.proj.weight" in sd or any(k.startswith("blocks.") for k in sd)


def is_timm_resnet(sd: Flat) -> bool:
    """Whether a state dict has timm/torchvision ResNet keys."""
    return "conv1.weight" in sd and any(k.startswith("layer1.") for k in sd)


def _conv(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 1, 0))  # OIHW -> HWIO


def _linear(prefix: str, sd: Flat, out: Flat, name: str) -> None:
    out[f"{name}/kernel"] = sd.pop(f"{prefix}.weight").T
    if f"{prefix}.bias" in sd:
        out[f"{name}/bias"] = sd.pop(f"{prefix}.bias")


def _norm(prefix: str, sd: Flat, out: Flat, name: str) -> None:
    out[f"{name}/scale"] = sd.pop(f"{prefix}.weight")
    out[f"{name}/bias"] = sd.pop(f"{prefix}.bias")


def _heads_in(w: np.ndarray, num_heads: int) -> np.ndarray:
    """A torch [D_out, D_in] projection to a DenseGeneral kernel [D_in, H, Dh]."""
    return w.T.reshape(w.shape[1], num_heads, w.shape[0] // num_heads)


def _mhsa(prefix: str, sd: Flat, out: Flat, name: str, num_heads: int) -> None:
    """Fused `qkv` + `proj` of a timm Attention -> query/key/value/out of ours."""
    w = sd.pop(f"{prefix}.qkv.weight")
    b = sd.pop(f"{prefix}.qkv.bias", None)
    width = w.shape[1]
    for i, part in enumerate(("query", "key", "value")):
        out[f"{name}/{part}/kernel"] = _heads_in(w[i * width : (i + 1) * width], num_heads)
        if b is not None:
            out[f"{name}/{part}/bias"] = b[i * width : (i + 1) * width].reshape(num_heads, -1)
    _attention_out(f"{prefix}.proj", sd, out, name, num_heads)


def _attention_out(prefix: str, sd: Flat, out: Flat, name: str, num_heads: int) -> None:
    w = sd.pop(f"{prefix}.weight")  # [D_out, H*Dh]; input features are ordered (head, dim)
    out[f"{name}/out/kernel"] = w.T.reshape(num_heads, w.shape[1] // num_heads, w.shape[0])
    out[f"{name}/out/bias"] = sd.pop(f"{prefix}.bias")


def _map_head(sd: Flat, out: Flat, num_heads: int) -> None:
    """timm AttentionPoolLatent (`attn_pool.*`) -> big_vision MAPHead_0."""
    p, name = "attn_pool", "MAPHead_0"
    out[f"{name}/probe"] = sd.pop(f"{p}.latent")
    attn = f"{name}/MultiHeadDotProductAttention_0"
    w, b = sd.pop(f"{p}.q.weight"), sd.pop(f"{p}.q.bias")
    out[f"{attn}/query/kernel"] = _heads_in(w, num_heads)
    out[f"{attn}/query/bias"] = b.reshape(num_heads, -1)
    w, b = sd.pop(f"{p}.kv.weight"), sd.pop(f"{p}.kv.bias")
    width = w.shape[1]
    for i, part in enumerate(("key", "value")):
        out[f"{attn}/{part}/kernel"] = _heads_in(w[i * width : (i + 1) * width], num_heads)
        out[f"{attn}/{part}/bias"] = b[i * width : (i + 1) * width].reshape(num_heads, -1)
    _attention_out(f"{p}.proj", sd, out, attn, num_heads)
    _norm(f"{p}.norm", sd, out, f"{name}/LayerNorm_0")
    _linear(f"{p}.mlp.fc1", sd, out, f"{name}/MlpBlock_0/Dense_0")
    _linear(f"{p}.mlp.fc2", sd, out, f"{name}/MlpBlock_0/Dense_1")


def timm_vit_to_variables(state_dict: Flat, num_heads: int) -> tuple[dict[str, Flat], Flat]:
    """Maps a timm ViT state dict to {"params": flat}; returns the keys it did not use."""
    sd = dict(state_dict)
    out: Flat = {}
    out["embedding/kernel"] = _conv(sd.pop("patch_embed.proj.weight"))
    out["embedding/bias"] = sd.pop("patch_embed.proj.bias")
    if "cls_token" in sd:
        out["cls"] = sd.pop("cls_token")
    if "pos_embed" in sd:
        out[POSEMB] = sd.pop("pos_embed")
    depth = 1 + max(
        (int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1
    )
    for i in range(depth):
        p, name = f"blocks.{i}", f"Transformer/encoderblock_{i}"
        _norm(f"{p}.norm1", sd, out, f"{name}/LayerNorm_0")
        _mhsa(f"{p}.attn", sd, out, f"{name}/MultiHeadDotProductAttention_1", num_heads)
        _norm(f"{p}.norm2", sd, out, f"{name}/LayerNorm_2")
        _linear(f"{p}.mlp.fc1", sd, out, f"{name}/MlpBlock_3/Dense_0")
        _linear(f"{p}.mlp.fc2", sd, out, f"{name}/MlpBlock_3/Dense_1")
    if "norm.weight" in sd:
        _norm("norm", sd, out, "Transformer/encoder_norm")
    if "attn_pool.latent" in sd:
        _map_head(sd, out, num_heads)
    if "pre_logits.fc.weight" in sd:
        _linear("pre_logits.fc", sd, out, "pre_logits")
    if "head.weight" in sd:
        _linear("head", sd, out, "head")
    return {"params": out}, sd


def timm_resnet_to_variables(state_dict: Flat) -> tuple[dict[str, Flat], Flat]:
    """Maps a timm ResNet state dict to {"params", "batch_stats"}; returns unused keys."""
    sd = dict(state_dict)
    params: Flat = {}
    stats: Flat = {}

    def bn(prefix: str, name: str) -> None:
        params[f"{name}/scale"] = sd.pop(f"{prefix}.weight")
        params[f"{name}/bias"] = sd.pop(f"{prefix}.bias")
        stats[f"{name}/mean"] = sd.pop(f"{prefix}.running_mean")
        stats[f"{name}/var"] = sd.pop(f"{prefix}.running_var")
        sd.pop(f"{prefix}.num_batches_tracked", None)  # a training counter, not a weight

    params["stem_conv/kernel"] = _conv(sd.pop("conv1.weight"))
    bn("bn1", "stem_bn")
    blocks = sorted(
        {
            (int(m.group(1)), int(m.group(2)))
            for k in sd
            if (m := re.match(r"layer(\d)\.(\d+)\.", k))
        }
    )
    for stage, block in blocks:
        p, name = f"layer{stage}.{block}", f"stage{stage}_block{block + 1}"
        for j in (1, 2, 3):
            if f"{p}.conv{j}.weight" in sd:
                params[f"{name}/conv{j}/kernel"] = _conv(sd.pop(f"{p}.conv{j}.weight"))
                bn(f"{p}.bn{j}", f"{name}/bn{j}")
        if f"{p}.downsample.0.weight" in sd:
            params[f"{name}/proj_conv/kernel"] = _conv(sd.pop(f"{p}.downsample.0.weight"))
            bn(f"{p}.downsample.1", f"{name}/proj_bn")
    if "fc.weight" in sd:
        _linear("fc", sd, params, "head")
    return {"params": params, "batch_stats": stats}, sd
