"""Exporting a compressed model: int8 kernels stay int8 in StableHLO and SavedModel artifacts
(about a quarter of the float bytes), every format reloads in a fresh process and agrees
with the in-process compressed model, and evaluate --compare shows compression's columns."""

import dataclasses
import json
import os
import re

import numpy as np
import pytest

from jaxvision import compress, evaluate, export, export_int8, predict
from jaxvision import workdir as workdir_lib
from tests.trained_runs import cnn_workdir, run_cli, scratch_dir

# Logits of an int8 export against the in-process compressed model, relative to the largest
# |logit|: StableHLO and SavedModel compute the same int8 * scale products (float rounding
# only); TFLite's dynamic range quantizes activations at run time, full integer everywhere.
TOLERANCE = {"stablehlo": 1e-5, "savedmodel": 1e-5, "dynamic": 0.02, "int8": 0.05}


@pytest.fixture(scope="module")
def int8_dir() -> str:
    """The shared shapes CNN compressed to int8 kernels (no fine-tune: a few seconds)."""
    out = os.path.join(scratch_dir("int8"), "out")
    compress.compress(cnn_workdir(), "int8-weights", out, speed_rounds=1, speed_calls=1)
    return out


@pytest.fixture(scope="module")
def images(int8_dir) -> np.ndarray:
    """16 test images, eval-preprocessed: full-integer scales are calibrated on real ones."""
    from jaxvision import data, parallel

    run = workdir_lib.load(int8_dir)
    batch = next(iter(data.eval_batches(run.config, run.info, parallel.make_mesh())))
    return np.asarray(batch["image"])[:16]


def _reload(artifacts: dict[str, tuple[str, str]], x: np.ndarray) -> dict[str, np.ndarray]:
    """Logits of each named (path, format) export, reloaded together in one new process."""
    d = scratch_dir("reload")
    inputs, outputs = os.path.join(d, "x.npy"), os.path.join(d, "y.npz")
    np.save(inputs, x)
    script = (
        "import json, sys\nimport numpy as np\nfrom jaxvision import export, export_tflite\n"
        "artifacts, inputs, outputs = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]\n"
        "load = {'stablehlo': export.load_stablehlo, 'savedmodel': export.load_savedmodel,\n"
        "        'tflite': export_tflite.load_tflite}\n"
        "x = np.load(inputs)\n"
        "np.savez(outputs, **{k: np.asarray(load[f](p)(x)) for k, (p, f) in artifacts.items()})\n"
    )
    result = run_cli(["-c", script, json.dumps(artifacts), inputs, outputs])
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(outputs) as out:
        return {k: out[k] for k in out.files}


def _weights_bytes(path: str, fmt: str) -> int:
    """Bytes of an export's weights file (what int8 kernels shrink)."""
    if fmt == "stablehlo":
        return os.path.getsize(os.path.join(path, "variables.msgpack"))
    return os.path.getsize(os.path.join(path, "variables", "variables.data-00000-of-00001"))


def _artifact_dtypes(path: str, fmt: str) -> list[str]:
    """The dtype of every weight array an artifact holds, read from the artifact itself."""
    if fmt == "stablehlo":
        import jax
        from flax import serialization

        with open(os.path.join(path, "variables.msgpack"), "rb") as f:
            restored = serialization.msgpack_restore(f.read())
        return [str(np.asarray(x).dtype) for x in jax.tree.leaves(restored)]
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
    return [
        dtype.name
        for name, dtype in reader.get_variable_to_dtype_map().items()
        if name.startswith("variables_list")
    ]


def test_int8_kernels_stay_int8_in_stablehlo_and_savedmodel_at_a_quarter_of_the_bytes(
    int8_dir, images
):
    root = scratch_dir("exports")
    artifacts = {}
    for fmt in ("stablehlo", "savedmodel"):
        for name, workdir in (("int8", int8_dir), ("float", cnn_workdir())):
            out = os.path.join(root, f"{name}_{fmt}")
            export.export(workdir_lib.load(workdir), fmt, out)
            artifacts[f"{name}_{fmt}"] = (out, fmt)
    for fmt in ("stablehlo", "savedmodel"):
        int8_path, float_path = artifacts[f"int8_{fmt}"][0], artifacts[f"float_{fmt}"][0]
        ratio = _weights_bytes(int8_path, fmt) / _weights_bytes(float_path, fmt)
        assert 0.24 < ratio < 0.3, (fmt, ratio)
        # 4 kernels (conv0, conv1, fc0, head) as int8; scales, biases float32.
        assert _artifact_dtypes(int8_path, fmt).count("int8") == 4, fmt
        assert "int8" not in _artifact_dtypes(float_path, fmt), fmt
        with open(os.path.join(int8_path, "signature.json")) as f:
            assert json.load(f)["int8_kernels"]["count"] == 4
        with open(os.path.join(float_path, "signature.json")) as f:
            assert json.load(f)["int8_kernels"] is None

    compressed = predict.Predictor.from_workdir(int8_dir).logits(images)
    reloaded = _reload({k: v for k, v in artifacts.items() if k.startswith("int8")}, images)
    scale = float(np.abs(compressed).max())
    assert scale > 1  # a trained model, not a zero head
    for fmt in ("stablehlo", "savedmodel"):
        np.testing.assert_allclose(
            reloaded[f"int8_{fmt}"], compressed, atol=TOLERANCE[fmt] * scale, rtol=0
        )


def test_a_checkpoint_that_is_not_the_stored_int8_model_is_refused(int8_dir):
    run = workdir_lib.load(int8_dir)
    source = workdir_lib.load(cnn_workdir())
    stale = dataclasses.replace(run, variables=source.variables)
    with pytest.raises(workdir_lib.WorkdirError, match=r"conv0/kernel differs from the checkpoint"):
        export_int8.int8_variables(stale)
    assert export_int8.int8_variables(source) is None  # a float workdir: nothing to keep


def _report(workdir: str, compression: dict | None) -> dict:
    """A report as evaluate writes it, with only the fields the compare table reads."""
    report = {
        "workdir": workdir,
        "model": "cnn",
        "dataset": "shapes",
        "split": "test",
        "step": 300,
        "accuracy": 0.99,
        "top5_accuracy": 1.0,
        "loss": 0.01,
        "precision_recall_f1": {"macro": {"f1": 0.99}},
        "roc_auc": {"macro": None},
        "ece": 0.01,
    }
    return {**report, "compression": compression} if compression else report


def test_compare_table_shows_the_compressed_workdirs_bytes_ratio_and_speed(int8_dir):
    from jaxvision import report_text

    with open(os.path.join(int8_dir, "compression.json")) as f:
        report = json.load(f)
    record = evaluate.compression_record(int8_dir)
    assert evaluate.compression_record(cnn_workdir()) is None
    table = report_text.compare_table([_report("float", None), _report("int8", record)])
    header, _, float_row, int8_row = table.splitlines()
    assert header.endswith(
        "| param bytes | ratio | sparsity | agreement | img/s float / compressed |"
    )
    assert float_row.endswith("| - | - | - | - | - | - |")
    assert f"| int8-weights | {report['param_bytes']['compressed']:,} |" in int8_row
    assert f"| {report['param_bytes']['ratio']:.1%} | {report['sparsity']:.1%} |" in int8_row
    speed = report["img_per_s"]
    assert int8_row.endswith(f"| {speed['float']:.0f} / {speed['compressed']:.0f} |")
    # Without a compressed workdir the table keeps its usual 11 columns.
    assert report_text.compare_table([_report("float", None)]).splitlines()[0].count("|") == 12


@pytest.mark.slow
def test_evaluate_compare_prints_the_compression_columns(int8_dir, capsys):
    status = evaluate.main([f"--workdir={cnn_workdir()}", f"--compare={int8_dir}"])
    assert status == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert "| param bytes | ratio |" in table[0]
    assert table[2].endswith("| - | - | - | - | - | - |")
    assert "| int8-weights |" in table[3]


@pytest.mark.slow
def test_tflite_dynamic_and_full_integer_reload_and_agree_with_the_compressed_model(
    int8_dir, images
):
    root = scratch_dir("tflite")
    artifacts = {}
    for quantization in ("dynamic", "int8"):
        out = os.path.join(root, quantization)
        result = run_cli(
            [
                "-m",
                "jaxvision.export",
                f"--workdir={int8_dir}",
                "--format=tflite",
                f"--tflite_quantization={quantization}",
                f"--out={out}",
            ]
        )
        assert result.returncode == 0, result.stderr[-3000:]
        with open(os.path.join(out, "signature.json")) as f:
            assert json.load(f)["tflite_quantization"] == quantization
        artifacts[quantization] = (out, "tflite")
    float_out = os.path.join(root, "float")
    export.export(workdir_lib.load(cnn_workdir()), "tflite", float_out)  # auto: float
    size = {q: os.path.getsize(os.path.join(p, "model.tflite")) for q, (p, _) in artifacts.items()}
    float_size = os.path.getsize(os.path.join(float_out, "model.tflite"))
    assert size["dynamic"] < 0.3 * float_size and size["int8"] < 0.3 * float_size

    compressed = predict.Predictor.from_workdir(int8_dir).logits(images)
    reloaded = _reload(artifacts, images)
    scale = float(np.abs(compressed).max())
    for quantization in ("dynamic", "int8"):
        np.testing.assert_allclose(
            reloaded[quantization], compressed, atol=TOLERANCE[quantization] * scale, rtol=0
        )


def test_tflite_quantization_auto_is_dynamic_for_int8_kernels_and_float_otherwise():
    from jaxvision import export_tflite

    assert export_tflite.resolve("auto", True) == "dynamic"
    assert export_tflite.resolve("auto", False) == "float"
    assert export_tflite.resolve("int8", False) == "int8"
    with pytest.raises(ValueError, match="dynamic"):
        export_tflite.resolve("int4", True)


@pytest.mark.slow
def test_compress_notebook_compresses_compares_and_exports(tmp_path):
    from tests import test_notebook

    wheel = test_notebook.sync_notebooks.build_wheel(str(tmp_path / "dist"))
    parameters = (
        'SOURCE_RUN = ""\nSOURCE_STEPS = 40\nFINETUNE_STEPS = 10\n'
        'METHODS = ("prune:0.5", "int8-weights")\nWORKDIR = "run"\n'
    )
    nb = test_notebook._run("compress", parameters, wheel, tmp_path)
    text = test_notebook._text(nb)
    for method in ("prune:0.5", "int8-weights"):
        assert re.search(rf"{re.escape(method)} +top-1 [\d.]+ +agreement [\d.]+", text), text[
            -2000:
        ]
    assert "| param bytes | ratio |" in text
    for fmt in ("stablehlo", "savedmodel", "tflite"):
        assert re.search(rf"{fmt} +float [\d,]+ bytes +int8 +[\d,]+ bytes", text), text[-2000:]
        assert re.search(rf"{fmt} +max \|logit difference\|", text), text[-2000:]
    assert "TFLite int8 (dynamic range)" in text
    assert test_notebook._figures(nb) == 1


def test_tflite_without_the_converter_says_what_to_install(monkeypatch, tmp_path):
    import tensorflow as tf

    from jaxvision import export_tflite
    from jaxvision.exit_status import RunFailure

    monkeypatch.delattr(tf.lite, "TFLiteConverter")
    with pytest.raises(RunFailure, match=r"pip install tensorflow"):
        export_tflite.convert(str(tmp_path), "dynamic", [])
