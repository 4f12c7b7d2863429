"""folder:/root image folders: formats, colour modes, bad files, splits, labels, resume."""

import io
import logging
import os
import struct
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from jaxvision import config as config_lib
from jaxvision import data, parallel
from jaxvision.data import folder, image_ops

RED, BLUE = (220, 30, 30), (30, 30, 220)


def _image(colour, size=(20, 24), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.integers(-20, 20, (*size, 3))
    return np.clip(np.asarray(colour) + noise, 0, 255).astype(np.uint8)


def _save(path, image: Image.Image, fmt: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, fmt)


def _write_class(directory: str, colour, n: int, seed: int) -> None:
    for i in range(n):
        _save(f"{directory}/{i:03d}.jpg", Image.fromarray(_image(colour, seed=seed + i)), "JPEG")


@pytest.fixture
def image_root(tmp_path):
    """train/{cat,dog,zebra(empty)} and test/{cat,dog}, with every format and bad files in cat."""
    root = tmp_path / "pets"
    cat, dog = root / "train" / "cat", root / "train" / "dog"
    _write_class(str(cat), RED, 6, 0)
    _write_class(str(dog), BLUE, 8, 100)
    rgba = np.dstack([_image(RED, seed=7), np.full((20, 24), 128, np.uint8)])
    _save(f"{cat}/alpha.png", Image.fromarray(rgba, "RGBA"), "PNG")
    _save(f"{cat}/gray.png", Image.fromarray(_image(RED, seed=8)).convert("L"), "PNG")
    _save(f"{cat}/palette.gif", Image.fromarray(_image(RED, seed=9)).convert("P"), "GIF")
    _save(f"{cat}/bitmap.bmp", Image.fromarray(_image(RED, seed=10)), "BMP")
    _save(f"{cat}/modern.webp", Image.fromarray(_image(RED, seed=11)), "WEBP")
    good = (cat / "000.jpg").read_bytes()
    (cat / "corrupt.jpg").write_bytes(good[: len(good) // 2])
    (cat / "notes.jpg").write_text("not an image, just text\n")
    (cat / "empty.png").write_bytes(b"")
    (cat / ".DS_Store").write_bytes(b"\x00\x01")  # hidden files are ignored, not reported
    os.makedirs(root / "train" / "zebra")
    _write_class(str(root / "test" / "cat"), RED, 3, 200)
    _write_class(str(root / "test" / "dog"), BLUE, 4, 300)
    return root


def _config(root, tmp_path, **dataset):
    c = config_lib.base()
    c.dataset.name = f"folder:{root}"
    c.dataset.image_size = 16
    c.dataset.data_dir = str(tmp_path / "cache")
    c.batch_size = 4
    c.eval_batch_size = 4
    for k, v in dataset.items():
        c.dataset[k] = v
    return c


def test_scan_reports_and_skips_bad_files_and_keeps_empty_classes(image_root, tmp_path):
    scanned = folder.scan(str(image_root), cache_dir=str(tmp_path / "cache"))
    assert scanned.class_names == ["cat", "dog", "zebra"]
    r = scanned.report
    cat = image_root / "train" / "cat"
    assert r.corrupt == [str(cat / "corrupt.jpg")]
    assert r.not_image == [str(cat / "notes.jpg")]
    assert r.empty == [str(cat / "empty.png")]
    assert r.num_skipped == 3
    assert r.empty_classes == ["zebra"]
    assert r.num_images == 6 + 5 + 8 + 3 + 4
    paths, labels = scanned.paths_and_labels("train")
    assert len(paths) == 19 and np.bincount(labels, minlength=3).tolist() == [11, 8, 0]
    assert all(
        os.path.basename(os.path.dirname(p)) == ["cat", "dog"][y] for p, y in zip(paths, labels)
    )
    lines = "\n".join(r.lines())
    assert "skipped (corrupt): " + str(cat / "corrupt.jpg") in lines
    assert "class folder with no images: zebra" in lines


def test_bad_files_can_be_a_hard_error(image_root, tmp_path):
    with pytest.raises(ValueError, match="3 bad files") as e:
        folder.scan(str(image_root), on_bad_file="error", cache_dir=str(tmp_path / "c"))
    assert "notes.jpg" in str(e.value) and "corrupt.jpg" in str(e.value)


def test_colour_modes_convert_like_pil_rgb(image_root):
    cat = image_root / "train" / "cat"
    for name in ("000.jpg", "alpha.png", "gray.png", "palette.gif", "bitmap.bmp", "modern.webp"):
        raw = (cat / name).read_bytes()
        ours = image_ops.decode_bytes(tf.constant(raw), 3).numpy()
        pil = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
        assert ours.shape == pil.shape, name
        # Lossless formats must match exactly; JPEG decoders may differ by rounding.
        tolerance = 3 if name.endswith(".jpg") else 0
        assert np.abs(ours.astype(int) - pil).max() <= tolerance, name
        gray = image_ops.decode_bytes(tf.constant(raw), 1).numpy()
        assert gray.shape == (*pil.shape[:2], 1)


def test_scan_verdicts_are_cached(image_root, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    first = folder.scan(str(image_root), cache_dir=cache)
    monkeypatch.setattr(folder, "_verdict", lambda path: pytest.fail(f"re-verified {path}"))
    second = folder.scan(str(image_root), cache_dir=cache)
    assert second.report.corrupt == first.report.corrupt
    assert second.splits["train"][0] == first.splits["train"][0]


def test_folder_through_the_pipeline_labels_and_exactly_once_eval(image_root, tmp_path):
    config = _config(image_root, tmp_path, eval_pp="decode|resize(16)|value_range(0,1)")
    config_lib.validate(config, num_devices=1, num_processes=1)
    info = data.prepare(config)
    assert info.num_classes == 3 and info.class_names == ["cat", "dog", "zebra"]
    assert (info.num_train, info.num_eval) == (19, 7)
    assert info.image_shape == (16, 16, 3)
    assert data.class_counts(info).tolist() == [11, 8, 0]
    mesh = parallel.make_mesh()
    eval_data = data.eval_batches(config, info, mesh)
    images, labels, masks = [], [], []
    for b in eval_data:
        images.append(np.asarray(b["image"]))
        labels.append(np.asarray(b["label"]))
        masks.append(np.asarray(b["mask"]))
    images, labels, masks = map(np.concatenate, (images, labels, masks))
    assert masks.sum() == 7 and len(masks) == 8
    real = masks > 0
    assert sorted(labels[real].tolist()) == [0, 0, 0, 1, 1, 1, 1]
    red_minus_blue = images[real][..., 0].mean((1, 2)) - images[real][..., 2].mean((1, 2))
    assert np.all((red_minus_blue > 0.3) == (labels[real] == 0))  # the label fits the pixels
    batch = next(data.train_batches(config, info, mesh))
    x = np.asarray(batch["image"])
    assert x.shape == (4, 16, 16, 3) and x.dtype == np.float32


def test_folder_train_stream_resumes_exactly(image_root, tmp_path):
    config = _config(image_root, tmp_path, shuffle_buffer=7)
    info = data.prepare(config)
    mesh = parallel.make_mesh()
    it = data.train_batches(config, info, mesh)
    full = [np.asarray(next(it)["image"]) for _ in range(12)]  # > 2 epochs of 19
    resumed = data.train_batches(config, info, mesh, start_step=9)
    for step in range(9, 12):
        np.testing.assert_array_equal(np.asarray(next(resumed)["image"]), full[step])


def test_train_only_folder_holds_out_a_stratified_validation_fraction(tmp_path):
    root = tmp_path / "only_train"
    _write_class(str(root / "train" / "a"), RED, 10, 0)
    _write_class(str(root / "train" / "b"), BLUE, 20, 50)
    config = _config(root, tmp_path, validation_fraction=0.2)
    info = data.prepare(config)
    assert (info.num_train, info.num_eval) == (24, 6)
    train_paths, _ = info.source.folder.paths_and_labels("train")
    eval_paths, eval_labels = info.source.folder.paths_and_labels("test")
    assert not set(train_paths) & set(eval_paths)
    assert np.bincount(eval_labels).tolist() == [2, 4]


def test_split_with_unknown_class_folder_is_an_error(image_root, tmp_path):
    _write_class(str(image_root / "test" / "horse"), BLUE, 1, 0)
    with pytest.raises(ValueError, match=r"not in .*train: \['horse'\]"):
        folder.scan(str(image_root), cache_dir=str(tmp_path / "c"))


def test_missing_folder_says_what_layout_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.prepare(_config(tmp_path / "nowhere", tmp_path))
    os.makedirs(tmp_path / "flat")
    with pytest.raises(FileNotFoundError, match=r"train/<class>/<image>"):
        data.prepare(_config(tmp_path / "flat", tmp_path))


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's first bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def warnings_logged():
    handler = _Warnings()
    folder.log.addHandler(handler)
    yield handler.lines
    folder.log.removeHandler(handler)


def test_links_unreadable_files_bad_names_and_bombs_are_reported_and_skipped(
    image_root, tmp_path, monkeypatch, warnings_logged
):
    # On main: a dangling link or unreadable file crashed the scan (os.stat / open raised),
    # a non-UTF-8 name failed later inside tf.data without naming the file, and a bomb
    # was decoded in full.
    cat = image_root / "train" / "cat"
    os.symlink(tmp_path / "moved_away.jpg", cat / "dangling.jpg")
    os.mkfifo(cat / "pipe.jpg")  # reading it would block the scan forever
    locked = cat / "locked.jpg"
    locked.write_bytes((cat / "000.jpg").read_bytes())
    bad_name = os.path.join(os.fsencode(cat), b"caf\xe9.jpg")
    with open(bad_name, "wb") as f:
        f.write((cat / "001.jpg").read_bytes())
    (cat / "bomb.png").write_bytes(_png_header(30_000, 30_000))
    _save(f"{cat}/big.png", Image.fromarray(_image(RED, size=(60, 70))), "PNG")
    real_open = open

    def open_denying(path, *args, **kwargs):
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(folder, "open", open_denying, raising=False)
    decode = image_ops.decode_bytes
    decoded = []
    monkeypatch.setattr(
        image_ops,
        "decode_bytes",
        lambda data, ch: decoded.append(len(data.numpy())) or decode(data, ch),
    )
    scanned = folder.scan(
        str(image_root), cache_dir=str(tmp_path / "cache"), max_image_pixels=60 * 70 - 1
    )
    r = scanned.report
    assert r.broken_link == [str(cat / "dangling.jpg")]
    assert r.unreadable == [str(cat / "locked.jpg"), str(cat / "pipe.jpg")]
    assert r.bad_name == [os.fsdecode(bad_name)]
    assert r.too_large == [str(cat / "big.png"), str(cat / "bomb.png")]
    assert len((cat / "bomb.png").read_bytes()) not in decoded  # sized from the header only
    assert r.num_skipped == 3 + 1 + 2 + 1 + 2
    paths, _ = scanned.paths_and_labels("train")
    assert len(paths) == 19  # exactly the good files of the first scan
    logged = "\n".join(warnings_logged)
    for name in ("dangling.jpg", "locked.jpg", "pipe.jpg", "caf\\xe9.jpg", "bomb.png", "big.png"):
        assert name in logged, name
    assert "skipped (file name is not UTF-8)" in logged

    # The unreadable file is not remembered as bad: readable again, it is an image again.
    monkeypatch.setattr(folder, "open", real_open, raising=False)
    again = folder.scan(
        str(image_root), cache_dir=str(tmp_path / "cache"), max_image_pixels=60 * 70 - 1
    )
    assert again.report.unreadable == [str(cat / "pipe.jpg")]
    # A higher limit admits the big image (the limit is part of the cached verdict).
    bigger = folder.scan(str(image_root), cache_dir=str(tmp_path / "cache"), max_image_pixels=10**6)
    assert bigger.report.too_large == [str(cat / "bomb.png")]


def test_a_folder_with_bad_names_trains_through_the_pipeline(image_root, tmp_path):
    cat = image_root / "train" / "cat"
    with open(os.path.join(os.fsencode(cat), b"\xff\xfe.jpg"), "wb") as f:
        f.write((cat / "001.jpg").read_bytes())
    os.symlink(tmp_path / "gone.jpg", cat / "gone.jpg")
    config = _config(image_root, tmp_path)
    info = data.prepare(config)
    assert info.num_train == 19
    batch = next(data.train_batches(config, info, parallel.make_mesh()))
    assert np.asarray(batch["image"]).shape == (4, 16, 16, 3)


def test_pixel_limit_is_a_checked_config_key(image_root, tmp_path):
    config = _config(image_root, tmp_path, max_image_pixels=-1)
    with pytest.raises(ValueError, match=r"dataset\.max_image_pixels"):
        config_lib.validate(config, num_devices=1, num_processes=1)
    with pytest.raises(ValueError, match=r"more pixels than dataset\.max_image_pixels"):
        data.prepare(_config(image_root, tmp_path, max_image_pixels=100, on_bad_file="error"))
