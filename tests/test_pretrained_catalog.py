"""Every catalog entry loads through `models.create(name, pretrained=...)` from a synthetic
file in its publisher's layout (vision_transformer or big_transfer npz, timm safetensors),
served by a local server playing the bucket and the hub. The files have one block per
stage; widths, heads, class counts and resolutions are exact."""

import numpy as np
import pytest
from flax import traverse_util

from jaxvision import models
from jaxvision.models import pretrained_catalog, pretrained_source
from tests import weights_server
from tests.bit_npz_layout import to_bit_npz
from tests.weights_server import WeightsServer

server = weights_server.served_weights  # the shared fixture, under the name used here

# Overrides that shrink depth only: widths, heads, patch, head and resolution stay exact.
_SHALLOW = {
    "vit": {"depth": 1},
    "r50_vit_b16": {"depth": 1, "resnet_stages": (1, 1, 1)},
    "resnet50": {"stage_sizes": (1, 1, 1, 1)},
    "bit_r50x1": {"stage_sizes": (1, 1, 1, 1)},
}


def _shallow(model: str) -> dict:
    return _SHALLOW.get(model, _SHALLOW["vit"])


def _random_variables(model, image_size: int) -> dict[str, np.ndarray]:
    """Flat `collection/...` arrays of the model's variable shapes, with random values."""
    import jax

    dummy = jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), dummy)
    out = {}
    for i, (collection, tree) in enumerate(shapes.items()):
        for j, (key, leaf) in enumerate(traverse_util.flatten_dict(dict(tree)).items()):
            # A distinct value per leaf (cheap for 21k-class heads); the bias varies per class.
            value = np.full(leaf.shape, 1e-3 * (100 * i + j + 1), np.float32)
            if key[-2:] == ("head", "bias"):
                value = value + np.arange(leaf.shape[0], dtype=np.float32)
            out["/".join((collection, *key))] = value
    return out


def _to_timm_resnet(v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sd = {}

    def conv(k):
        return np.ascontiguousarray(np.transpose(k, (3, 2, 0, 1)))

    def bn(name, prefix):
        sd[f"{prefix}.weight"] = v[f"params/{name}/scale"]
        sd[f"{prefix}.bias"] = v[f"params/{name}/bias"]
        sd[f"{prefix}.running_mean"] = v[f"batch_stats/{name}/mean"]
        sd[f"{prefix}.running_var"] = np.abs(v[f"batch_stats/{name}/var"]) + 1
        sd[f"{prefix}.num_batches_tracked"] = np.zeros((), np.int64)

    sd["conv1.weight"] = conv(v["params/stem_conv/kernel"])
    bn("stem_bn", "bn1")
    blocks = {k.split("/")[1] for k in v if k.startswith("params/stage")}
    for block in blocks:
        stage, index = block[len("stage") :].split("_block")
        p = f"layer{stage}.{int(index) - 1}"
        for j in (1, 2, 3):
            sd[f"{p}.conv{j}.weight"] = conv(v[f"params/{block}/conv{j}/kernel"])
            bn(f"{block}/bn{j}", f"{p}.bn{j}")
        if f"params/{block}/proj_conv/kernel" in v:
            sd[f"{p}.downsample.0.weight"] = conv(v[f"params/{block}/proj_conv/kernel"])
            bn(f"{block}/proj_bn", f"{p}.downsample.1")
    sd["fc.weight"] = np.ascontiguousarray(v["params/head/kernel"].T)
    sd["fc.bias"] = v["params/head/bias"]
    return sd


def _to_timm_vit(v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    p = {k[len("params/") :]: x for k, x in v.items()}
    sd = {
        "patch_embed.proj.weight": np.transpose(p["embedding/kernel"], (3, 2, 0, 1)),
        "patch_embed.proj.bias": p["embedding/bias"],
        "cls_token": p["cls"],
        "pos_embed": p["Transformer/posembed_input/pos_embedding"],
        "norm.weight": p["Transformer/encoder_norm/scale"],
        "norm.bias": p["Transformer/encoder_norm/bias"],
        "head.weight": p["head/kernel"].T,
        "head.bias": p["head/bias"],
    }
    depth = len({k.split("/")[1] for k in p if k.startswith("Transformer/encoderblock_")})
    for i in range(depth):
        b, t = f"Transformer/encoderblock_{i}", f"blocks.{i}"
        a = f"{b}/MultiHeadDotProductAttention_1"
        width = p[f"{a}/query/kernel"].shape[0]
        qkv = [p[f"{a}/{n}/kernel"].reshape(width, width).T for n in ("query", "key", "value")]
        sd[f"{t}.attn.qkv.weight"] = np.concatenate(qkv)
        sd[f"{t}.attn.qkv.bias"] = np.concatenate(
            [p[f"{a}/{n}/bias"].reshape(-1) for n in ("query", "key", "value")]
        )
        sd[f"{t}.attn.proj.weight"] = p[f"{a}/out/kernel"].reshape(width, width).T
        sd[f"{t}.attn.proj.bias"] = p[f"{a}/out/bias"]
        for ln, name in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            sd[f"{t}.{name}.weight"] = p[f"{b}/{ln}/scale"]
            sd[f"{t}.{name}.bias"] = p[f"{b}/{ln}/bias"]
        for dense, name in (("Dense_0", "fc1"), ("Dense_1", "fc2")):
            sd[f"{t}.mlp.{name}.weight"] = p[f"{b}/MlpBlock_3/{dense}/kernel"].T
            sd[f"{t}.mlp.{name}.bias"] = p[f"{b}/MlpBlock_3/{dense}/bias"]
    return {k: np.ascontiguousarray(x) for k, x in sd.items()}


def _publish(server: WeightsServer, entry, model, tmp_path) -> dict[str, np.ndarray]:
    """Writes the entry's synthetic file where its source points; returns its variables."""
    variables = _random_variables(model, entry.image_size)
    path = tmp_path / "weights"
    if entry.source.startswith("hf-hub:"):
        from safetensors.numpy import save_file

        timm = _to_timm_resnet if entry.model.startswith("resnet") else _to_timm_vit
        save_file(timm(variables), str(path))
        repo, filename, revision = pretrained_source._split_hub(entry.source)
        server.add_hub_file(repo, filename, path.read_bytes(), revision)
    else:
        params = {k[len("params/") :]: x for k, x in variables.items()}
        # The vision_transformer npz layout is jaxvision's parameter naming; big_transfer's
        # keeps its TensorFlow names.
        np.savez(path, **(to_bit_npz(params) if entry.model.startswith("bit_") else params))
        server.add_bucket_file(entry.source[len("gs://") :], path.with_suffix(".npz").read_bytes())
    return variables


def _check_entry(entry, server, tmp_path, **shrink):
    overrides = {**entry.overrides, **shrink}
    if pretrained_source._has_field(entry.model):
        overrides["image_size"] = entry.image_size
    reference = models.create(entry.model, num_classes=entry.num_classes, **overrides)
    written = _publish(server, entry, reference, tmp_path)
    model, variables = models.create(entry.model, pretrained=entry.tag, **shrink)
    assert model == reference  # the catalog's overrides, size and class count were applied
    loaded = {
        "/".join((c, *k)): np.asarray(x)
        for c, tree in variables.items()
        for k, x in traverse_util.flatten_dict(dict(tree)).items()
    }
    assert sorted(loaded) == sorted(written)
    for key in ("params/head/kernel", "params/head/bias"):
        np.testing.assert_array_equal(loaded[key], written[key])  # the published head is kept


@pytest.mark.parametrize("name", sorted(pretrained_catalog.CATALOG))
def test_every_catalog_entry_loads_its_synthetic_file_with_one_block_per_stage(
    name, server, tmp_path
):
    entry = pretrained_catalog.CATALOG[name]
    _check_entry(entry, server, tmp_path, **_shallow(entry.model))


def test_catalog_lists_every_required_family_with_its_source():
    names = set(pretrained_catalog.CATALOG)
    for model in ("vit_ti16", "vit_s16", "vit_b16", "vit_b32", "vit_l16"):
        assert {f"{model}.augreg_in21k", f"{model}.augreg_in21k_ft_in1k"} <= names
    assert {"r50_vit_b16.orig_in21k", "resnet50.a1_in1k"} <= names
    assert "vit_b16.timm_augreg_in21k_ft_in1k" in names
    assert {"bit_r50x1.bit_m_in21k", "bit_r50x1.bit_m_in21k_ft_in1k"} <= names
    for entry in pretrained_catalog.entries():
        assert entry.model in models.names()
        assert entry.source.startswith(("gs://", "hf-hub:"))
        assert entry.num_classes == {"imagenet2012": 1000, "imagenet21k": 21843}[entry.label_set]
        assert entry.sha256 is None and entry.size is None  # none published next to the files
