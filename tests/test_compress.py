"""Compression: int8 error bounds per layer type, pruning masks through fine-tune and resume,
compressed workdirs that the other tools read, and bad method strings."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision import checkpoint_choice, compress, predict, train
from jaxvision import config as config_lib
from jaxvision import workdir as workdir_lib
from jaxvision.compression import kernels, methods, pruning, quantize, storage
from tests.trained_runs import cnn_workdir, mnist_cnn_workdir, scratch_dir, smoke_config


def _layers(rng: np.random.Generator) -> dict:
    """One kernel of each layer type compression touches, plus what it must leave alone."""
    normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
    return {
        "Dense_0": {"kernel": normal(64, 128), "bias": normal(128)},
        "conv0": {"kernel": normal(5, 5, 16, 32), "bias": normal(32)},
        "attention": {
            "query": {"kernel": normal(64, 2, 32), "bias": normal(2, 32)},
            "out": {"kernel": normal(2, 32, 64), "bias": normal(64)},
        },
        "LayerNorm_0": {"scale": normal(64), "bias": normal(64)},
        "embedding": {"kernel": normal(4, 4, 3, 64), "bias": normal(64)},
    }


@pytest.mark.parametrize(
    ("layer", "scale_shape"),
    [
        (("Dense_0",), (1, 128)),
        (("conv0",), (1, 1, 1, 32)),
        (("attention", "query"), (1, 2, 32)),
        (("attention", "out"), (1, 1, 64)),
    ],
)
def test_int8_weights_round_trip_within_half_a_step_of_each_output_channel(layer, scale_shape):
    params = _layers(np.random.default_rng(0))
    qparams = quantize.quantize_kernels(params)
    node, qnode = params, qparams
    for key in layer:
        node, qnode = node[key], qnode[key]
    q = qnode["kernel"]
    assert q.qvalue.dtype == jnp.int8 and q.scale.shape == scale_shape
    error = jnp.abs(qwix_dequantized(q) - node["kernel"])
    assert float(jnp.max(error - quantize.error_bound(q))) <= 1e-6
    # absmax: each output channel uses the full int8 range.
    assert int(jnp.max(jnp.abs(q.qvalue))) == 127
    assert float(jnp.max(error)) > 0  # a real quantization, not a copy


def qwix_dequantized(q):
    return quantize.dequantize_kernels({"k": q})["k"]


def test_int8_leaves_biases_norms_and_embeddings_float():
    qparams = quantize.quantize_kernels(_layers(np.random.default_rng(0)))
    assert not quantize.is_quantized(qparams["embedding"]["kernel"])
    assert not quantize.is_quantized(qparams["LayerNorm_0"]["scale"])
    assert not quantize.is_quantized(qparams["Dense_0"]["bias"])


def test_global_magnitude_masks_prune_the_smallest_kernel_weights_only():
    params = _layers(np.random.default_rng(1))
    masks = pruning.magnitude_masks(params, 0.5)
    pruned = pruning.apply_masks(params, masks)
    assert pruning.overall_sparsity(pruned) == pytest.approx(0.5, abs=1e-4)
    kept = [jnp.abs(x)[m] for (_, x), (_, m) in zip(*map(kernels.kernel_leaves, (params, masks)))]
    dropped = [
        jnp.abs(x)[~m] for (_, x), (_, m) in zip(*map(kernels.kernel_leaves, (params, masks)))
    ]
    assert float(max(d.max() for d in dropped)) <= float(min(k.min() for k in kept))
    for untouched in (pruned["embedding"]["kernel"], pruned["LayerNorm_0"]["scale"]):
        assert bool(jnp.all(untouched != 0))
    assert bool(jnp.all(pruned["Dense_0"]["bias"] == params["Dense_0"]["bias"]))


def test_two_four_masks_keep_two_of_every_four_inputs_of_each_output_channel():
    params = _layers(np.random.default_rng(2))
    masks = pruning.n_m_masks(params, 2, 4)
    dense = masks["Dense_0"]["kernel"]  # [in, out]: groups of 4 consecutive inputs
    np.testing.assert_array_equal(np.asarray(dense).reshape(16, 4, 128).sum(1), 2)
    conv = masks["conv0"]["kernel"]  # [5, 5, 16, 32]: input channels grouped
    np.testing.assert_array_equal(np.asarray(conv).reshape(5, 5, 4, 4, 32).sum(3), 2)
    out = np.moveaxis(np.asarray(masks["attention"]["out"]["kernel"]), 2, 0)  # [64, 2*32]
    np.testing.assert_array_equal(out.reshape(64, 16, 4).sum(2), 2)
    # The kept two are the largest |w| of their group.
    w = np.abs(np.asarray(params["Dense_0"]["kernel"])).reshape(16, 4, 128)
    kept_min = np.where(np.asarray(dense).reshape(16, 4, 128), w, np.inf).min(1)
    dropped_max = np.where(np.asarray(dense).reshape(16, 4, 128), -np.inf, w).max(1)
    assert np.all(kept_min >= dropped_max)


def test_cubic_schedule_rises_from_zero_to_the_target_between_start_and_end():
    schedule = pruning.Schedule(sparsity=0.8, start_step=10, end_step=110)
    values = [float(pruning.target_sparsity(jnp.asarray(s), schedule)) for s in (0, 10, 60, 110)]
    assert values == pytest.approx([0.0, 0.0, 0.8 * (1 - 0.5**3), 0.8])


@pytest.mark.parametrize(
    "spec", ["prune:1.5", "prune:0", "prune:4:2", "int4", "prune:2:4,prune:0.5"]
)
def test_a_bad_method_exits_2_listing_the_methods(spec, capsys):
    status = compress.main(["--workdir=/nonexistent", f"--method={spec}"])
    assert status == 2
    err = capsys.readouterr().err
    assert spec in err and "prune:N:M" in err and "int8-weights" in err


def test_methods_compose_in_the_order_given():
    parsed = methods.parse("prune:2:4,int8-weights")
    assert [m.name for m in parsed] == ["prune:2:4", "int8-weights"]
    assert parsed[0].structure == "2:4" and parsed[0].sparsity == 0.5


def _gradual_config(steps: int):
    config = smoke_config(config_lib.model("cnn", features=[8, 16], hidden=[32]), steps)
    config.unlock()
    config.pruning.sparsity = 0.6
    config.pruning.end_step = 10
    config.pruning.every_steps = 5
    config.checkpoint_every_steps = 10
    config.eval_every_steps = 0
    config.lock()
    return config


def _state(workdir: str, config):
    from jaxvision import checkpoint

    built = _built(config)
    ckpts = checkpoint.open_read_only(os.path.join(workdir, "checkpoints"))
    try:
        return ckpts.restore(ckpts.latest_step(), built.abstract_state)[0]
    finally:
        ckpts.close()


def _built(config):
    from jaxvision import data, step_factory

    info = data.prepare(config)
    return step_factory.build(
        config,
        num_classes=info.num_classes,
        image_shape=info.image_shape,
        num_train_examples=info.num_train,
    )


def test_masks_from_a_checkpoint_continue_bitwise_like_an_uninterrupted_run(tmp_path):
    from jaxvision import checkpoint

    config = _gradual_config(20)
    built = _built(config)
    rng = np.random.default_rng(0)
    batches = [
        jax.device_put(
            {
                "image": rng.normal(size=(32, 32, 32, 3)).astype(np.float32),
                "label": rng.integers(0, 6, 32).astype(np.int32),
            },
            built.batch_sharding,
        )
        for _ in range(20)
    ]
    state = built.init_fn()
    for batch in batches[:12]:
        state, _ = built.train_fn(state, batch)
    ckpts = checkpoint.Checkpoints(str(tmp_path / "checkpoints"))
    ckpts.save(12, state, {"step": 12})
    ckpts.wait()
    for batch in batches[12:]:
        state, _ = built.train_fn(state, batch)
    resumed = ckpts.restore(12, built.abstract_state)[0]
    ckpts.close()
    for batch in batches[12:]:
        resumed, _ = built.train_fn(resumed, batch)
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(x, y)
    masks = pruning.masks_of(state.opt_state)
    for (_, w), (_, m) in zip(kernels.kernel_leaves(state.params), kernels.kernel_leaves(masks)):
        np.testing.assert_array_equal(np.asarray(w) != 0, np.asarray(m))
    assert pruning.overall_sparsity(state.params) == pytest.approx(0.6, abs=0.01)


@pytest.mark.slow
def test_gradual_pruning_masks_stay_zero_and_a_resumed_run_ends_bitwise_equal():
    config = _gradual_config(20)
    ref = scratch_dir("gradual")
    train.run(config, ref)
    # Resume from step 10: drop the final checkpoint of a copy and rerun it.
    cut = scratch_dir("gradual_cut")
    shutil.rmtree(cut)
    shutil.copytree(ref, cut)
    shutil.rmtree(os.path.join(cut, "checkpoints", "20"))
    train.run(config, cut)
    a, b = _state(ref, config), _state(cut, config)
    assert int(a.step) == int(b.step) == 20
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    masks = pruning.masks_of(a.opt_state)
    for (_, w), (_, m) in zip(kernels.kernel_leaves(a.params), kernels.kernel_leaves(masks)):
        np.testing.assert_array_equal(np.asarray(w) != 0, np.asarray(m))
    assert pruning.overall_sparsity(a.params) == pytest.approx(0.6, abs=0.01)


@pytest.fixture(scope="module")
def compressed_dir():
    """The shared shapes CNN pruned 2:4 with a short masked fine-tune, then int8 weights."""
    out = os.path.join(scratch_dir("compressed"), "out")
    compress.compress(
        cnn_workdir(),
        "prune:2:4,int8-weights",
        out,
        finetune_steps=20,
        speed_rounds=1,
        speed_calls=2,
    )
    return out


def test_compression_report_has_accuracy_agreement_bytes_sparsity_and_speed(compressed_dir):
    with open(os.path.join(compressed_dir, "compression.json")) as f:
        report = json.load(f)
    assert report["method"] == "prune:2:4,int8-weights"
    evals = [r for r in checkpoint_choice.metrics_records(cnn_workdir()) if "eval/accuracy" in r]
    assert report["num_examples"] == evals[-1]["eval/num_examples"]
    assert 0.8 < report["agreement"] <= 1
    assert report["compressed_top1"] > 0.8
    size = os.path.getsize(os.path.join(compressed_dir, "weights.npz"))
    assert report["param_bytes"]["compressed"] == size
    assert report["param_bytes"]["ratio"] < 0.3
    # conv0 has 5*5*3 inputs, not a multiple of 4: it stays dense; the others are 2:4 (plus
    # the few kept weights that int8 rounds to zero).
    sparsity = report["sparsity_per_layer"]
    for layer in ("conv1/kernel", "fc0/kernel", "head/kernel"):
        assert 0.5 <= sparsity[layer] < 0.51
    assert sparsity["conv0/kernel"] < 0.1
    assert report["img_per_s"]["float"] > 0 and report["img_per_s"]["compressed"] > 0


def test_a_compressed_workdir_loads_and_predicts_like_any_other(compressed_dir):
    run = workdir_lib.load(compressed_dir)
    stored = storage.read(os.path.join(compressed_dir, "weights.npz"))
    for x, y in zip(
        jax.tree.leaves(run.variables["params"]), jax.tree.leaves(stored["params"]), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(x), y)
    image = np.zeros((32, 32, 3), np.uint8)
    image[8:20, 12:16] = 255
    (result,) = predict.Predictor(run).predict([image], top_k=3)
    assert len(result["top_k"]) == 3


def test_evaluate_reads_a_compressed_workdir(compressed_dir):
    from jaxvision import evaluate

    report = evaluate.evaluate_workdir(compressed_dir)
    with open(os.path.join(compressed_dir, "compression.json")) as f:
        assert report["accuracy"] == pytest.approx(json.load(f)["compressed_top1"], abs=1e-9)


@pytest.mark.slow
def test_a_fine_tune_killed_mid_way_resumes_to_the_same_compressed_weights():
    import signal
    import subprocess
    import sys
    import time

    from tests.trained_runs import REPO

    source = mnist_cnn_workdir()
    root = scratch_dir("killed")

    def start(out):
        args = [f"--workdir={source}", "--method=prune:0.5", f"--out={out}"]
        return subprocess.Popen(
            [sys.executable, "-m", "jaxvision.compress", *args, "--finetune_steps=40"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    ref, cut = os.path.join(root, "ref"), os.path.join(root, "cut")
    reference = start(ref)
    _, stderr = reference.communicate(timeout=900)
    assert reference.returncode == 0, stderr[-3000:]
    interrupted = start(cut)
    step_20 = os.path.join(cut, "finetune", "checkpoints", "20")
    deadline = time.time() + 600
    while time.time() < deadline and not os.path.isdir(step_20):
        time.sleep(0.05)
    interrupted.send_signal(signal.SIGKILL)
    interrupted.communicate()
    assert not os.path.exists(os.path.join(cut, "compression.json"))
    resumed = start(cut)
    _, stderr = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, stderr[-3000:]
    a, b = workdir_lib.load(ref), workdir_lib.load(cut)
    for x, y in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("structure", "4:2", "pruning.structure"),
        ("sparsity", 1.0, "pruning.sparsity"),
        ("every_steps", 0, "pruning.every_steps"),
    ],
)
def test_a_bad_pruning_config_fails_naming_the_key(key, value, named):
    config = config_lib.base()
    config.pruning[key] = value
    with pytest.raises(ValueError, match=named):
        config_lib.validate(config, num_devices=1, num_processes=1)


def test_n_m_structure_with_a_sparsity_too_is_refused():
    config = config_lib.base()
    config.pruning.structure, config.pruning.sparsity = "2:4", 0.5
    with pytest.raises(ValueError, match=r"leave pruning\.sparsity at 0"):
        config_lib.validate(config, num_devices=1, num_processes=1)
