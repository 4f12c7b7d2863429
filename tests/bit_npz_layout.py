"""Writes jaxvision ResNetV2 parameters in the google-research/big_transfer npz layout, so
tests can build files shaped like the published BiT checkpoints (which cannot be
downloaded here). Written from the published key names, independently of the loader."""

import numpy as np

_LAYER = {"1": "a", "2": "b", "3": "c"}
_GN_LEAF = {"scale": "gamma", "bias": "beta"}


def to_bit_npz(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`{"conv_root/kernel": ..., "block1/unit01/gn1/scale": ...}` -> BiT npz arrays."""
    out = {}
    for key, value in params.items():
        parts = key.split("/")
        if key == "conv_root/kernel":
            out["resnet/root_block/standardized_conv2d/kernel"] = value
        elif parts[0] == "norm_pre_head":
            out[f"resnet/group_norm/{_GN_LEAF[parts[1]]}"] = value
        elif key == "head/kernel":
            out["resnet/head/conv2d/kernel"] = value[None, None]  # a 1x1 conv [1, 1, C, K]
        elif key == "head/bias":
            out["resnet/head/conv2d/bias"] = value
        else:
            block, unit, module, leaf = parts
            unit_path = f"resnet/{block}/{unit}"
            if module == "conv_proj":
                out[f"{unit_path}/a/proj/standardized_conv2d/kernel"] = value
            elif module.startswith("conv"):
                out[f"{unit_path}/{_LAYER[module[-1]]}/standardized_conv2d/kernel"] = value
            else:
                out[f"{unit_path}/{_LAYER[module[-1]]}/group_norm/{_GN_LEAF[leaf]}"] = value
    return out
