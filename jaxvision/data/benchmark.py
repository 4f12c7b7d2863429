"""The input pipeline alone, in images per second: is the model ever starved?

    python -m jaxvision.data.benchmark --config=configs/quickstart.py \
        --config.dataset.name=shapes --config.batch_size=128 \
        --config.dataset.train_pp="decode|resize(32)|random_crop(32,4)|flip_lr|normalize(cifar10)"

prints one JSON line with `pipeline_img_per_s` (after warm-up batches, over timed
batches of the training stream: read, shuffle, decode, augment, batch; no device
transfer), to compare with the train step's img/s from `python -m jaxvision.benchmark`.
`--config.dataset.threads=1` measures one core. `--write_jpegs=DIR` first writes
synthetic ImageNet-sized JPEGs into DIR/train/<class>/ for `dataset.name=folder:DIR`.
"""

import json
import os
import time

from absl import app, flags
from ml_collections import config_flags

from jaxvision import command_line


def write_jpegs(root: str, num: int, num_classes: int = 4, size=(375, 500), seed: int = 0) -> None:
    """Writes `num` photo-sized JPEGs (smooth colour fields plus noise) into root/train/<class>/."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    for i in range(num):
        directory = os.path.join(root, "train", f"class{i % num_classes}")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"{i:06d}.jpg")
        if os.path.exists(path):
            continue
        a, b, c = rng.uniform(0.005, 0.05, 3)
        base = np.stack([np.sin(a * yy), np.cos(b * xx), np.sin(c * (xx + yy))], -1)
        pixels = 127.5 + 100 * base + rng.normal(0, 12, (h, w, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)


def measure(config, warmup: int, batches: int) -> dict:
    """Times the training stream of `config` on this process; returns the JSON record."""
    from jaxvision import data

    info = data.prepare(config)
    stream = data.train_stream(config, info).as_numpy_iterator()
    for _ in range(warmup):
        next(stream)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(stream)
    seconds = time.perf_counter() - start
    images = batches * batch["image"].shape[0]
    return {
        "dataset": info.spec.name,
        "train_pp": info.spec.train_pp,
        "image_shape": list(info.image_shape),
        "batch_size": int(batch["image"].shape[0]),
        "batches": batches,
        "seconds": round(seconds, 4),
        "pipeline_img_per_s": round(images / seconds, 1),
        "threads": config.dataset.threads or os.cpu_count(),
        "deterministic": bool(config.dataset.deterministic),
    }


def main() -> None:
    """Prints the pipeline's img/s as one JSON line."""
    # Flags are defined here, not at import, so importing this module next to other
    # absl programs (tests, `jaxvision.benchmark`) never defines `--config` twice.
    config = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
    warmup = flags.DEFINE_integer("warmup", 5, "Batches before timing starts (fills buffers).")
    batches = flags.DEFINE_integer("batches", 50, "Timed batches.")
    jpeg_dir = flags.DEFINE_string("write_jpegs", "", "Write synthetic JPEGs here first.")
    num_jpegs = flags.DEFINE_integer("num_jpegs", 512, "How many JPEGs --write_jpegs writes.")
    flags.mark_flags_as_required(["config"])

    def run(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
        from jaxvision import console

        console.setup()
        if jpeg_dir.value:
            write_jpegs(jpeg_dir.value, num_jpegs.value)
        print(json.dumps(measure(config.value, warmup.value, batches.value)), flush=True)

    app.run(command_line.reports_failures(run), flags_parser=command_line.parse_global_flags)


if __name__ == "__main__":
    main()
