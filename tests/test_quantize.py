"""int8 models through qwix: PTQ error bounds per layer type, calibration determinism, the
int8 workdir against its float source, QAT training and resume, and bad method strings."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import qwix

from jaxvision import compress, data, models, parallel, step_factory, train
from jaxvision import config as config_lib
from jaxvision import workdir as workdir_lib
from jaxvision.compression import quantized_model, storage
from tests.trained_runs import cnn_workdir, scratch_dir, smoke_config


def _quantization(mode: str):
    q = config_lib.base().quantization
    q.mode = mode
    return q


def _tiny_vit():
    """One block with every layer type: a conv patch embedding, attention projections
    (DenseGeneral), MLP and head (Dense)."""
    return models.create(
        "vit_ti4", num_classes=3, depth=1, hidden_size=16, num_heads=2, mlp_dim=32, image_size=8
    )


def _tiny_cnn():
    return models.create("cnn", num_classes=3, features=[4], hidden=[8])


_MODELS = {"cnn": (_tiny_cnn, (8, 8, 1)), "vit": (_tiny_vit, (8, 8, 3))}


@functools.cache
def _ptq_params(name: str):
    """Float parameters of a tiny model and the dynamic int8 PTQ model's parameters."""
    model_fn, image_shape = _MODELS[name]
    model = model_fn()
    images = jnp.zeros((1, *image_shape), jnp.float32)
    params = jax.jit(lambda: model.init(jax.random.PRNGKey(1), images, train=False))()["params"]
    ptq = quantized_model.apply(model, _quantization("ptq-dynamic"))
    return params, quantized_model.quantize_params(ptq, params, image_shape)


_ATTENTION = ("Transformer", "encoderblock_0", "MultiHeadDotProductAttention_1")


@pytest.mark.parametrize(
    ("name", "path", "scale_shape"),
    [
        ("cnn", ("conv0", "kernel"), (1, 1, 1, 4)),
        ("cnn", ("fc0", "kernel"), (1, 8)),
        ("vit", (*_ATTENTION, "query", "kernel"), (1, 2, 8)),  # [in, heads, head_dim]
        ("vit", (*_ATTENTION, "out", "kernel"), (1, 1, 16)),  # [heads, head_dim, out]
    ],
    ids=["conv", "dense", "attention_query", "attention_out"],
)
def test_ptq_kernels_dequantize_within_half_a_step_of_each_output_channel(name, path, scale_shape):
    params, qparams = _ptq_params(name)
    kernel, qkernel = params, qparams
    for key in path:
        kernel, qkernel = kernel[key], qkernel[key]
    assert quantized_model.is_quantized_param(qkernel)
    q = qkernel.array
    assert q.qvalue.dtype == jnp.int8 and q.scale.shape == scale_shape
    error = jnp.abs(qwix.dequantize(q) - kernel)
    assert float(jnp.max(error - q.scale / 2)) <= 1e-7  # |err| <= scale/2 element by element
    assert float(jnp.max(error)) > 0  # really quantized
    assert int(jnp.max(jnp.abs(q.qvalue))) == 127  # absmax: the full range is used


def test_ptq_leaves_the_patch_embedding_and_biases_float():
    _, qparams = _ptq_params("vit")
    assert not quantized_model.is_quantized_param(qparams["embedding"]["kernel"])
    assert not quantized_model.is_quantized_param(qparams["head"]["bias"])
    assert quantized_model.is_quantized_param(qparams["head"]["kernel"])


def test_dynamic_int8_cnn_stays_close_to_float_and_really_runs_int8():
    model = _tiny_cnn()
    images = jnp.asarray(np.random.default_rng(2).normal(size=(4, 8, 8, 1)), jnp.float32)
    params, qparams = _ptq_params("cnn")
    ptq = quantized_model.apply(model, _quantization("ptq-dynamic"))
    exact = model.apply({"params": params}, images, train=False)
    int8 = ptq.apply({"params": qparams}, images, train=False)
    assert float(jnp.max(jnp.abs(int8 - exact))) < 0.05 * float(jnp.max(jnp.abs(exact)))
    hlo = jax.jit(lambda p: ptq.apply({"params": p}, images, train=False)).lower(qparams)
    assert "i8" in hlo.as_text()  # int8 operands in the graph, not float fake quantization


def test_calibration_gives_the_same_scales_from_the_same_batches_and_others_from_others():
    model = _tiny_cnn()
    rng = np.random.default_rng(3)
    batches = [jnp.asarray(rng.normal(size=(8, 8, 8, 1)), jnp.float32) for _ in range(2)]
    variables = model.init(jax.random.PRNGKey(0), batches[0], train=False)
    q = _quantization("ptq-static")
    a = quantized_model.calibrate(model, variables, batches, q)
    b = quantized_model.calibrate(model, variables, list(batches), q)
    c = quantized_model.calibrate(model, variables, [x * 2 for x in batches], q)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert int(a["fc0"]["dot_general0_lhs"]["count"]) == 2
    assert not np.array_equal(
        a["conv0"]["conv_general_dilated0_lhs"]["sum_of_absmax"],
        c["conv0"]["conv_general_dilated0_lhs"]["sum_of_absmax"],
    )


@pytest.mark.slow
def test_static_scales_from_a_runs_training_batches_are_identical_run_to_run():
    run = workdir_lib.load(cnn_workdir())
    scales = []
    for _ in range(2):
        config, final = compress.int8_model(run.config, run.info, run.variables, "ptq-static", 2)
        scales.append(quantized_model.activation_scales(final["params"]))
    assert config.quantization.mode == "ptq-static"
    assert sorted(scales[0]) == sorted(scales[1]) and len(scales[0]) == 4  # 2 conv, 2 dense
    for name, value in scales[0].items():
        np.testing.assert_array_equal(value, scales[1][name])
        assert float(value.min()) > 0


@pytest.fixture(scope="module")
def int8_dir():
    """The shared shapes CNN as a static int8 model (2 calibration batches)."""
    out = os.path.join(scratch_dir("int8"), "out")
    compress.compress(
        cnn_workdir(), "int8", out, calibration_batches=2, speed_rounds=1, speed_calls=1
    )
    return out


def test_int8_model_is_within_two_points_of_float_and_its_workdir_evaluates_the_same(int8_dir):
    with open(os.path.join(int8_dir, "compression.json")) as f:
        report = json.load(f)
    assert report["method"] == "int8" and report["calibration_batches"] == 2
    # Tolerance: 2 points of top-1 and 95% agreement on the 32px shapes eval split.
    assert report["compressed_top1"] >= report["float_top1"] - 0.02
    assert report["agreement"] >= 0.95
    assert report["param_bytes"]["ratio"] < 0.3
    from jaxvision import evaluate

    assert evaluate.evaluate_workdir(int8_dir)["accuracy"] == pytest.approx(
        report["compressed_top1"], abs=1e-9
    )


def test_int8_workdir_holds_int8_kernels_and_the_weight_file_their_input_scales(int8_dir):
    run = workdir_lib.load(int8_dir)
    assert run.config.quantization.mode == "ptq-static"
    kernel = run.variables["params"]["conv1"]["kernel"].array
    assert kernel.qvalue.dtype == jnp.int8
    with np.load(os.path.join(int8_dir, "weights.npz"), allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["params/conv1/kernel.values"], kernel.qvalue)
        np.testing.assert_array_equal(npz["params/conv1/kernel.scale"], kernel.scale)
        act = npz["act_scales/conv1/conv_general_dilated0_lhs_scale.values"]
    scale = run.variables["params"]["conv1"]["conv_general_dilated0_lhs_scale"].array
    np.testing.assert_array_equal(act, scale)
    stored = storage.read(os.path.join(int8_dir, "weights.npz"))
    np.testing.assert_array_equal(
        stored["params"]["conv1"]["kernel"], qwix.dequantize(kernel)
    )  # fmt: skip
    assert set(stored["act_scales"]) == {"conv0", "conv1", "fc0", "head"}


def test_an_int8_workdir_exports_its_int8_graph_and_refuses_tflite(int8_dir, tmp_path):
    from jaxvision import export

    run = workdir_lib.load(int8_dir)
    paths = export.export(run, "stablehlo", str(tmp_path / "hlo"))
    with open(paths[1], "rb") as f:
        from flax import serialization

        stored = serialization.msgpack_restore(f.read())
    # The kernels are int8 in the artifact, under their tree paths.
    assert stored["['params']['conv1']['kernel'].array.qvalue"].dtype == np.int8
    images = np.random.RandomState(0).rand(8, *run.info.image_shape).astype(np.float32)
    expected = np.asarray(run.model.apply(run.variables, images, train=False))
    got = np.asarray(export.load_stablehlo(str(tmp_path / "hlo"))(images))
    # The same int8 graph: only float rounding of the rescaling may differ.
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    with pytest.raises(workdir_lib.WorkdirError, match="tflite_quantization=int8"):
        export.export(run, "tflite", str(tmp_path / "tflite"))


def _qat_config(steps: int = 20):
    config = smoke_config(config_lib.model("cnn", features=[8, 16], hidden=[32]), steps)
    config.unlock()
    config.quantization.mode = "qat"
    config.lock()
    return config


def test_qat_trains_the_fake_quantized_model_and_resumes_bitwise(tmp_path):
    from jaxvision import checkpoint

    config = _qat_config()
    config_lib.validate(config, num_devices=1, num_processes=1)
    info = data.prepare(config)
    built = step_factory.build(
        config, num_classes=info.num_classes, image_shape=info.image_shape, num_train_examples=100
    )
    rng = np.random.default_rng(0)
    batches = [
        jax.device_put(
            {
                "image": rng.normal(size=(32, *info.image_shape)).astype(np.float32),
                "label": rng.integers(0, info.num_classes, 32).astype(np.int32),
            },
            built.batch_sharding,
        )
        for _ in range(4)
    ]
    state = built.init_fn()
    float_model = models.create("cnn", num_classes=info.num_classes, features=[8, 16], hidden=[32])
    images = batches[0]["image"]
    fake = built.model.apply({"params": state.params}, images, train=False)
    exact = float_model.apply({"params": state.params}, images, train=False)
    assert 0 < float(jnp.max(jnp.abs(fake - exact))) < 0.1 * float(jnp.max(jnp.abs(exact)))
    first = jax.tree.map(np.asarray, state.params)
    state, metrics = built.train_fn(state, batches[0])
    state, _ = built.train_fn(state, batches[1])
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    ckpts = checkpoint.Checkpoints(str(tmp_path / "checkpoints"))
    ckpts.save(2, state, {"step": 2})
    ckpts.wait()
    for batch in batches[2:]:
        state, _ = built.train_fn(state, batch)
    resumed = ckpts.restore(2, built.abstract_state)[0]
    ckpts.close()
    for batch in batches[2:]:
        resumed, _ = built.train_fn(resumed, batch)
    for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(state.params), strict=True)
    )


@pytest.mark.slow
def test_compress_int8_of_a_qat_run_keeps_the_qat_models_accuracy():
    config = _qat_config(200)
    source = scratch_dir("qat")
    train.run(config, source)
    out = os.path.join(scratch_dir("qat_int8"), "out")
    report = compress.compress(source, "int8", out, speed_rounds=1, speed_calls=1)
    assert report["float_top1"] > 0.5  # the QAT model itself learnt
    assert abs(report["compressed_top1"] - report["float_top1"]) <= 0.01
    assert report["agreement"] >= 0.97


@pytest.mark.slow
def test_pruned_then_dynamic_int8_composes_and_loads():
    out = os.path.join(scratch_dir("prune_int8dyn"), "out")
    report = compress.compress(
        cnn_workdir(), "prune:0.5,int8-dynamic", out, finetune_steps=20, speed_calls=1
    )
    assert report["sparsity"] >= 0.5 and report["compressed_top1"] > 0.8
    run = workdir_lib.load(out)
    assert run.config.quantization.mode == "ptq-dynamic"
    assert run.config.pruning.sparsity == 0  # the int8 model is not trained further
    eval_data = data.eval_batches(run.config, run.info, parallel.make_mesh())
    logits = run.model.apply(run.variables, next(iter(eval_data))["image"], train=False)
    assert logits.shape[-1] == run.info.num_classes


@pytest.mark.parametrize(
    "spec", ["int4", "int8,int8-weights", "int8-dynamic,prune:0.5", "int8:static", ""]
)
def test_a_bad_method_exits_2_listing_every_method(spec, capsys):
    status = compress.main(["--workdir=/nonexistent", f"--method={spec}"])
    assert status == 2
    err = capsys.readouterr().err
    for method in ("prune:S", "prune:N:M", "int8-weights", "int8 (static", "int8-dynamic"):
        assert method in err


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("mode", "int8", "quantization.mode"),
        ("weight_bits", 3, "quantization.weight_bits"),
        ("act_bits", 16, "quantization.act_bits"),
        ("calibration_batches", 0, "quantization.calibration_batches"),
    ],
)
def test_a_bad_quantization_config_fails_naming_the_key(key, value, named):
    config = config_lib.base()
    config.quantization[key] = value
    with pytest.raises(ValueError, match=named):
        config_lib.validate(config, num_devices=1, num_processes=1)


def test_training_an_int8_ptq_model_is_refused_with_what_to_do_instead():
    config = config_lib.base()
    config.quantization.mode = "ptq-static"
    with pytest.raises(ValueError, match=r"train with quantization\.mode='qat'"):
        config_lib.validate(config, num_devices=1, num_processes=1)
