"""Predict labels of image files: python -m jaxvision.predict --workdir=DIR IMAGE... [--top-k 5].

Prints one JSON line per image with its top-k labels and probabilities. Images of any
size and colour mode go through the run's own eval preprocessing (the same ops, from
`jaxvision.data.preprocess`), in batches. `--explain OUTDIR` also writes an overlay PNG
per image (attention rollout for ViTs, Grad-CAM for CNNs/ResNets).

As a library: `Predictor.from_workdir(DIR).predict(["a.jpg", "b.png"])`.
"""

import argparse
import functools
import io
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxvision import metrics, steps, xla_options
from jaxvision import workdir as workdir_lib

Image = str | bytes | np.ndarray


class ImageError(ValueError):
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
    """Encoded bytes of a path, bytes or uint8 array; ImageError for missing files."""
    if isinstance(image, np.ndarray):
        return _encode_array(image)
    if isinstance(image, bytes):
        return image
    if not os.path.isfile(image):
        raise ImageError(f"{image}: no such file.")
    with open(image, "rb") as f:
        return f.read()


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
        self._logits = jax.jit(
            functools.partial(steps.forward, run.model),
            compiler_options=xla_options.compiler_options(),
        )
        self._explain = None  # built on first use: explain.explainer(run.model)

    @classmethod
    def from_workdir(
        cls, workdir: str, *, checkpoint: str = "latest", ema: bool = False
    ) -> "Predictor":
        """Loads `workdir`'s checkpoint (latest, best or a step) for prediction."""
        return cls(workdir_lib.load(workdir, checkpoint_step=checkpoint, ema=ema))

    def preprocess(self, images: Sequence[Image]) -> np.ndarray:
        """Model inputs [N, H, W, C] float32: eval preprocessing of each image."""
        import tensorflow as tf

        out = []
        for i, image in enumerate(images):
            name = image if isinstance(image, str) else f"image #{i}"
            encoded = read_bytes(image)
            try:
                array = self._preprocess(tf.constant(encoded)).numpy()
            except (tf.errors.InvalidArgumentError, ValueError):
                raise ImageError(
                    f"{name}: cannot decode it as an image; jaxvision reads JPEG, PNG, BMP and "
                    "GIF files."
                ) from None
            if array.shape != tuple(self.run.info.image_shape):
                raise ImageError(
                    f"{name}: preprocessed to shape {array.shape}, but the model expects "
                    f"{tuple(self.run.info.image_shape)}."
                )
            out.append(array.astype(np.float32))
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

    def predict(self, images: Sequence[Image], top_k: int = 5) -> list[dict[str, Any]]:
        """Top-k labels and probabilities per image, in input order."""
        probs = self.probabilities(images)
        k = max(1, min(top_k, probs.shape[1]))
        results = []
        for i, row in enumerate(probs):
            order = np.argsort(-row, kind="stable")[:k]
            results.append(
                {
                    "image": images[i] if isinstance(images[i], str) else i,
                    "top_k": [
                        {
                            "label": self.class_names[c],
                            "class": int(c),
                            "probability": float(row[c]),
                        }
                        for c in order
                    ],
                }
            )
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


def write_overlays(
    predictor: Predictor, paths: list[str], results: list[dict], out_dir: str
) -> list[str]:
    """One PNG per image: the image and its explanation map for the top-1 class."""
    from PIL import Image as PILImage

    from jaxvision import plots

    top1 = np.asarray([r["top_k"][0]["class"] for r in results])
    maps, method = predictor.explain(paths, top1)
    written, used = [], set()
    for path, heatmap, result in zip(paths, maps, results):
        stem = os.path.splitext(os.path.basename(path))[0]
        name = stem if stem not in used else f"{stem}_{len(used)}"
        used.add(name)
        with PILImage.open(path) as img:
            # Show the image as the model saw it: the map is at the model's input size.
            shown = np.asarray(img.convert("RGB").resize(heatmap.shape[::-1]))
        best = result["top_k"][0]
        title = f"{best['label']} ({best['probability']:.2f}) - {method.replace('_', ' ')}"
        written.append(plots.overlay(shown, heatmap, os.path.join(out_dir, f"{name}.png"), title))
    return written


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(prog="python -m jaxvision.predict", description=__doc__)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--workdir", required=True, help="a training run's workdir")
    p.add_argument("--top-k", type=int, default=5, help="labels per image")
    p.add_argument("--checkpoint", default="latest", help="latest | best | a step number")
    p.add_argument("--ema", action="store_true", help="use the EMA weights")
    p.add_argument("--explain", metavar="OUTDIR", default=None, help="write overlay PNGs here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs the command; returns the process exit code (2 for bad input)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from jaxvision import console

    console.setup()
    try:
        if args.top_k < 1:
            raise ImageError(f"--top-k must be >= 1, got {args.top_k}.")
        predictor = Predictor.from_workdir(args.workdir, checkpoint=args.checkpoint, ema=args.ema)
        # Every image is read and checked before anything is printed or written.
        results = predictor.predict(args.images, top_k=args.top_k)
    except (workdir_lib.WorkdirError, ImageError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for result in results:
        print(json.dumps(result))
    if args.explain:
        for path in write_overlays(predictor, args.images, results, args.explain):
            print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
