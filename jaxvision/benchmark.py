"""How fast is a config on this machine: python -m jaxvision.benchmark --config=CONFIG.

    python -m jaxvision.benchmark --config=configs/resnet18_cifar10.py --config.batch_size=128
    python -m jaxvision.benchmark --config=benchmarks/peer_configs.py:vit_ti4_cifar

prints one JSON line per measurement, then a `summary` line with every headline field:
- `matmul_peak`: jitted square matmuls in float32 and bfloat16 (GFLOP/s; `matmul_peak`:
  best of several trials and sizes, cached per machine in --peak_cache, --peak_refresh
  measures again), the roofline `mfu` is measured against. MFU is never above 1: a step
  faster than the peak re-measures it once, and if it still wins, `mfu` is null,
  `peak_suspect` true and a warning names both figures;
- `compile`: seconds to trace+lower and to compile the train step, and the step's
  FLOPs per image from XLA's cost analysis;
- `train`: the train step (the same jitted `steps.train_step`, shardings and buffer
  donation as `jaxvision.main`) on random images: `step_ms`, `train_img_per_s`, `mfu`;
- `infer`: the eval forward pass, `infer_img_per_s`;
- `memory`: XLA's buffer sizes for the train step and this process's peak RSS;
- `profile` (with --what=...,profile): the train step's thread time by op category;
  `profile_infer`: the same for the eval-mode forward;
- `pipeline` (with --what=...,pipeline): the config's real input pipeline alone;
- `export` (with --what=...,export): inference img/s of the StableHLO and SavedModel
  exports, reloaded as a user would, next to the in-process forward (`export_speed`).

Every line carries the CPU model and ISA (`cpu`, `isa`: amx, avx512f, avx2) and the core
count. Every timed figure is the median over `--steps` timed runs after `--warmup` untimed ones,
with min and max as the spread. Inputs are random normal images and random labels, a
different batch each step: constant inputs hit fast paths real data never takes.
"""

import json
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from absl import app, flags

from jaxvision import command_line, config_overrides, matmul_peak

_CONFIG = config_overrides.define_config_flag()
_WHAT = flags.DEFINE_list(
    "what",
    "peak,train,infer",
    "Measurements: peak, compile, train, infer, profile, profile_infer, pipeline, export.",
)
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps; medians are over these.")
_PEAK_SIZE = flags.DEFINE_integer("peak_size", 2048, "Largest side of the square peak matmuls.")
_PEAK_CACHE = flags.DEFINE_string(
    "peak_cache",
    matmul_peak.DEFAULT_CACHE,
    "JSON file keeping this machine's matmul peak between runs; empty: measure in each process.",
)
_PEAK_REFRESH = flags.DEFINE_bool(
    "peak_refresh", False, "Measure the matmul peak again and replace the cached figure."
)
_LABEL = flags.DEFINE_string("label", "", "Free text copied into every line (e.g. a variant).")
flags.mark_flags_as_required(["config"])

_SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16"}
MEASUREMENTS = (
    "peak", "compile", "train", "infer", "profile", "profile_infer", "pipeline", "export"
)  # fmt: skip
# Summary fields of --what=export, there only when it was asked for.
EXPORT_FIELDS = ("in_process_img_per_s", "stablehlo_img_per_s", "savedmodel_img_per_s")
# Fields the summary line always has (None when the measurement was not asked for).
SUMMARY_FIELDS = (
    "train_img_per_s",
    "infer_img_per_s",
    "step_ms",
    "batch_branches",
    "infer_ms",
    "gflops_per_img",
    "mfu",
    "peak_suspect",
    "peak_gflops_fp32",
    "peak_gflops_bf16",
    "trace_s",
    "compile_s",
    "peak_rss_gb",
    "pipeline_img_per_s",
)


def spread(seconds: list[float]) -> dict[str, float]:
    """Median, mean, min and max of a list of timings, in milliseconds."""
    ms = [s * 1e3 for s in seconds]
    return {
        "median_ms": round(statistics.median(ms), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "min_ms": round(min(ms), 3),
        "max_ms": round(max(ms), 3),
        "n": len(ms),
    }


def time_calls(fn: Callable[[int], Any], warmup: int, steps: int) -> list[float]:
    """Seconds of each of `steps` calls `fn(i)` (after `warmup` calls), each run to completion."""
    import jax

    for i in range(warmup):
        jax.block_until_ready(fn(i))
    out = []
    for i in range(warmup, warmup + steps):
        start = time.perf_counter()
        jax.block_until_ready(fn(i))
        out.append(time.perf_counter() - start)
    return out


def model_inputs(config) -> tuple[tuple[int, int, int], int]:
    """The config's input shape and class count, without reading or preparing the dataset."""
    from jaxvision.data import catalog

    spec = catalog.resolve(config.dataset)
    preset = catalog.PRESETS.get(config.dataset.name)
    channels = preset.channels if preset else 3
    num_classes = spec.num_classes or 10  # image folders: the count only changes the head
    return (spec.image_size, spec.image_size, channels), num_classes


def _random_batches(shape, num_classes: int, batch_size: int, sharding, count: int = 2) -> list:
    """`count` different batches of random normal images and random labels, on the devices."""
    import jax
    import jax.numpy as jnp

    batches = []
    for key in jax.random.split(jax.random.PRNGKey(1), count):
        ki, kl = jax.random.split(key)
        batch = {
            "image": jax.random.normal(ki, (batch_size, *shape), jnp.float32),
            "label": jax.random.randint(kl, (batch_size,), 0, num_classes, jnp.int32),
        }
        batches.append(jax.device_put(batch, sharding))
    return batches


class Bench:
    """The train and eval steps of one config, from `step_factory.build` as training uses."""

    def __init__(self, config, materialize: bool = True):
        import jax
        import jax.numpy as jnp

        from jaxvision import step_factory

        self.config = config
        self.shape, num_classes = model_inputs(config)
        self.num_classes = num_classes
        # The schedule's values do not change the step's cost; a long nominal run keeps any
        # warmup (in steps or epochs) valid without knowing the dataset's size.
        built = step_factory.build(
            config,
            num_classes=num_classes,
            image_shape=self.shape,
            total_steps=1_000_000,
            steps_per_epoch=1_000.0,
        )
        self.model = built.model
        # Whether the backend swapped in its own algorithms (see _model_flops).
        self.tuned = built.model != step_factory.create_model(config, num_classes)
        self.abstract_state = built.abstract_state
        self.branches = built.train_branches
        self.train_fn = built.train_fn
        self.infer_fn = built.infer_fn
        self.compiled_train = None
        batch_sharding = built.batch_sharding
        # Shapes and shardings of a batch: compiling needs no values.
        self.abstract_batch = {
            "image": jax.ShapeDtypeStruct(
                (config.batch_size, *self.shape), jnp.float32, sharding=batch_sharding
            ),
            "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32, sharding=batch_sharding),
        }
        if not materialize:  # only for compiling against abstract shapes
            return
        self.state = built.init_fn()
        self.batches = _random_batches(self.shape, num_classes, config.batch_size, batch_sharding)
        eval_size = config.eval_batch_size or config.batch_size
        self.eval_images = [
            b["image"] for b in _random_batches(self.shape, num_classes, eval_size, batch_sharding)
        ]

    def compile(self) -> dict:
        """Traces, lowers and compiles the train step; FLOPs per image and XLA's memory plan."""
        from jaxvision.models.summary import xla_flops

        start = time.perf_counter()
        lowered = self.train_fn.lower(self.abstract_state, self.abstract_batch)
        traced = time.perf_counter()
        self.compiled_train = lowered.compile()
        done = time.perf_counter()
        flops = self._model_flops() or xla_flops(lowered)
        return {
            "measurement": "compile",
            "trace_s": round(traced - start, 3),
            "compile_s": round(done - traced, 3),
            "gflops_per_step": round(flops / 1e9, 3),
            "gflops_per_img": round(flops / 1e9 / self.config.batch_size, 4),
        }

    def _model_flops(self) -> float:
        """FLOPs of the step as written: unscanned, without backend tuning (0 if the same).

        XLA's cost analysis counts a while loop's body once, not once per iteration, so a
        scanned model would report 1/depth of its matmul FLOPs; and it counts the products
        of the backend's faster algorithms (fewer), where MFU counts the model's. Lowering
        (no compile) the plain twin as on a TPU gives the model's count.
        """
        from jaxvision import backend
        from jaxvision.models.summary import xla_flops

        scan = self.config.model.get("scan", False)
        if not (scan or self.tuned):
            return 0.0
        config = self.config.copy_and_resolve_references()
        config.unlock()
        if scan:
            config.model.scan = False
        with backend.forced("tpu"):
            twin = Bench(config, materialize=False)
            return xla_flops(twin.train_fn.lower(twin.abstract_state, self.abstract_batch))

    def memory(self) -> dict:
        """XLA's buffer plan of the compiled train step and the process's peak resident memory."""
        import jax

        record: dict[str, Any] = {"measurement": "memory"}
        analysis = self.compiled_train.memory_analysis() if self.compiled_train else None
        for field in ("argument", "output", "temp", "alias", "generated_code"):
            value = getattr(analysis, f"{field}_size_in_bytes", None)
            record[f"{field}_gb"] = None if value is None else round(value / 1e9, 4)
        stats = jax.local_devices()[0].memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        record["device_peak_gb"] = None if peak is None else round(peak / 1e9, 4)
        # ru_maxrss is in KiB on Linux.
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        record["peak_rss_gb"] = round(rss / 1e9, 3)
        return record

    def train(self, warmup: int, steps: int) -> dict:
        """Times the train step; the state is donated and carried from step to step."""
        if self.compiled_train is None:
            self.compile()

        def step(i: int):
            self.state, metrics = self.compiled_train(
                self.state, self.batches[i % len(self.batches)]
            )
            return metrics

        seconds = time_calls(step, warmup, steps)
        median = statistics.median(seconds)
        return {
            "measurement": "train",
            "step_ms": round(median * 1e3, 3),
            "train_img_per_s": round(self.config.batch_size / median, 2),
            "batch_branches": self.branches,
            **spread(seconds),
        }

    def infer(self, warmup: int, steps: int) -> dict:
        """Times the eval-mode forward pass on random images."""
        images = self.eval_images
        seconds = time_calls(
            lambda i: self.infer_fn(self.state, images[i % len(images)]), warmup, steps
        )
        median = statistics.median(seconds)
        return {
            "measurement": "infer",
            "infer_ms": round(median * 1e3, 3),
            "infer_img_per_s": round(images[0].shape[0] / median, 2),
            **spread(seconds),
        }


def pipeline(config, warmup: int, batches: int) -> dict:
    """Images per second of the config's training input stream alone (no device transfer).

    The same measurement as `python -m jaxvision.data.benchmark`, which cannot be imported
    here because both command lines define a --config flag.
    """
    from jaxvision import data

    info = data.prepare(config)
    stream = data.train_stream(config, info).as_numpy_iterator()
    for _ in range(warmup):
        next(stream)
    start = time.perf_counter()
    for _ in range(batches):
        images = next(stream)["image"]
    seconds = time.perf_counter() - start
    return {
        "measurement": "pipeline",
        "dataset": info.spec.name,
        "train_pp": info.spec.train_pp,
        "batches": batches,
        "pipeline_img_per_s": round(batches * images.shape[0] / seconds, 1),
    }


def _context(config) -> dict:
    """What every line carries: model, batch, precision, devices, CPU and ISA, XLA flags."""
    import jax

    from jaxvision import backend

    return {
        "model": config.model.name,
        "batch_size": config.batch_size,
        "compute_dtype": config.compute_dtype,
        "devices": jax.device_count(),
        "platform": jax.devices()[0].platform,
        "jax": jax.__version__,
        **matmul_peak.machine(),
        **backend.environment(),
    }


def _peak_record(dtype: str, peak: dict) -> dict:
    return {"measurement": "matmul_peak", **peak, "dtype": dtype}


def _measure(config, what: list[str], warmup: int, steps: int, peak: dict) -> Iterator[dict]:
    """Each requested measurement's record, as soon as it is taken."""
    if "peak" in what:
        for dtype in ("float32", "bfloat16"):
            yield _peak_record(dtype, matmul_peak.peak(dtype, **peak))
    runs = {"train", "infer", "profile", "profile_infer", "export"} & set(what)
    if runs or "compile" in what:
        # Compiling alone needs only shapes, so a model too large to initialise here still
        # reports its compile time.
        bench = Bench(config, materialize=bool(runs))
        if {"compile", "train", "profile"} & set(what):
            yield bench.compile()
        if "train" in what:
            yield bench.train(warmup, steps)
        if "infer" in what:
            yield bench.infer(warmup, steps)
        if "profile" in what:
            from jaxvision.backend import op_profile

            if "train" not in what:
                bench.train(warmup, 1)
            yield op_profile.profile(bench, steps=max(1, min(steps, 2)))
        if "profile_infer" in what:
            from jaxvision.backend import op_profile

            yield op_profile.profile_infer(bench, steps=max(1, min(steps, 2)))
        if "export" in what:
            from jaxvision import export_speed

            yield export_speed.measure(bench, warmup, steps)
        if {"compile", "train"} & set(what):
            yield bench.memory()
    if "pipeline" in what:
        yield pipeline(config, warmup=max(warmup, 1), batches=max(steps, 5))


def utilization(achieved: float, peak: float, remeasure: Callable[[], float]) -> dict[str, Any]:
    """MFU of a step running at `achieved` GFLOP/s against a `peak` that must hold.

    A step cannot beat the machine's matmul peak, so a step faster than `peak` means the
    peak was measured low: it is measured once more (`remeasure`), and if the step still
    beats it, MFU is not reported (None) and `peak_suspect` is set, with a warning.
    """
    record: dict[str, Any] = {"peak_gflops": peak, "peak_suspect": False, "peak_warning": None}
    if achieved > peak:
        record["peak_gflops"] = peak = max(peak, remeasure())
    if achieved > peak:
        record["peak_suspect"] = True
        record["peak_warning"] = (
            f"The step ran at {achieved:.1f} GFLOP/s, above the measured matmul peak of "
            f"{peak:.1f} GFLOP/s even after measuring it again: the peak (or the FLOP count) "
            "is wrong, so no MFU is reported. Run again with --peak_refresh on a quieter "
            "machine."
        )
        record["mfu"] = None
    else:
        record["mfu"] = round(achieved / peak, 4)
    return record


def run(
    config,
    what: list[str],
    *,
    warmup: int = 2,
    steps: int = 5,
    peak_size: int = 2048,
    peak_cache: str | None = None,
    peak_refresh: bool = False,
) -> Iterator[dict]:
    """Yields the requested measurements of `config` in order, then the summary record.

    The matmul peak is kept for this process and, with `peak_cache` (a JSON file), for the
    machine; `peak_refresh` measures it again.
    """
    unknown = sorted(set(what) - set(MEASUREMENTS))
    if unknown:
        raise ValueError(f"Unknown --what {unknown}; choose from {', '.join(MEASUREMENTS)}.")
    if steps < 1 or warmup < 0:
        raise ValueError(f"Need --steps >= 1 and --warmup >= 0, got {steps} and {warmup}.")
    from jaxvision import console, parallel

    parallel.set_cpu_devices(config.parallel.cpu_devices)
    context = _context(config)
    summary: dict[str, Any] = dict.fromkeys(SUMMARY_FIELDS)
    peak_args = dict(size=peak_size, cache=peak_cache, refresh=peak_refresh)
    for rec in _measure(config, what, warmup, steps, peak_args):
        if rec["measurement"] == "matmul_peak":
            summary[f"peak_gflops_{_SHORT_DTYPE[rec['dtype']]}"] = rec["gflops"]
        summary.update({k: v for k, v in rec.items() if k in SUMMARY_FIELDS + EXPORT_FIELDS})
        yield {**rec, **context}
    dtype = "bfloat16" if config.compute_dtype == "bfloat16" else "float32"
    peak = summary[f"peak_gflops_{_SHORT_DTYPE[dtype]}"]
    if summary["train_img_per_s"] and summary["gflops_per_img"] and peak:
        # Achieved FLOP/s (the model's count for the whole step) over the matmul peak.
        achieved = summary["gflops_per_img"] * summary["train_img_per_s"]
        again = matmul_peak.remeasure  # kept for the machine only if higher than before
        used = utilization(
            achieved, peak, lambda: again(dtype, peak_size, cache=peak_cache)["gflops"]
        )
        summary["mfu"], summary["peak_suspect"] = used["mfu"], used["peak_suspect"]
        summary[f"peak_gflops_{_SHORT_DTYPE[dtype]}"] = used["peak_gflops"]
        summary["achieved_gflops"] = round(achieved, 2)
        if used["peak_warning"]:
            summary["peak_warning"] = used["peak_warning"]
            console.log.warning(used["peak_warning"])
    yield {"measurement": "summary", **summary, **context}


def main(argv: list[str]) -> None:
    """Prints one JSON line per measurement, then the summary line."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from jaxvision import backend, console

    # Compile times are the measurement: never loaded from a cache set in the environment.
    backend.configure_compile_cache("")
    if {"profile", "profile_infer"} & set(_WHAT.value):
        from jaxvision.backend import op_profile

        op_profile.enable_trace_events()  # before JAX's CPU backend starts
    console.setup()
    records = run(
        _CONFIG.value,
        _WHAT.value,
        warmup=_WARMUP.value,
        steps=_STEPS.value,
        peak_size=_PEAK_SIZE.value,
        peak_cache=_PEAK_CACHE.value,
        peak_refresh=_PEAK_REFRESH.value,
    )
    for rec in records:
        if _LABEL.value:
            rec["label"] = _LABEL.value
        print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    from jaxvision import backend

    backend.prepare_process()
    app.run(command_line.reports_failures(main), flags_parser=command_line.parse_global_flags)
