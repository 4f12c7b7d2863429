"""export: StableHLO and SavedModel artifacts reloaded in a fresh process give the same logits."""

import json
import os

import numpy as np
import pytest

from jaxvision import export, predict
from tests.trained_runs import NUM_CLASSES, cnn_workdir, run_cli, scratch_dir


def _reload_logits(path: str, fmt: str, x: np.ndarray) -> list[np.ndarray]:
    d = scratch_dir("reload")
    inputs, outputs = os.path.join(d, "x.npy"), os.path.join(d, "y.npz")
    np.save(inputs, x)
    # A new interpreter: the export is reloaded without the model code of this process.
    script = (
        "import sys\nimport numpy as np\nfrom jaxvision import export\n"
        "path, fmt, inputs, outputs = sys.argv[1:]\n"
        "fn = export.load_stablehlo(path) if fmt == 'stablehlo' else export.load_savedmodel(path)\n"
        "x = np.load(inputs)\n"
        # Two batch sizes: the export is not tied to the one it was traced with.
        "np.savez(outputs, full=np.asarray(fn(x)), part=np.asarray(fn(x[:3])))\n"
    )
    result = run_cli(["-c", script, path, fmt, inputs, outputs])
    assert result.returncode == 0, result.stderr[-3000:]
    out = np.load(outputs)
    return [out["full"], out["part"]]


@pytest.mark.parametrize("fmt", ["stablehlo", "savedmodel"])
def test_export_reloads_in_a_new_process_with_the_same_logits(fmt):
    wd = cnn_workdir()
    out = os.path.join(scratch_dir(fmt), "export")
    result = run_cli(
        ["-m", "jaxvision.export", f"--workdir={wd}", f"--format={fmt}", f"--out={out}"]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(out, "signature.json")) as f:
        sig = json.load(f)
    assert sig["format"] == fmt and sig["step"] == 300
    assert sig["input_shape"] == ["N", 32, 32, 3] and len(sig["class_names"]) == NUM_CLASSES

    predictor = predict.Predictor.from_workdir(wd)
    x = np.random.default_rng(0).uniform(-1, 1, size=(7, 32, 32, 3)).astype(np.float32)
    expected = predictor.logits(x)
    full, part = _reload_logits(out, fmt, x)
    np.testing.assert_allclose(full, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(part, expected[:3], atol=1e-5, rtol=0)
    assert np.abs(expected).max() > 0.1  # a trained model, not a zero head


def test_export_refuses_bad_input(capsys):
    wd = cnn_workdir()
    taken = scratch_dir("taken")
    open(os.path.join(taken, "keep.txt"), "w").close()
    assert export.main(["--workdir", wd, "--format", "stablehlo", "--out", taken]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert os.listdir(taken) == ["keep.txt"]

    out = os.path.join(scratch_dir("missing"), "out")
    assert (
        export.main(["--workdir", "/nonexistent/run", "--format", "stablehlo", "--out", out]) == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert not os.path.exists(out)


def test_runtime_failures_exit_1_not_2(monkeypatch, capsys):
    # On main: an out-of-memory or XLA error while exporting was reported as bad input (2).
    import jax

    def fail(*args, **kwargs):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while exporting")

    monkeypatch.setattr(export, "export", fail)
    out = os.path.join(scratch_dir("oom"), "out")
    assert export.main([f"--workdir={cnn_workdir()}", "--format=stablehlo", f"--out={out}"]) == 1
    assert "out of memory" in capsys.readouterr().err


def test_unknown_format_is_bad_input(capsys):
    out = os.path.join(scratch_dir("format"), "out")
    assert export.main([f"--workdir={cnn_workdir()}", "--format=onnx", f"--out={out}"]) == 2
    assert "stablehlo" in capsys.readouterr().err
    assert not os.path.exists(out)
