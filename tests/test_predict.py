"""predict: agrees with evaluate on the same images, any size/colour mode, batched, errors."""

import copy
import io
import json
import os
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxvision import data, evaluate, metrics, parallel, predict, workdir
from tests.trained_runs import NUM_CLASSES, cnn_workdir, run_cli, scratch_dir

NUM_IMAGES = 40


@pytest.fixture(scope="module")
def predictor() -> predict.Predictor:
    return predict.Predictor.from_workdir(cnn_workdir())


@pytest.fixture(scope="module")
def test_images() -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """The first test-split images (decoded), and evaluate's probabilities for them."""
    wd = cnn_workdir()
    out = evaluate.output_dir(wd, "test")
    if not os.path.isfile(os.path.join(out, "predictions.npz")):
        assert evaluate.main(["--workdir", wd]) == 0
    preds = np.load(os.path.join(out, "predictions.npz"))
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
    _, logits = evaluate.forward_split(run.model, run.variables, eval_data, mesh)
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
    result = run_cli(
        ["-m", "jaxvision.predict", f"--workdir={cnn_workdir()}", *paths, "--top-k", "3"]
    )
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


def test_bad_inputs_exit_nonzero_and_write_nothing(test_images, capsys):
    images, _, _ = test_images
    d = scratch_dir("bad")
    good = _save(images[0], os.path.join(d, "good.png"))
    text = os.path.join(d, "notes.png")
    with open(text, "w") as f:
        f.write("this is not an image")
    out = os.path.join(d, "overlays")
    assert predict.main(["--workdir", cnn_workdir(), good, text, "--explain", out]) == 2
    captured = capsys.readouterr()
    assert "notes.png" in captured.err and "cannot decode" in captured.err
    assert captured.out == ""
    assert not os.path.exists(out)

    assert predict.main(["--workdir", cnn_workdir(), os.path.join(d, "missing.png")]) == 2
    assert "no such file" in capsys.readouterr().err

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
