"""load_pretrained: published npz/safetensors layouts give the same logits as independent
forward passes (NumPy for the JAX layouts, PyTorch modules with timm's names for timm).
"""

import logging
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from scipy.special import erf

from jaxvision.models import create
from jaxvision.models.layers import MlpBlock
from jaxvision.models.pretrained import load_pretrained, recommended_overrides
from jaxvision.models.pretrained_source import download

# A tiny ViT: 16px images, 4px patches (4x4 grid), width 192 (vit_ti), 2 blocks.
IMAGE, PATCH, DEPTH, HEADS, WIDTH, MLP, CLASSES = 16, 4, 2, 3, 192, 768, 5


def random_vit(seed: int = 0, classes: int = CLASSES, grid: int = IMAGE // PATCH) -> dict:
    """Weights in the vision_transformer npz naming, scaled so activations are O(1)."""
    rs = np.random.RandomState(seed)

    def w(*shape: int, fan_in: int) -> np.ndarray:
        return (rs.randn(*shape) / math.sqrt(fan_in)).astype(np.float32)

    def v(*shape: int, scale: float = 0.1, mean: float = 0.0) -> np.ndarray:
        return (mean + scale * rs.randn(*shape)).astype(np.float32)

    p = {
        "embedding/kernel": w(PATCH, PATCH, 3, WIDTH, fan_in=PATCH * PATCH * 3),
        "embedding/bias": v(WIDTH),
        "cls": v(1, 1, WIDTH, scale=1.0),
        "Transformer/posembed_input/pos_embedding": v(1, grid * grid + 1, WIDTH, scale=0.5),
        "Transformer/encoder_norm/scale": v(WIDTH, mean=1.0),
        "Transformer/encoder_norm/bias": v(WIDTH),
        "head/kernel": w(WIDTH, classes, fan_in=WIDTH),
        "head/bias": v(classes),
    }
    dh = WIDTH // HEADS
    for i in range(DEPTH):
        b = f"Transformer/encoderblock_{i}"
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            p[f"{b}/{ln}/scale"], p[f"{b}/{ln}/bias"] = v(WIDTH, mean=1.0), v(WIDTH)
        a = f"{b}/MultiHeadDotProductAttention_1"
        for part in ("query", "key", "value"):
            p[f"{a}/{part}/kernel"] = w(WIDTH, HEADS, dh, fan_in=WIDTH)
            p[f"{a}/{part}/bias"] = v(HEADS, dh)
        p[f"{a}/out/kernel"], p[f"{a}/out/bias"] = w(HEADS, dh, WIDTH, fan_in=WIDTH), v(WIDTH)
        m = f"{b}/MlpBlock_3"
        p[f"{m}/Dense_0/kernel"], p[f"{m}/Dense_0/bias"] = w(WIDTH, MLP, fan_in=WIDTH), v(MLP)
        p[f"{m}/Dense_1/kernel"], p[f"{m}/Dense_1/bias"] = w(MLP, WIDTH, fan_in=MLP), v(WIDTH)
    return p


def layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * scale + bias


def _model_gelu_is_exact() -> bool:
    """Whether our ViT MLP uses the erf GELU (timm) or the tanh one (flax nn.gelu default).

    The two differ by ~3e-4 in these logits, more than the tolerance, and the choice is the
    model's, not the loader's; so the references below follow the model.
    """
    one = {"kernel": jnp.ones((1, 1)), "bias": jnp.zeros((1,))}
    y = MlpBlock(1).apply({"params": {"Dense_0": one, "Dense_1": one}}, jnp.ones((1, 1)))
    return abs(float(y[0, 0]) - 0.5 * (1.0 + math.erf(1.0 / math.sqrt(2.0)))) < 1e-6


GELU_EXACT = _model_gelu_is_exact()


def gelu(x: np.ndarray) -> np.ndarray:
    if GELU_EXACT:
        return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def numpy_vit(p: dict, images: np.ndarray) -> np.ndarray:
    """Independent ViT forward (token pool, pre-LN) in float64 NumPy."""
    p = {k: v.astype(np.float64) for k, v in p.items()}
    n, h, _, c = images.shape
    g = h // PATCH
    patches = images.reshape(n, g, PATCH, g, PATCH, c).transpose(0, 1, 3, 2, 4, 5)
    x = patches.reshape(n, g * g, -1) @ p["embedding/kernel"].reshape(-1, WIDTH)
    x = x + p["embedding/bias"]
    x = np.concatenate([np.repeat(p["cls"], n, axis=0), x], axis=1)
    x = x + p["Transformer/posembed_input/pos_embedding"]
    for i in range(DEPTH):
        b = f"Transformer/encoderblock_{i}"
        y = layer_norm(x, p[f"{b}/LayerNorm_0/scale"], p[f"{b}/LayerNorm_0/bias"])
        a = f"{b}/MultiHeadDotProductAttention_1"
        q, k, v = (
            np.einsum("ntd,dhk->nthk", y, p[f"{a}/{s}/kernel"]) + p[f"{a}/{s}/bias"]
            for s in ("query", "key", "value")
        )
        logits = np.einsum("nqhk,nshk->nhqs", q, k) / np.sqrt(q.shape[-1])
        att = np.exp(logits - logits.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = np.einsum("nhqs,nshk->nqhk", att, v)
        x = x + np.einsum("nqhk,hkd->nqd", o, p[f"{a}/out/kernel"]) + p[f"{a}/out/bias"]
        y = layer_norm(x, p[f"{b}/LayerNorm_2/scale"], p[f"{b}/LayerNorm_2/bias"])
        m = f"{b}/MlpBlock_3"
        y = gelu(y @ p[f"{m}/Dense_0/kernel"] + p[f"{m}/Dense_0/bias"])
        x = x + y @ p[f"{m}/Dense_1/kernel"] + p[f"{m}/Dense_1/bias"]
    x = layer_norm(x, p["Transformer/encoder_norm/scale"], p["Transformer/encoder_norm/bias"])
    return x[:, 0] @ p["head/kernel"] + p["head/bias"]


def to_big_vision(p: dict, scanned: bool) -> dict:
    """The same function in big_vision naming: posemb at the root without the cls slot."""
    rename = {
        "LayerNorm_0": "LayerNorm_0",
        "MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
        "LayerNorm_2": "LayerNorm_1",
        "MlpBlock_3": "MlpBlock_0",
    }
    out = {}
    for k, v in p.items():
        parts = k.split("/")
        if parts[0] == "Transformer" and parts[1].startswith("encoderblock_"):
            parts[2] = rename[parts[2]]
        out["params/" + "/".join(parts)] = v
    pe = out.pop("params/Transformer/posembed_input/pos_embedding")
    # big_vision adds posemb to the patches only, so the cls slot folds into the cls token.
    out["params/pos_embedding"] = pe[:, 1:]
    out["params/cls"] = out["params/cls"] + pe[:, :1]
    if scanned:
        blocks = [f"params/Transformer/encoderblock_{i}/" for i in range(DEPTH)]
        for k in [k for k in out if k.startswith(blocks[0])]:
            leaf = k[len(blocks[0]) :]
            stacked = np.stack([out.pop(b + leaf) for b in blocks])
            out[f"params/Transformer/encoderblock/{leaf}"] = stacked
    return out


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.RandomState(42).randn(2, IMAGE, IMAGE, 3).astype(np.float32)


def tiny_vit(**overrides):
    kw = dict(num_classes=CLASSES, image_size=IMAGE, depth=DEPTH) | overrides
    return create(f"vit_ti{PATCH}", **kw)


def logits_of(model, variables, images) -> np.ndarray:
    return np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images))


@pytest.mark.parametrize("scan", [False, True])
def test_vision_transformer_npz_matches_numpy_forward(tmp_path, images, scan):
    weights = random_vit()
    path = tmp_path / "ViT-Ti_4.npz"
    np.savez(path, **weights)
    model = tiny_vit(scan=scan)
    variables = load_pretrained(path, model)
    assert set(variables) == {"params"}
    np.testing.assert_allclose(
        logits_of(model, variables, images), numpy_vit(weights, images), atol=1e-4, rtol=1e-4
    )


@pytest.mark.parametrize("scanned_file,scan_model", [(False, False), (True, False), (True, True)])
def test_big_vision_npz_matches_numpy_forward(tmp_path, images, scanned_file, scan_model):
    weights = random_vit(seed=1)
    path = tmp_path / "bv.npz"
    np.savez(path, **to_big_vision(weights, scanned_file))
    model = tiny_vit(scan=scan_model)
    variables = load_pretrained(path, model)
    np.testing.assert_allclose(
        logits_of(model, variables, images), numpy_vit(weights, images), atol=1e-4, rtol=1e-4
    )


def bilinear_numpy(grid: np.ndarray, size: int) -> np.ndarray:
    """Half-pixel-centre bilinear upsampling of [h, h, D] to [size, size, D]."""

    def axis_weights(n_in: int) -> np.ndarray:
        src = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        m = np.zeros((size, n_in))
        m[np.arange(size), lo] += 1 - (src - lo)
        m[np.arange(size), hi] += src - lo
        return m

    m = axis_weights(grid.shape[0])
    return np.einsum("ih,jw,hwd->ijd", m, m, grid)


def test_224px_checkpoint_loads_at_384px_with_bilinear_posemb(tmp_path, caplog):
    model_224 = create("vit_ti16", num_classes=3, depth=1)
    shapes = jax.eval_shape(
        lambda: model_224.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))
    )
    rs = np.random.RandomState(3)
    flat = {
        "/".join(k): rs.randn(*s.shape).astype(np.float32)
        for k, s in traverse_util.flatten_dict(shapes["params"]).items()
    }
    path = tmp_path / "vit_224.npz"
    np.savez(path, **flat)
    model_384 = create("vit_ti16", num_classes=3, depth=1, image_size=384)
    with caplog.at_level(logging.WARNING):
        params = load_pretrained(path, model_384)["params"]
    assert not caplog.records  # same head: nothing re-initialised
    old = flat["Transformer/posembed_input/pos_embedding"]
    new = np.asarray(params["Transformer"]["posembed_input"]["pos_embedding"])
    assert new.shape == (1, 24 * 24 + 1, 192)
    np.testing.assert_array_equal(new[:, 0], old[:, 0])  # class-token position kept apart
    expected = bilinear_numpy(old[0, 1:].reshape(14, 14, 192), 24).reshape(1, 576, 192)
    np.testing.assert_allclose(new[:, 1:], expected, atol=1e-5)
    np.testing.assert_array_equal(params["embedding"]["kernel"], flat["embedding/kernel"])


def test_head_of_other_class_count_is_reinitialised(tmp_path, images, caplog):
    weights = random_vit(classes=21)
    weights["pre_logits/kernel"] = np.ones((WIDTH, WIDTH), np.float32)
    weights["pre_logits/bias"] = np.zeros((WIDTH,), np.float32)
    path = tmp_path / "in21k.npz"
    np.savez(path, **weights)
    with caplog.at_level(logging.WARNING):
        params = load_pretrained(path, tiny_vit())["params"]
    assert "freshly initialised head" in caplog.text and "in21k.npz" in caplog.text
    assert "pre_logits" not in params
    np.testing.assert_array_equal(params["head"]["kernel"], np.zeros((WIDTH, CLASSES)))
    np.testing.assert_array_equal(params["cls"], weights["cls"])


def test_wrong_model_raises_a_table(tmp_path):
    path = tmp_path / "vit_ti.npz"
    np.savez(path, **random_vit())
    with pytest.raises(ValueError) as e:
        load_pretrained(path, create("vit_s4", num_classes=CLASSES, image_size=IMAGE, depth=3))
    msg = str(e.value)
    assert str(path) in msg
    assert "mis-shaped" in msg and "missing" in msg
    assert "embedding/kernel" in msg and "(4, 4, 3, 384)" in msg and "(4, 4, 3, 192)" in msg
    assert "hidden_size=192, depth=2" in msg


def test_unexpected_keys_are_reported(tmp_path):
    weights = random_vit()
    weights["Transformer/encoderblock_0/extra/kernel"] = np.zeros((2, 2), np.float32)
    path = tmp_path / "extra.npz"
    np.savez(path, **weights)
    with pytest.raises(ValueError, match=r"unexpected\s+Transformer/encoderblock_0/extra/kernel"):
        load_pretrained(path, tiny_vit())


def test_not_an_npz_file(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_text("<html>404 Not Found</html>")
    with pytest.raises(ValueError, match=r"weights\.npz is not an \.npz file"):
        load_pretrained(path, tiny_vit())


def test_truncated_npz(tmp_path):
    path = tmp_path / "cut.npz"
    np.savez(path, **random_vit())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.npz"):
        load_pretrained(path, tiny_vit())


class _Tripwire:
    """Unpickling this creates a file: proof that the loader unpickled something."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_npz_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    path = tmp_path / "pickled.npz"
    np.savez(path, cls=np.array([_Tripwire(str(marker))], dtype=object))
    with pytest.raises(ValueError, match=r"pickled\.npz holds pickled Python objects"):
        load_pretrained(path, tiny_vit())
    assert not marker.exists()


def test_pytorch_pickle_is_refused(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(b"\x80\x04not really")
    with pytest.raises(ValueError, match=r"model\.pth .*safetensors"):
        load_pretrained(path, tiny_vit())


def test_download_rejects_unknown_names_and_lists_where_to_look(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXVISION_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match=r"python -m jaxvision\.models --pretrained"):
        download("vit_b99.augreg_in21k")
    assert not os.listdir(tmp_path)


# ---------------------------------------------------------------------------------------
# timm safetensors: small PyTorch modules with timm's state-dict keys are the reference.


def _torch_vit(torch, classes: int, pool: str = "token"):
    nn = torch.nn

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(WIDTH, 3 * WIDTH)
            self.proj = nn.Linear(WIDTH, WIDTH)

        def forward(self, x):
            b, t, c = x.shape
            q, k, v = self.qkv(x).reshape(b, t, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)
            att = ((q @ k.transpose(-2, -1)) / math.sqrt(c // HEADS)).softmax(-1)
            return self.proj((att @ v).transpose(1, 2).reshape(b, t, c))

    class Mlp(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(WIDTH, MLP), nn.Linear(MLP, WIDTH)
            self.act = nn.GELU()  # exact (erf), as in timm

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm1, self.attn = nn.LayerNorm(WIDTH, eps=1e-6), Attention()
            self.norm2, self.mlp = nn.LayerNorm(WIDTH, eps=1e-6), Mlp()

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class AttentionPoolLatent(nn.Module):
        """timm's MAP head: a learned latent attends over the tokens."""

        def __init__(self) -> None:
            super().__init__()
            self.latent = nn.Parameter(torch.zeros(1, 1, WIDTH))
            self.q, self.kv = nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, 2 * WIDTH)
            self.proj = nn.Linear(WIDTH, WIDTH)
            self.norm, self.mlp = nn.LayerNorm(WIDTH, eps=1e-6), Mlp()

        def forward(self, x):
            b, t, c = x.shape
            q = self.q(self.latent.expand(b, -1, -1)).reshape(b, 1, HEADS, -1).transpose(1, 2)
            k, v = self.kv(x).reshape(b, t, 2, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)
            att = ((q @ k.transpose(-2, -1)) / math.sqrt(c // HEADS)).softmax(-1)
            x = self.proj((att @ v).transpose(1, 2).reshape(b, 1, c))
            return (x + self.mlp(self.norm(x)))[:, 0]

    class VisionTransformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch_embed = nn.Module()
            self.patch_embed.proj = nn.Conv2d(3, WIDTH, PATCH, PATCH)
            tokens = (IMAGE // PATCH) ** 2
            if pool == "token":
                self.cls_token = nn.Parameter(torch.zeros(1, 1, WIDTH))
                tokens += 1
            self.pos_embed = nn.Parameter(torch.zeros(1, tokens, WIDTH))
            self.blocks = nn.ModuleList([Block() for _ in range(DEPTH)])
            self.norm = nn.LayerNorm(WIDTH, eps=1e-6)
            if pool == "map":
                self.attn_pool = AttentionPoolLatent()
            self.head = nn.Linear(WIDTH, classes)

        def forward(self, x):
            x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
            if pool == "token":
                x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            x = x + self.pos_embed
            for block in self.blocks:
                x = block(x)
            x = self.norm(x)
            return self.head(x[:, 0] if pool == "token" else self.attn_pool(x))

    return VisionTransformer()


def _torch_resnet(torch, bottleneck: bool, stages: tuple[int, ...], base: int, classes: int):
    nn = torch.nn
    expansion = 4 if bottleneck else 1

    class Block(nn.Module):
        def __init__(self, cin: int, width: int, stride: int) -> None:
            super().__init__()
            cout = width * expansion
            if bottleneck:
                self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
                self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
                self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
                self.bn3 = nn.BatchNorm2d(cout)
            else:
                self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
                self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
            self.bn1, self.bn2 = nn.BatchNorm2d(width), nn.BatchNorm2d(width)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            if bottleneck:
                y = self.bn3(self.conv3(torch.relu(y)))
            return torch.relu(y + (x if self.downsample is None else self.downsample(x)))

    class ResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(base)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin = base
            for s, n in enumerate(stages, start=1):
                blocks = []
                for b in range(n):
                    blocks.append(Block(cin, base * 2 ** (s - 1), 2 if s > 1 and b == 0 else 1))
                    cin = base * 2 ** (s - 1) * expansion
                setattr(self, f"layer{s}", nn.Sequential(*blocks))
            self.fc = nn.Linear(cin, classes)

        def forward(self, x):
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            for s in range(1, len(stages) + 1):
                x = getattr(self, f"layer{s}")(x)
            return self.fc(x.mean((2, 3)))

    return ResNet()


def _randomise(torch, module) -> None:
    """Non-trivial values everywhere, including BN running statistics and norm scales."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            r = torch.randn(t.shape, generator=gen)
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen))
            elif name.endswith(("cls_token", "pos_embed", "latent")):
                t.copy_(0.5 * r)
            elif t.ndim == 1:
                is_scale = name.endswith("weight")
                t.copy_((1.0 if is_scale else 0.0) + 0.1 * r)
            else:
                t.copy_(r / math.sqrt(t[0].numel()))


def _save_and_reference(torch, module, path, images: np.ndarray) -> np.ndarray:
    from safetensors.torch import save_file

    _randomise(torch, module)
    module.eval()
    save_file(module.state_dict(), str(path))
    with torch.no_grad():
        return module(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()


@pytest.mark.slow  # needs torch: the README's slow-test command installs it
@pytest.mark.parametrize("pool", ["token", "map"])
def test_timm_vit_safetensors_matches_torch(tmp_path, images, pool, caplog):
    torch = pytest.importorskip("torch", reason="pip install -e '.[torch]' for timm tests")
    path = tmp_path / "model.safetensors"
    expected = _save_and_reference(torch, _torch_vit(torch, CLASSES, pool), path, images)
    # With the exact GELU timm trained with, only float32 rounding remains.
    model = tiny_vit(pool=pool, **recommended_overrides(path))
    assert model.gelu_approximate is False
    exact = logits_of(model, load_pretrained(path, model), images)
    np.testing.assert_allclose(exact, expected, atol=1e-5, rtol=1e-5)
    # The default tanh GELU (right for the JAX checkpoints) is measurably off; the loader says so.
    approximate = tiny_vit(pool=pool)
    with caplog.at_level(logging.WARNING):
        variables = load_pretrained(path, approximate)
    assert "gelu_approximate=False" in caplog.text and "model.safetensors" in caplog.text
    tanh_error = np.abs(logits_of(approximate, variables, images) - expected).max()
    assert tanh_error > 10 * np.abs(exact - expected).max()


def test_recommended_overrides_ask_timm_vits_for_the_exact_gelu(tmp_path):
    from safetensors.numpy import save_file

    vit, resnet, npz = (tmp_path / n for n in ("vit.safetensors", "r.safetensors", "v.npz"))
    save_file({"patch_embed.proj.weight": np.zeros((WIDTH, 3, PATCH, PATCH), np.float32)}, vit)
    save_file({"conv1.weight": np.zeros((8, 3, 7, 7), np.float32)}, resnet)
    np.savez(npz, **random_vit())
    assert recommended_overrides(vit) == {"gelu_approximate": False}
    assert recommended_overrides(resnet) == {} and recommended_overrides(npz) == {}
    assert recommended_overrides(tmp_path / "missing.safetensors") == {}


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,bottleneck,stages", [("resnet18", False, (2, 2, 2, 2)), ("resnet50", True, (3, 4, 6, 3))]
)
def test_timm_resnet_safetensors_matches_torch(tmp_path, name, bottleneck, stages):
    torch = pytest.importorskip("torch", reason="pip install -e '.[torch]' for timm tests")
    images = np.random.RandomState(7).randn(2, 50, 50, 3).astype(np.float32)
    path = tmp_path / f"{name}.safetensors"
    module = _torch_resnet(torch, bottleneck, stages, base=16, classes=CLASSES)
    expected = _save_and_reference(torch, module, path, images)
    model = create(name, num_classes=CLASSES, width=0.25)
    variables = load_pretrained(path, model, image_size=50)
    assert set(variables) == {"params", "batch_stats"}
    np.testing.assert_allclose(logits_of(model, variables, images), expected, atol=1e-4, rtol=1e-4)


def test_truncated_safetensors(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "cut.safetensors"
    save_file({"cls_token": np.ones((1, 1, WIDTH), np.float32)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"cut\.safetensors is not a readable \.safetensors"):
        load_pretrained(path, tiny_vit())


def test_hybrid_npz_with_old_groupnorm_shapes_round_trips(tmp_path):
    # Published R50+ViT files store GroupNorm scale/bias as [1, 1, 1, C] (pre-Linen).
    model = create("r_ti16", num_classes=CLASSES, image_size=64, depth=1)
    images = np.random.RandomState(5).randn(2, 64, 64, 3).astype(np.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(1), images))
    rs = np.random.RandomState(6)
    flat = {
        "/".join(k): (0.5 * rs.randn(*v.shape)).astype(np.float32)
        for k, v in traverse_util.flatten_dict(shapes["params"]).items()
    }
    published = {
        k: v.reshape(1, 1, 1, -1) if any(part.startswith("gn") for part in k.split("/")) else v
        for k, v in flat.items()
    }
    assert published["gn_root/scale"].shape == (1, 1, 1, 64)
    path = tmp_path / "R_Ti_16.npz"
    np.savez(path, **published)
    variables = load_pretrained(path, model)
    params = {
        "params": traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
    }
    expected = logits_of(model, params, images)
    assert expected.std() > 0.1  # a real function of the weights, not all zeros
    np.testing.assert_allclose(logits_of(model, variables, images), expected, atol=1e-5)


def test_image_size_must_match_a_model_with_fixed_size(tmp_path):
    path = tmp_path / "vit.npz"
    np.savez(path, **random_vit())
    with pytest.raises(ValueError, match="Create the model with image_size=32"):
        load_pretrained(path, tiny_vit(), image_size=32)


def test_unknown_timm_keys_are_reported(tmp_path):
    from safetensors.numpy import save_file

    sd = {"patch_embed.proj.weight": np.zeros((WIDTH, 3, PATCH, PATCH), np.float32)}
    sd |= {"patch_embed.proj.bias": np.zeros(WIDTH, np.float32)}
    sd |= {"fc_norm.weight": np.ones(WIDTH, np.float32)}
    path = tmp_path / "gap.safetensors"
    save_file(sd, str(path))
    with pytest.raises(ValueError) as e:
        load_pretrained(path, tiny_vit())
    assert re.search(r"unexpected\s+\(timm\) fc_norm\.weight", str(e.value))
    assert re.search(r"missing\s+Transformer/encoderblock_\{0-1\}/LayerNorm_0/scale", str(e.value))


@pytest.mark.slow
def test_bfloat16_safetensors_load_as_float32(tmp_path):
    torch = pytest.importorskip("torch", reason="pip install -e '.[torch]' for timm tests")
    from safetensors.torch import save_file

    module = _torch_vit(torch, CLASSES)
    _randomise(torch, module)
    state = {k: v.to(torch.bfloat16) for k, v in module.state_dict().items()}
    path = tmp_path / "bf16.safetensors"
    save_file(state, str(path))
    params = load_pretrained(path, tiny_vit())["params"]
    assert params["cls"].dtype == jnp.float32
    np.testing.assert_array_equal(params["cls"], state["cls_token"].float().numpy())
