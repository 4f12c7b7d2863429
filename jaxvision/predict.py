"""Predict labels of image files: python -m jaxvision.predict --workdir=DIR IMAGE... [--top_k=5].

Prints one JSON line per image with its top-k labels and probabilities, in input order.
Images of any size and colour mode go through the run's own eval preprocessing (the same
ops, from `jaxvision.data.preprocess`), in batches; formats TensorFlow cannot decode but
PIL can (TIFF, ...) are converted first. An image that cannot be read gets a JSON line
with an `error` instead, the others are still predicted, and the command exits 2.

`--explain=OUTDIR` also writes an overlay PNG per image (attention rollout for ViTs,
Grad-CAM for CNNs/ResNets) named after the image (`cat.png`; `cat-2.png` when two inputs
share a name). OUTDIR must not hold any input, and existing files in it are never
replaced unless `--overwrite` is given.

As a library: `Predictor.from_workdir(DIR).predict(["a.jpg", "b.png"])`.
"""

import functools
import io
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import app, flags

from jaxvision import backend, command_line, exit_status, metrics, workdir_files
from jaxvision import workdir as workdir_lib

Image = str | bytes | np.ndarray


class ImageError(exit_status.BadInputError):
    """An input is not a readable image; the message names it."""


def _encode_array(array: np.ndarray) -> bytes:
    """Pixels [H, W] or [H, W, 1|3|4] uint8 as PNG bytes, so they take the file path's decode."""
    from PIL import Image as PILImage

    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ImageError(f"Image arrays must be uint8 pixels, got dtype {array.dtype}.")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """`x` with zero rows appended up to `rows` (fixed batch shapes compile once)."""
    return np.concatenate([x, np.zeros((rows - len(x), *x.shape[1:]), x.dtype)])


def read_bytes(image: Image) -> bytes:
    """Encoded bytes of a path, bytes or uint8 array; ImageError for missing or unreadable files."""
    if isinstance(image, np.ndarray):
        return _encode_array(image)
    if isinstance(image, bytes):
        return image
    if not os.path.isfile(image):
        raise ImageError(f"{image}: no such file.")
    try:
        with open(image, "rb") as f:
            return f.read()
    except OSError as e:
        raise ImageError(f"{image}: cannot read it ({e.strerror or e}).") from None


def _pil_converted(encoded: bytes, name: str) -> bytes:
    """PNG bytes of an image TensorFlow cannot decode but PIL can (TIFF, ...): RGB, 8 bits."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(io.BytesIO(encoded)) as img:
            if img.mode.startswith("I;16"):
                # 16-bit grey: keep the high byte, as TF's PNG decoder does for 16-bit PNGs.
                array = (np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8)
            else:
                array = np.asarray(img.convert("RGB"))
    except PILImage.DecompressionBombError as e:
        raise ImageError(f"{name}: too large to decode safely ({e})") from None
    except Exception:  # PIL raises many types for files that are not images
        raise ImageError(
            f"{name}: cannot decode it as an image (neither TensorFlow nor PIL can read it)."
        ) from None
    return _encode_array(array)


class Predictor:
    """A trained run ready for inference on raw images."""

    def __init__(self, run: workdir_lib.LoadedRun, *, batch_size: int | None = None):
        import tensorflow as tf

        from jaxvision.data import preprocess

        self.run = run
        self.class_names = run.class_names
        self.batch_size = batch_size or run.config.eval_batch_size or run.config.batch_size
        ops = preprocess.parse(run.info.spec.eval_pp)
        # The eval pipeline maps every example with the same ops and a zero seed.
        self._preprocess = tf.function(
            lambda encoded: preprocess.apply(ops, encoded, tf.zeros([2], tf.int64)),
            input_signature=[tf.TensorSpec([], tf.string)],
        )
        self._logits = backend.jit(functools.partial(backend.forward, run.model))
        self._explain = None  # built on first use: explain.explainer(run.model)

    @classmethod
    def from_workdir(
        cls, workdir: str, *, checkpoint: str = "latest", ema: bool = False
    ) -> "Predictor":
        """Loads `workdir`'s checkpoint (latest, best or a step) for prediction."""
        return cls(workdir_lib.load(workdir, checkpoint_step=checkpoint, ema=ema))

    def _preprocess_one(self, image: Image, name: str) -> np.ndarray:
        import tensorflow as tf

        encoded = read_bytes(image)
        try:
            array = self._preprocess(tf.constant(encoded)).numpy()
        except (tf.errors.InvalidArgumentError, ValueError):
            array = self._preprocess(tf.constant(_pil_converted(encoded, name))).numpy()
        if array.shape != tuple(self.run.info.image_shape):
            raise ImageError(
                f"{name}: preprocessed to shape {array.shape}, but the model expects "
                f"{tuple(self.run.info.image_shape)}."
            )
        return array.astype(np.float32)

    def preprocess_each(self, images: Sequence[Image]) -> list[np.ndarray | ImageError]:
        """Model input [H, W, C] float32 of each image, or the ImageError saying why not."""
        out = []
        for i, image in enumerate(images):
            try:
                out.append(
                    self._preprocess_one(image, image if isinstance(image, str) else f"image #{i}")
                )
            except ImageError as e:
                out.append(e)
        return out

    def preprocess(self, images: Sequence[Image]) -> np.ndarray:
        """Model inputs [N, H, W, C] float32: eval preprocessing of each image."""
        out = self.preprocess_each(images)
        for x in out:
            if isinstance(x, ImageError):
                raise x
        return np.stack(out) if out else np.zeros((0, *self.run.info.image_shape), np.float32)

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        """Logits [N, K] of preprocessed inputs, in fixed-size batches (one compilation)."""
        outputs = []
        for start in range(0, len(inputs), self.batch_size):
            chunk = inputs[start : start + self.batch_size]
            padded = _pad_rows(chunk, self.batch_size)
            outputs.append(np.asarray(self._logits(self.run.variables, padded))[: len(chunk)])
        return np.concatenate(outputs) if outputs else np.zeros((0, len(self.class_names)))

    def probabilities(self, images: Sequence[Image]) -> np.ndarray:
        """Softmax probabilities [N, K] of raw images."""
        return metrics.softmax(self.logits(self.preprocess(images)))

    def predict(
        self, images: Sequence[Image], top_k: int = 5, *, skip_unreadable: bool = False
    ) -> list[dict[str, Any]]:
        """Top-k labels and probabilities per image, in input order.

        With `skip_unreadable`, an image that cannot be read gets `{"image", "error"}` in
        its place instead of raising ImageError.
        """
        inputs = self.preprocess_each(images)
        errors = {i: x for i, x in enumerate(inputs) if isinstance(x, ImageError)}
        if errors and not skip_unreadable:
            raise next(iter(errors.values()))
        readable = [x for x in inputs if not isinstance(x, ImageError)]
        shape = (0, *self.run.info.image_shape)
        probs = metrics.softmax(
            self.logits(np.stack(readable) if readable else np.zeros(shape, np.float32))
        )
        k = max(1, min(top_k, len(self.class_names)))
        results, rows = [], iter(probs)
        for i, image in enumerate(images):
            name = image if isinstance(image, str) else i
            if i in errors:
                results.append({"image": name, "error": str(errors[i])})
                continue
            row = next(rows)
            order = np.argsort(-row, kind="stable")[:k]
            top = [
                {"label": self.class_names[c], "class": int(c), "probability": float(row[c])}
                for c in order
            ]
            results.append({"image": name, "top_k": top})
        return results

    def explain(
        self, images: Sequence[Image], classes: np.ndarray | None = None
    ) -> tuple[np.ndarray, str]:
        """Explanation maps [N, H, W] in 0..1 at the model's input size, and the method."""
        from jaxvision import explain

        if self._explain is None:
            self._explain = explain.explainer(self.run.model)
        method = explain.method_for(self.run.model)
        inputs = self.preprocess(images)
        maps = []
        for start in range(0, len(inputs), self.batch_size):
            chunk = inputs[start : start + self.batch_size]
            # Padded to whole batches (one compilation); pad rows are dropped below.
            chunk_classes = None
            if classes is not None:
                chunk_classes = _pad_rows(
                    np.asarray(classes[start : start + self.batch_size]), self.batch_size
                )
            m, method = self._explain(
                self.run.variables, _pad_rows(chunk, self.batch_size), chunk_classes
            )
            maps.append(m[: len(chunk)])
        height, width = self.run.info.image_shape[:2]
        return np.concatenate(maps) if maps else np.zeros((0, height, width)), method


def overlay_names(paths: Sequence[str]) -> list[str]:
    """One distinct PNG name per input: its stem, then stem-2, stem-3 ... for repeats."""
    taken, names = set(), []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0] or "image"
        name, n = stem, 1
        while name.casefold() in taken:  # case-insensitive: macOS and Windows folders
            n += 1
            name = f"{stem}-{n}"
        taken.add(name.casefold())
        names.append(f"{name}.png")
    return names


def check_explain_dir(out_dir: str, paths: Sequence[str], names: Sequence[str], overwrite: bool):
    """Refuses an overlay folder that holds an input, or whose files would be replaced."""
    if workdir_files.exists(out_dir) and not workdir_files.is_dir(out_dir):
        raise exit_status.BadInputError(f"--explain={out_dir!r} exists and is not a folder.")
    if workdir_files.is_remote(out_dir):  # inputs are local files: none can be in it
        existing = [n for n in names if workdir_files.exists(workdir_files.join(out_dir, n))]
    else:
        existing = _local_clashes(out_dir, paths, names)
    if existing and not overwrite:
        raise exit_status.BadInputError(
            f"--explain={out_dir!r} already has {', '.join(existing[:5])}"
            f"{f' and {len(existing) - 5} more' if len(existing) > 5 else ''}; pass "
            "--overwrite to replace them, or choose another folder."
        )


def _local_clashes(out_dir: str, paths: Sequence[str], names: Sequence[str]) -> list[str]:
    """The overlay names already taken in a local `out_dir`; refuses one holding an input."""
    real_out = os.path.realpath(out_dir)
    for path in paths:
        real = os.path.realpath(path)
        if os.path.commonpath([real, real_out]) == real_out:
            raise exit_status.BadInputError(
                f"--explain={out_dir!r} holds the input {path}; overlays are never written "
                "among the images they explain. Choose another folder."
            )
    return [n for n in names if os.path.lexists(os.path.join(out_dir, n))]


def write_overlays(
    predictor: Predictor,
    paths: list[str],
    results: list[dict],
    out_dir: str,
    names: list[str] | None = None,
) -> list[str]:
    """One PNG per image (named `names`): the image and its map for the top-1 class."""
    from PIL import Image as PILImage

    from jaxvision import plots

    names = names or overlay_names(paths)
    top1 = np.asarray([r["top_k"][0]["class"] for r in results])
    maps, method = predictor.explain(paths, top1)
    written = []
    for path, heatmap, result, name in zip(paths, maps, results, names, strict=True):
        with PILImage.open(path) as img:
            # Show the image as the model saw it: the map is at the model's input size.
            shown = np.asarray(img.convert("RGB").resize(heatmap.shape[::-1]))
        best = result["top_k"][0]
        title = f"{best['label']} ({best['probability']:.2f}) - {method.replace('_', ' ')}"
        target = workdir_files.join(out_dir, name)
        if not workdir_files.is_remote(target) and os.path.islink(target):
            os.remove(target)  # replace the link itself, never write through it
        written.append(plots.overlay(shown, heatmap, target, title))
    return written


FLAGS = flags.FlagValues()  # this tool's own, so it can be imported next to other tools
_WORKDIR = command_line.define_workdir(FLAGS)
_CHECKPOINT = command_line.define_checkpoint(FLAGS)
_EMA = command_line.define_ema(FLAGS)
_TOP_K = command_line.define_top_k(FLAGS)
_EXPLAIN = flags.DEFINE_string(
    "explain", None, "Write an overlay PNG per image into this folder.", flag_values=FLAGS
)
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Let --explain replace files already in its folder.", flag_values=FLAGS
)


def _predict(paths: list[str]) -> None:
    if not paths:
        raise app.UsageError("Give one or more image files after the flags.")
    from jaxvision import console

    console.setup()
    names = overlay_names(paths)
    if _EXPLAIN.value:
        check_explain_dir(_EXPLAIN.value, paths, names, _OVERWRITE.value)
    predictor = Predictor.from_workdir(_WORKDIR.value, checkpoint=_CHECKPOINT.value, ema=_EMA.value)
    results = predictor.predict(paths, top_k=_TOP_K.value, skip_unreadable=True)
    for result in results:
        print(json.dumps(result), flush=True)
    good = [i for i, r in enumerate(results) if "error" not in r]
    if _EXPLAIN.value and good:
        written = write_overlays(
            predictor,
            [paths[i] for i in good],
            [results[i] for i in good],
            _EXPLAIN.value,
            [names[i] for i in good],
        )
        for path in written:
            print(f"wrote {path}", file=sys.stderr)
    bad = [r["error"] for r in results if "error" in r]
    if bad:
        raise ImageError(
            f"{len(bad)} of {len(paths)} images could not be read (their JSON lines have an "
            "`error`): "
            + " ".join(bad[:5])
            + (f" ... and {len(bad) - 5} more" if len(bad) > 5 else "")
        )


def main(argv: list[str] | None = None) -> int:
    """Runs the command on `argv` (default: the process's); returns its exit status."""
    return command_line.run("jaxvision.predict", __doc__, FLAGS, _predict, argv)


if __name__ == "__main__":
    sys.exit(main())
