"""Reads google-research/big_transfer `.npz` checkpoints (BiT-S/M ResNet-V2) into the
parameter names of `resnet_v2.ResNetV2`.

The published files hold TensorFlow variable names: `resnet/root_block/...`,
`resnet/block{s}/unit{uu}/{a,b,c}/{standardized_conv2d,group_norm}/...` (the unit's three
pre-activated convs), `.../a/proj/standardized_conv2d/kernel` (the projection shortcut),
`resnet/group_norm/...` (before the head) and `resnet/head/conv2d/...` (a 1x1 conv head).
"""

import re

import numpy as np

from jaxvision.models.pretrained_npz import Flat

_PREFIX = "resnet/"
# Some published files number a conv's variable scope (`standardized_conv2d_1`).
_UNIT_RE = re.compile(
    r"^resnet/(block\d+)/(unit\d+)/([abc])/(proj/)?"
    r"(standardized_conv2d(?:_\d+)?/kernel|group_norm/gamma|group_norm/beta)$"
)
_LAYER = {"a": "1", "b": "2", "c": "3"}
_LEAF = {"kernel": "kernel", "gamma": "scale", "beta": "bias"}
_TOP = {
    "resnet/root_block/standardized_conv2d/kernel": "conv_root/kernel",
    "resnet/group_norm/gamma": "norm_pre_head/scale",
    "resnet/group_norm/beta": "norm_pre_head/bias",
    "resnet/head/conv2d/bias": "head/bias",
}


def is_bit_npz(flat: Flat) -> bool:
    """Whether an npz's keys are big_transfer's (`resnet/root_block/...`)."""
    return any(k.startswith(_PREFIX + "root_block/") for k in flat)


def bit_npz_to_variables(flat: Flat) -> dict[str, Flat]:
    """Maps a BiT npz to {"params": flat} in ResNetV2's names.

    Keys it does not recognise stay in, marked `(bit) KEY`, so the loader's mismatch table
    shows them instead of silently dropping weights.
    """
    params: Flat = {}
    for key, value in flat.items():
        m = _UNIT_RE.match(key)
        if m:
            block, unit, layer, proj, leaf = m.groups()
            leaf = _LEAF[leaf.rsplit("/", 1)[1]]
            module = "conv_proj" if proj else ("conv" if leaf == "kernel" else "gn") + _LAYER[layer]
            # GroupNorm scales are [C]; some exports keep TF's [1, 1, 1, C].
            params[f"{block}/{unit}/{module}/{leaf}"] = value if leaf == "kernel" else _vec(value)
        elif key in _TOP:
            params[_TOP[key]] = value if _TOP[key] == "conv_root/kernel" else _vec(value)
        elif key == "resnet/head/conv2d/kernel":
            # A 1x1 conv head [1, 1, C, K] on the pooled features is a Dense [C, K].
            params["head/kernel"] = value.reshape(value.shape[-2:])
        else:
            params[f"(bit) {key}"] = value
    return {"params": params}


def _vec(value: np.ndarray) -> np.ndarray:
    return np.reshape(value, (-1,))
