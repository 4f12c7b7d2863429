"""BiT ResNet-V2 (`bit_r50x1`): the published shapes, loading the google-research/big_transfer
npz layout, and the function it computes against an independent PyTorch BiT."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxvision import models
from jaxvision.models import load_pretrained
from tests.bit_npz_layout import to_bit_npz

# Half width, fewer units: block1 keeps a second unit, the one without a projection. (The
# exact widths are checked by the layout test and test_pretrained_catalog.)
SMALL = {"stage_sizes": (2, 1, 1, 1), "width": 0.5}
CLASSES = 5
# One-shot computations: skip XLA's slow backend optimisation (as in test_models).
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _run_once(f, *args):
    return jax.jit(f).lower(*args).compile(compiler_options=_FAST_COMPILE)(*args)


def _flat(tree) -> dict[str, np.ndarray]:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def _random_params(model, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Non-trivial values for every parameter (GroupNorm scales near 1, a non-zero head)."""
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)["params"]
    rng = np.random.default_rng(seed)
    out = {}
    leaves = {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(shapes)).items()}
    for key, leaf in sorted(leaves.items()):
        r = rng.normal(size=leaf.shape).astype(np.float32)
        if key.endswith("/scale"):
            r = 1.0 + 0.1 * r
        elif key.endswith("/bias"):
            r = 0.1 * r
        out[key] = r
    return out


def _images(size: int, n: int = 2) -> np.ndarray:
    return np.random.default_rng(1).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def _logits(model, images: np.ndarray, *param_sets: dict[str, np.ndarray]) -> list[np.ndarray]:
    """`model`'s logits on `images` under each flat parameter set, compiled once."""
    trees = [
        {"params": traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in p.items()})}
        for p in param_sets
    ]
    x = jnp.asarray(images)
    apply = jax.jit(lambda v, x: model.apply(v, x)).lower(trees[0], x)
    apply = apply.compile(compiler_options=_FAST_COMPILE)
    return [np.asarray(apply(tree, x)) for tree in trees]


@pytest.mark.parametrize(("classes", "count"), [(1000, 25_549_352), (21843, 68_256_659)])
def test_bit_r50x1_has_the_published_parameter_counts(classes, count):
    # timm lists resnetv2_50x1_bit at 25.5M (in1k head) and 68.3M (in21k head) parameters.
    model = models.create("bit_r50x1", num_classes=classes)
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    assert list(variables) == ["params"]  # GroupNorm: no batch statistics
    assert sum(int(p.size) for p in jax.tree.leaves(variables)) == count


def test_bit_r50x1_has_the_published_layout_and_a_zero_head():
    model = models.create("bit_r50x1", num_classes=1000)
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)["params"]
    shapes = {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(shapes).items()}
    units = {k.rsplit("/", 2)[0] for k in shapes if k.startswith("block")}
    assert sorted(units) == [
        f"block{s}/unit{u:02d}" for s, n in enumerate((3, 4, 6, 3), 1) for u in range(1, n + 1)
    ]
    assert shapes["conv_root/kernel"] == (7, 7, 3, 64)
    assert shapes["block1/unit01/conv_proj/kernel"] == (1, 1, 64, 256)
    assert "block1/unit02/conv_proj/kernel" not in shapes  # same shape in and out
    assert shapes["block4/unit01/conv2/kernel"] == (3, 3, 512, 512)
    assert shapes["norm_pre_head/scale"] == (2048,)
    assert shapes["head/kernel"] == (2048, 1000)
    # A fresh head is zero, so fine-tuning starts from the backbone's features alone.
    tiny = models.create("bit_r50x1", num_classes=CLASSES, width=0.25, stage_sizes=(1,))
    head = _flat(_run_once(lambda x: tiny.init(jax.random.key(0), x), jnp.ones((1, 8, 8, 3))))
    assert not head["params/head/kernel"].any() and not head["params/head/bias"].any()


def test_a_big_transfer_npz_loads_through_create_and_computes_the_same_logits(tmp_path):
    reference = models.create("bit_r50x1", num_classes=CLASSES, **SMALL)
    written = _random_params(reference, 32)
    path = tmp_path / "BiT-M-R50x1-small.npz"
    np.savez(path, **to_bit_npz(written))

    model, variables = models.create("bit_r50x1", pretrained=str(path), **SMALL)
    assert model == reference  # the class count came from the file's head
    loaded = _flat(variables["params"])
    assert list(variables) == ["params"] and sorted(loaded) == sorted(written)
    for key, value in written.items():
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)
    images = _images(32)
    logits, direct = _logits(model, images, loaded, written)
    np.testing.assert_array_equal(logits, direct)
    assert np.abs(logits).max() > 1e-3  # a real function of the image, not a zero head


def test_missing_and_unrecognised_big_transfer_keys_are_named(tmp_path):
    model = models.create("bit_r50x1", num_classes=CLASSES, **SMALL)
    arrays = to_bit_npz(_random_params(model, 32))
    del arrays["resnet/block2/unit01/b/group_norm/gamma"]
    arrays["resnet/block2/unit01/d/standardized_conv2d/kernel"] = np.zeros((1, 1, 8, 8))
    path = tmp_path / "damaged.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError) as e:
        load_pretrained(path, model)
    message = str(e.value)
    assert "missing" in message and "block2/unit01/gn2/scale" in message
    assert "(bit) resnet/block2/unit01/d/standardized_conv2d/kernel" in message


def test_numbered_conv_scopes_of_some_published_files_map_like_plain_ones():
    from jaxvision.models.pretrained_bit import bit_npz_to_variables

    kernel = np.ones((3, 3, 8, 8), np.float32)
    gamma = np.ones((1, 1, 1, 8), np.float32)  # TF's broadcast shape in some exports
    params = bit_npz_to_variables(
        {
            "resnet/block3/unit05/b/standardized_conv2d_1/kernel": kernel,
            "resnet/block3/unit05/b/group_norm/gamma": gamma,
        }
    )["params"]
    assert params["block3/unit05/conv2/kernel"] is kernel
    assert params["block3/unit05/gn2/scale"].shape == (8,)


def test_a_big_transfer_npz_in_the_wrong_model_says_which_architecture_it_holds(tmp_path):
    bit = models.create("bit_r50x1", num_classes=CLASSES, width=0.5, stage_sizes=(2, 1, 1, 1))
    path = tmp_path / "bit.npz"
    np.savez(path, **to_bit_npz(_random_params(bit, 32)))
    with pytest.raises(ValueError, match=r"BiT ResNet-V2 .* stage_sizes=\(2, 1, 1, 1\), width=0.5"):
        load_pretrained(path, models.create("bit_r50x1", num_classes=CLASSES))


def test_features_are_the_pooled_map_and_pre_logits():
    model = models.create("bit_r50x1", num_classes=CLASSES)
    x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)

    def apply(x):
        variables = model.init(jax.random.key(0), x)
        return model.apply(variables, x, return_features=True)

    logits, features = jax.eval_shape(apply, x)
    assert logits.shape == (2, CLASSES)
    assert features["feature_map"].shape == (2, 2, 2, 2048)
    assert features["pre_logits"].shape == (2, 2048)


def test_grad_cam_explains_bit_models():
    from jaxvision import explain

    # One stage: an 8x8 final map at 32 px, and a quick compile.
    model = models.create("bit_r50x1", num_classes=CLASSES, width=0.25, stage_sizes=(1,))
    params = _random_params(model, 32)
    tree = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in params.items()})
    maps, method = explain.explain(model, {"params": tree}, _images(32))
    assert method == "grad_cam" and maps.shape == (2, 32, 32)
    assert maps.min() == 0.0 and maps.max() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [({"width": 0.3}, "width=0.3"), ({"stage_sizes": (2, 0)}, "stage_sizes")],
)
def test_bad_overrides_are_clear_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        models.create("bit_r50x1", num_classes=CLASSES, **overrides)


def _torch_bit(torch, stages: tuple[int, ...], width: float, classes: int):
    """BiT ResNet-V2 as google-research/big_transfer describes it (bit_pytorch): WS convs
    with eps 1e-10 on the variance, GN(32), zero-padded max-pool, pre-activated units."""
    nn, F = torch.nn, torch.nn.functional

    class WSConv(nn.Conv2d):
        def forward(self, x):
            var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), keepdim=True, unbiased=False)
            w = (self.weight - mean) / torch.sqrt(var + 1e-10)
            return F.conv2d(x, w, None, self.stride, self.padding)

    class Unit(nn.Module):
        def __init__(self, cin: int, mid: int, stride: int) -> None:
            super().__init__()
            self.gn1, self.gn2, self.gn3 = (nn.GroupNorm(32, c) for c in (cin, mid, mid))
            self.conv1 = WSConv(cin, mid, 1, bias=False)
            self.conv2 = WSConv(mid, mid, 3, stride, 1, bias=False)
            self.conv3 = WSConv(mid, mid * 4, 1, bias=False)
            self.proj = None
            if stride != 1 or cin != mid * 4:
                self.proj = WSConv(cin, mid * 4, 1, stride, bias=False)

        def forward(self, x):
            y = torch.relu(self.gn1(x))
            shortcut = x if self.proj is None else self.proj(y)
            y = self.conv2(torch.relu(self.gn2(self.conv1(y))))
            return self.conv3(torch.relu(self.gn3(y))) + shortcut

    class ResNetV2(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            base = int(64 * width)
            self.root = WSConv(3, base, 7, 2, 3, bias=False)
            self.pool = nn.Sequential(nn.ConstantPad2d(1, 0.0), nn.MaxPool2d(3, 2))
            cin, self.blocks = base, nn.ModuleList()
            for s, n in enumerate(stages):
                units = []
                for u in range(n):
                    units.append(Unit(cin, base * 2**s, 2 if s > 0 and u == 0 else 1))
                    cin = base * 2**s * 4
                self.blocks.append(nn.Sequential(*units))
            self.gn = nn.GroupNorm(32, cin)
            self.head = nn.Conv2d(cin, classes, 1)

        def forward(self, x):
            x = self.pool(self.root(x))
            for block in self.blocks:
                x = block(x)
            x = torch.relu(self.gn(x)).mean((2, 3), keepdim=True)
            return self.head(x)[:, :, 0, 0]

    return ResNetV2()


def _torch_to_bit_npz(module, stages) -> dict[str, np.ndarray]:
    """The reference's weights under the published BiT names (HWIO kernels)."""
    sd = {k: v.detach().numpy() for k, v in module.state_dict().items()}

    def kernel(name):
        return np.ascontiguousarray(sd[name].transpose(2, 3, 1, 0))

    out = {
        "resnet/root_block/standardized_conv2d/kernel": kernel("root.weight"),
        "resnet/group_norm/gamma": sd["gn.weight"],
        "resnet/group_norm/beta": sd["gn.bias"],
        "resnet/head/conv2d/kernel": kernel("head.weight"),
        "resnet/head/conv2d/bias": sd["head.bias"],
    }
    for s, n in enumerate(stages):
        for u in range(n):
            t, b = f"blocks.{s}.{u}", f"resnet/block{s + 1}/unit{u + 1:02d}"
            for i, letter in enumerate("abc", start=1):
                out[f"{b}/{letter}/standardized_conv2d/kernel"] = kernel(f"{t}.conv{i}.weight")
                out[f"{b}/{letter}/group_norm/gamma"] = sd[f"{t}.gn{i}.weight"]
                out[f"{b}/{letter}/group_norm/beta"] = sd[f"{t}.gn{i}.bias"]
            if f"{t}.proj.weight" in sd:
                out[f"{b}/a/proj/standardized_conv2d/kernel"] = kernel(f"{t}.proj.weight")
    return out


@pytest.mark.slow  # needs torch: the README's slow-test command installs it
def test_bit_r50x1_matches_an_independent_pytorch_bit_on_its_published_layout(tmp_path):
    torch = pytest.importorskip("torch", reason="pip install -e '.[torch]' for reference tests")
    stages = SMALL["stage_sizes"]
    module = _torch_bit(torch, stages, SMALL["width"], CLASSES)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            r = torch.randn(t.shape, generator=gen)
            if t.ndim == 1:
                t.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * r)
            else:
                t.copy_(r / math.sqrt(t[0].numel()))
    module.eval()
    # An odd size, so every padding and pooling edge case is exercised.
    images = _images(45)
    with torch.no_grad():
        expected = module(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
    path = tmp_path / "reference.npz"
    np.savez(path, **_torch_to_bit_npz(module, stages))
    model, variables = models.create("bit_r50x1", pretrained=str(path), **SMALL)
    (logits,) = _logits(model, images, _flat(variables["params"]))
    np.testing.assert_allclose(logits, expected, atol=2e-4, rtol=2e-4)


@pytest.mark.slow  # the full-size model at 224 px: ~100 MB of weights, seconds of compute
def test_full_size_bit_r50x1_loads_a_published_size_file_at_224_px(tmp_path):
    reference = models.create("bit_r50x1", num_classes=1000)
    written = _random_params(reference, 224)
    for key in written:
        if key.endswith("kernel"):
            written[key] = written[key] / math.sqrt(written[key][..., 0].size)
    path = tmp_path / "BiT-M-R50x1-ILSVRC2012.npz"
    np.savez(path, **to_bit_npz(written))
    model, variables = models.create("bit_r50x1", pretrained=str(path))
    assert model == reference
    images = _images(224, 1)
    logits, direct = _logits(model, images, _flat(variables["params"]), written)
    np.testing.assert_array_equal(logits, direct)


@pytest.mark.slow  # 30 train steps through the real loop: about a minute of CPU
def test_bit_fine_tunes_from_a_big_transfer_file_and_learns_shapes(tmp_path):
    import json

    from jaxvision import config as config_lib
    from jaxvision import train

    arch = {"width": 0.25, "stage_sizes": (1, 1, 1, 1)}
    upstream = models.create("bit_r50x1", num_classes=CLASSES, **arch)
    path = tmp_path / "upstream.npz"
    np.savez(path, **to_bit_npz(_random_params(upstream, 32)))
    c = config_lib.base()
    c.seed = 0
    c.model = config_lib.model("bit_r50x1", **arch)
    c.pretrained = str(path)  # a 5-class head: the 4-class run starts from a fresh one
    c.dataset.name = "shapes"
    c.dataset.num_classes = 4
    c.dataset.image_size = 32
    c.dataset.train_split = "train[:64]"  # memorising 64 images shows gradients flow
    c.dataset.eval_split = "test[:64]"
    c.batch_size = 32
    c.num_train_steps = 30
    c.optimizer.learning_rate = 1e-3
    c.schedule.name = "constant"
    c.log_every_steps = 5
    c.eval_every_steps = 0
    c.checkpoint_every_steps = 30
    workdir = tmp_path / "run"
    train.run(config_lib.finalize(c, None), str(workdir))
    with open(workdir / "metrics.jsonl") as f:
        losses = [r["train/loss"] for r in map(json.loads, f) if "train/loss" in r]
    assert len(losses) == 6 and np.isfinite(losses).all(), losses
    assert np.mean(losses[-2:]) < min(losses[0], np.log(4)) - 0.25, losses
    recorded = json.loads((workdir / "config.json").read_text())
    assert str(path) in recorded["pretrained_resolved"]
