"""predict: agrees with evaluate on the same images, any size/colour mode, batched, errors."""

import copy
import hashlib
import io
import json
import os
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxvision import data, evaluate, metrics, parallel, predict, split_inference, workdir
from tests.trained_runs import NUM_CLASSES, cnn_workdir, run_cli, scratch_dir

NUM_IMAGES = 40


@pytest.fixture(scope="module")
def predictor() -> predict.Predictor:
    return predict.Predictor.from_workdir(cnn_workdir())


@pytest.fixture(scope="module")
def test_images() -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The first test-split images (decoded), and evaluate's probabilities for them."""
    wd = cnn_workdir()
    # Written by training's end-of-run evaluation; no test rewrites the shared run's files.
    preds = np.load(os.path.join(evaluate.output_dir(wd, "test"), "predictions.npz"))
    info = data.prepare(workdir.load_config(wd))
    ds = info.builder.as_dataset(split="test", shuffle_files=False).take(NUM_IMAGES)
    examples = list(tfds.as_numpy(ds))
    images = [ex["image"] for ex in examples]
    labels = np.array([ex["label"] for ex in examples])
    assert np.array_equal(labels, preds["labels"][:NUM_IMAGES])
    return images, labels, metrics.softmax(preds["logits"][:NUM_IMAGES])


def _save(array: np.ndarray, path: str, mode: str | None = None, **kwargs) -> str:
    img = Image.fromarray(array)
    if mode:
        img = img.convert(mode)
    img.save(path, **kwargs)
    return path


def test_png_files_give_evaluates_probabilities(predictor, test_images):
    images, _, eval_probs = test_images
    d = scratch_dir("png")
    paths = [_save(im, os.path.join(d, f"{i}.png")) for i, im in enumerate(images)]
    probs = predictor.probabilities(paths)
    np.testing.assert_allclose(probs, eval_probs, atol=1e-5)
    # Batching does not change results: one image at a time agrees too.
    np.testing.assert_allclose(predictor.probabilities(paths[:1]), probs[:1], atol=1e-6)


def test_colour_modes_follow_the_eval_decode(predictor, test_images):
    images, _, eval_probs = test_images
    d = scratch_dir("modes")
    rgba = [_save(im, os.path.join(d, f"{i}_rgba.png"), "RGBA") for i, im in enumerate(images)]
    np.testing.assert_allclose(predictor.probabilities(rgba), eval_probs, atol=1e-5)
    gray = [_save(im, os.path.join(d, f"{i}_l.png"), "L") for i, im in enumerate(images[:8])]
    # Grayscale is expanded to three equal channels, exactly like an RGB file of it.
    gray_rgb = [np.repeat(np.asarray(Image.open(p))[..., None], 3, -1) for p in gray]
    np.testing.assert_allclose(
        predictor.probabilities(gray), predictor.probabilities(gray_rgb), atol=1e-6
    )
    # In-memory arrays take the same path as files.
    np.testing.assert_allclose(predictor.probabilities(images), eval_probs, atol=1e-5)


def _eval_pipeline_probs(root: str) -> dict[str, np.ndarray]:
    """Probabilities per file from `data.eval_batches` over `folder:root` with the run's eval_pp."""
    run = workdir.load(cnn_workdir())
    config = copy.deepcopy(run.config)
    config.unlock()
    config.dataset.name = f"folder:{root}"
    config.dataset.eval_pp = run.info.spec.eval_pp
    config.dataset.image_size = run.info.image_shape[0]
    info = data.prepare(config)
    mesh = parallel.make_mesh()
    eval_data = data.eval_batches(config, info, mesh, split="test")
    _, logits = split_inference.forward_split(run.model, run.variables, eval_data, mesh)
    files, _ = info.source.folder.paths_and_labels("test")
    assert len(files) == len(logits)
    return {os.path.basename(f): p for f, p in zip(files, metrics.softmax(logits))}


def test_any_size_and_colour_mode_agrees_with_the_eval_pipeline(predictor, test_images):
    images, _, _ = test_images
    root = scratch_dir("folder")  # a folder dataset: root/<split>/<class>/<image>
    for c in range(NUM_CLASSES):
        os.makedirs(os.path.join(root, "train", f"class{c}"))
        _save(images[c], os.path.join(root, "train", f"class{c}", "a.png"))
    d = os.path.join(root, "test", "class0")
    os.makedirs(d)
    paths = []
    for i, im in enumerate(images[:12]):
        pil = Image.fromarray(im)
        paths += [
            _save(im, os.path.join(d, f"{i}_q90.jpg"), quality=90),
            _save(np.asarray(pil.resize((57, 41))), os.path.join(d, f"{i}_57x41.png")),
            _save(np.asarray(pil.resize((100, 100))), os.path.join(d, f"{i}_100.jpeg")),
            _save(im, os.path.join(d, f"{i}_gray.png"), "L"),
            _save(np.asarray(pil.resize((20, 24))), os.path.join(d, f"{i}_gray.jpg"), "L"),
            _save(im, os.path.join(d, f"{i}_rgba.png"), "RGBA"),
        ]
    expected = _eval_pipeline_probs(root)
    probs = predictor.probabilities(paths)
    for path, p in zip(paths, probs):
        np.testing.assert_allclose(p, expected[os.path.basename(path)], atol=1e-5, err_msg=path)


def test_cli_prints_one_json_line_per_image(predictor, test_images):
    images, _, _ = test_images
    d = scratch_dir("cli")
    paths = [_save(images[0], os.path.join(d, "a.png")), _save(images[1], os.path.join(d, "b.jpg"))]
    result = run_cli(["-m", "jaxvision.predict", f"--workdir={cnn_workdir()}", *paths, "--top_k=3"])
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    expected = predictor.predict(paths, top_k=3)
    assert [line["image"] for line in lines] == paths
    for got, want in zip(lines, expected):
        assert [p["label"] for p in got["top_k"]] == [p["label"] for p in want["top_k"]]
        probs = [p["probability"] for p in got["top_k"]]
        assert probs == sorted(probs, reverse=True)
        assert probs == pytest.approx([p["probability"] for p in want["top_k"]], abs=1e-6)


def test_explain_writes_one_overlay_per_image(test_images, capsys):
    images, _, _ = test_images
    d = scratch_dir("explain")
    paths = [_save(images[i], os.path.join(d, f"img{i}.png")) for i in range(3)]
    out = os.path.join(d, "overlays")
    assert predict.main(["--workdir", cnn_workdir(), *paths, "--explain", out]) == 0
    assert sorted(os.listdir(out)) == ["img0.png", "img1.png", "img2.png"]
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_unreadable_files_get_an_error_line_and_the_others_are_predicted(test_images, capsys):
    # On main: the first unreadable file stopped the command, no prediction at all, exit 2.
    images, _, _ = test_images
    d = scratch_dir("bad")
    good = _save(images[0], os.path.join(d, "good.png"))
    text = os.path.join(d, "notes.png")
    with open(text, "w") as f:
        f.write("this is not an image")
    missing = os.path.join(d, "missing.png")
    other = _save(images[1], os.path.join(d, "other.jpg"))
    out = os.path.join(d, "overlays")
    argv = ["--workdir", cnn_workdir(), good, text, missing, other, "--explain", out]
    assert predict.main(argv) == 2
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.strip().splitlines()]
    assert [line["image"] for line in lines] == [good, text, missing, other]
    assert "top_k" in lines[0] and "top_k" in lines[3]
    assert "cannot decode" in lines[1]["error"] and "no such file" in lines[2]["error"]
    assert "2 of 4 images could not be read" in captured.err
    assert sorted(os.listdir(out)) == ["good.png", "other.png"]


def test_bad_workdirs_exit_2_and_write_nothing(test_images, capsys):
    images, _, _ = test_images
    good = _save(images[0], os.path.join(scratch_dir("bad_workdir"), "good.png"))
    no_ckpt = scratch_dir("no_ckpt")
    with open(os.path.join(cnn_workdir(), "config.json")) as f:
        config_json = f.read()
    with open(os.path.join(no_ckpt, "config.json"), "w") as f:
        f.write(config_json)
    assert predict.main(["--workdir", no_ckpt, good]) == 2
    assert "no checkpoints" in capsys.readouterr().err
    assert os.listdir(no_ckpt) == ["config.json"]

    result = run_cli(["-m", "jaxvision.predict", "--workdir=/nonexistent/run", good])
    assert result.returncode == 2 and "does not exist" in result.stderr and result.stdout == ""


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_explain_refuses_a_folder_that_holds_its_inputs(test_images, capsys):
    # On main: --explain DIR with DIR/x.png as input replaced x.png by its overlay.
    images, _, _ = test_images
    d = scratch_dir("explain_inputs")
    x = _save(images[0], os.path.join(d, "x.png"))
    nested = os.path.join(d, "sub")
    os.makedirs(nested)
    y = _save(images[1], os.path.join(nested, "y.png"))
    before = {p: _sha256(p) for p in (x, y)}
    for out, inputs in [(d, [x]), (d, [y]), (os.path.join(d, "."), [x])]:
        for extra in ([], ["--overwrite"]):
            argv = ["--workdir", cnn_workdir(), *inputs, f"--explain={out}", *extra]
            assert predict.main(argv) == 2
            captured = capsys.readouterr()
            assert "holds the input" in captured.err and captured.out == ""
    assert {p: _sha256(p) for p in (x, y)} == before
    assert sorted(os.listdir(d)) == ["sub", "x.png"]


def test_explain_never_overwrites_unless_asked_and_names_are_unique(test_images, capsys):
    # On main: two inputs with the same stem overwrote each other's overlay.
    images, _, _ = test_images
    d = scratch_dir("explain_names")
    for sub in ("a", "b"):
        os.makedirs(os.path.join(d, sub))
    paths = [
        _save(images[0], os.path.join(d, "a", "x.png")),
        _save(images[1], os.path.join(d, "b", "x.png")),
        _save(images[2], os.path.join(d, "b", "x.jpg")),
        _save(images[3], os.path.join(d, "b", "x-2.png")),
    ]
    assert predict.overlay_names(paths) == ["x.png", "x-2.png", "x-3.png", "x-2-2.png"]
    out = os.path.join(d, "overlays")
    os.makedirs(out)
    keep = os.path.join(out, "x-3.png")
    with open(keep, "w") as f:
        f.write("the user's own file")
    kept = _sha256(keep)
    # A link in the output folder to an image elsewhere is replaced, never written through.
    elsewhere = _save(images[4], os.path.join(d, "elsewhere.png"))
    os.symlink(elsewhere, os.path.join(out, "x.png"))
    before = _sha256(elsewhere)
    assert predict.main(["--workdir", cnn_workdir(), *paths, f"--explain={out}"]) == 2
    captured = capsys.readouterr()
    assert "--overwrite" in captured.err and "x-3.png" in captured.err and captured.out == ""
    assert _sha256(keep) == kept

    assert (
        predict.main(["--workdir", cnn_workdir(), *paths, f"--explain={out}", "--overwrite"]) == 0
    )
    assert sorted(os.listdir(out)) == ["x-2-2.png", "x-2.png", "x-3.png", "x.png"]
    assert os.path.getsize(keep) > 1000 and not os.path.islink(os.path.join(out, "x.png"))
    assert _sha256(elsewhere) == before
    assert len(capsys.readouterr().out.strip().splitlines()) == 4


def test_tiff_and_other_pil_formats_are_predicted_like_png(predictor, test_images):
    # On main: a TIFF among three images gave no prediction at all, exit 2.
    images, _, _ = test_images
    d = scratch_dir("tiff")
    png = [_save(im, os.path.join(d, f"{i}.png")) for i, im in enumerate(images[:3])]
    tiff = _save(images[0], os.path.join(d, "0.tiff"))
    tiff_lzw = _save(images[1], os.path.join(d, "1.tif"), compression="tiff_lzw")
    gray16 = (images[2][..., 0].astype(np.uint16) * 257).astype(np.uint16)
    tiff16 = os.path.join(d, "2_16bit.tif")
    Image.fromarray(gray16).save(tiff16)  # mode I;16
    gray8 = _save(images[2][..., 0], os.path.join(d, "2_gray.png"))
    results = predictor.predict([png[0], tiff, tiff_lzw, png[1], tiff16], skip_unreadable=True)
    assert all("top_k" in r for r in results), results
    probs = predictor.probabilities([tiff, tiff_lzw, tiff16])
    expected = predictor.probabilities([png[0], png[1], gray8])
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_array_inputs_must_be_uint8(predictor):
    with pytest.raises(predict.ImageError, match="uint8"):
        predictor.probabilities([np.zeros((8, 8, 3), np.float32)])
    buffer = io.BytesIO()
    Image.new("RGB", (20, 30), (255, 0, 0)).save(buffer, format="PNG")
    assert predictor.probabilities([buffer.getvalue()]).shape == (1, 6)


def test_import_jaxvision_is_light():
    code = "import sys, jaxvision; print(any(m in sys.modules for m in ('jax', 'tensorflow')))"
    result = run_cli(["-c", code])
    assert result.stdout.strip() == "False", result.stderr
    assert sys.modules["jaxvision"].Predictor is predict.Predictor
