"""What a deploying user gets: inference speed of the exported model next to the in-process one.

    python -m jaxvision.benchmark --config=benchmarks/peer_configs.py:resnet18_cifar --what=export

Exports the benchmark's model with `jaxvision.export` (StableHLO and SavedModel) into a
temporary directory, reloads each the way a user would (`export.load_stablehlo`: jax.export
deserialize + call with the weights from the export; `export.load_savedmodel`:
tf.saved_model.load + its serving signature) and times it on the same random batch as the
in-process eval forward (`step_factory`'s jitted `infer_fn`). Host numpy images go in, as a
server would pass them; each call runs to completion.
"""

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _seconds(fn: Callable[[np.ndarray], Any], images: np.ndarray, warmup: int, steps: int):
    """Seconds of each timed call `fn(images)`, after `warmup` untimed ones."""
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn(images))
    out = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(fn(images))
        out.append(time.perf_counter() - start)
    return out


def loaded_run(bench) -> Any:
    """A `workdir.LoadedRun` of a `benchmark.Bench`'s model and (random) weights."""
    from jaxvision import data, steps
    from jaxvision import workdir as workdir_lib
    from jaxvision.data import catalog

    config = bench.config
    info = data.DataInfo(
        spec=catalog.resolve(config.dataset),
        builder=None,
        num_classes=bench.num_classes,
        class_names=[],
        image_shape=bench.shape,
        num_train=0,
        num_eval=0,
        source=None,
    )
    variables = steps.variables(bench.state.params, bench.state.batch_stats)
    return workdir_lib.LoadedRun(
        workdir="", config=config, info=info, model=bench.model, variables=variables, step=0,
        ema=False,
    )  # fmt: skip


def measure(bench, warmup: int, steps: int, formats: tuple[str, ...] = ("stablehlo", "savedmodel")):
    """Images per second of the in-process forward and of each export format, one batch."""
    import jax

    from jaxvision import export

    images = np.asarray(jax.device_get(bench.eval_images[0]))
    state = bench.state
    timed = {"in_process": _seconds(lambda x: bench.infer_fn(state, x), images, warmup, steps)}
    run = loaded_run(bench)
    record: dict[str, Any] = {"measurement": "export", "batch": images.shape[0]}
    root = tempfile.mkdtemp(prefix="jaxvision_export_speed_")
    try:
        for fmt in formats:
            out = f"{root}/{fmt}"
            start = time.perf_counter()
            export.export(run, fmt, out)
            loader = export.load_stablehlo if fmt == "stablehlo" else export.load_savedmodel
            fn = loader(out)
            record[f"{fmt}_export_and_load_s"] = round(time.perf_counter() - start, 2)
            timed[fmt] = _seconds(fn, images, warmup, steps)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for name, seconds in timed.items():
        median = statistics.median(seconds)
        record[f"{name}_img_per_s"] = round(images.shape[0] / median, 2)
        record[f"{name}_ms"] = [round(s * 1e3, 2) for s in seconds]
    for fmt in formats:
        ratio = record[f"{fmt}_img_per_s"] / record["in_process_img_per_s"]
        record[f"{fmt}_vs_in_process"] = round(ratio, 3)
    return record
