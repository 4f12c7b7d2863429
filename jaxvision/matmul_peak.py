"""The machine's matmul peak (GFLOP/s), measured so that it holds: the roofline MFU divides by.

One timing of one matmul size can come out low on a busy machine, and an MFU over 100%
follows. So the peak is the best of several trials over a few sizes, reported with its
spread, and kept per process and in a small JSON file per machine (CPU model, ISA, core
count, jax version, device kind): the best figure seen there, since no timing can beat the
hardware. `benchmark` re-measures it once when a step seems to run faster than it.
"""

import json
import os
import platform
import statistics
import time
from typing import Any

DEFAULT_CACHE = os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "jaxvision", "matmul_peak.json"
)
# ISA extensions that change matmul throughput, best first (Linux /proc/cpuinfo flag names).
_ISA_FLAGS = (("amx_tile", "amx"), ("avx512f", "avx512f"), ("avx2", "avx2"), ("avx", "avx"))

_process_cache: dict[str, dict] = {}


def _cpuinfo() -> tuple[str, set[str]]:
    """The CPU model name and flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return "", set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


def isa_of(flags: set[str]) -> str:
    """The best matmul ISA among `flags`: "amx", "avx512f", "avx2", "avx" or "unknown"."""
    return next((name for flag, name in _ISA_FLAGS if flag in flags), "unknown")


def machine() -> dict[str, Any]:
    """What every benchmark line carries about the CPU: model, ISA and usable cores."""
    model, flags = _cpuinfo()
    return {
        "cpu": model or platform.processor() or "unknown",
        "isa": isa_of(flags) if flags else "unknown",
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
    }


def cache_key(dtype: str, sizes: tuple[int, ...]) -> str:
    """The cache entry's name: the machine, the jax version, the device kind and the test."""
    import jax

    m = machine()
    device = jax.devices()[0].device_kind
    sides = "x".join(map(str, sizes))
    return (
        f"{m['cpu']}|{m['isa']}|{m['cores']} cores|jax {jax.__version__}|{device}|{dtype}|{sides}"
    )


def sizes_up_to(size: int) -> tuple[int, ...]:
    """The square sizes timed for a peak of largest side `size`: size/2, 3/4 size and size."""
    return tuple(sorted({max(1, size // 2), max(1, 3 * size // 4), size}))


def measure(dtype: str, sizes: tuple[int, ...], trials: int = 3, calls: int = 3) -> dict:
    """Best GFLOP/s of a jitted square matmul in `dtype` over `sizes` x `trials` timings.

    Each trial is the fastest of `calls` calls; `gflops` is the best trial of the best size,
    and `trials_gflops` that size's trials (their spread says how noisy the machine was).
    """
    import jax
    import jax.numpy as jnp

    matmul = jax.jit(jnp.matmul)
    per_size = {}
    for size in sizes:
        ka, kb = jax.random.split(jax.random.PRNGKey(size))
        a = jax.random.normal(ka, (size, size), jnp.float32).astype(dtype)
        b = jax.random.normal(kb, (size, size), jnp.float32).astype(dtype)
        jax.block_until_ready(matmul(a, b))  # compile and touch the buffers
        flops = 2.0 * size**3
        best = []
        for _ in range(trials):
            seconds = []
            for _ in range(calls):
                start = time.perf_counter()
                jax.block_until_ready(matmul(a, b))
                seconds.append(time.perf_counter() - start)
            best.append(flops / min(seconds) / 1e9)
        per_size[size] = best
    size = max(per_size, key=lambda s: max(per_size[s]))
    found = per_size[size]
    return {
        "dtype": dtype,
        "gflops": round(max(found), 2),
        "gflops_median": round(statistics.median(found), 2),
        "gflops_min": round(min(found), 2),
        "best_size": size,
        "sizes": list(sizes),
        "trials": trials,
        "trials_gflops": [round(g, 2) for g in found],
    }


def _read(path: str) -> dict:
    try:
        with open(os.path.expanduser(path)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}  # a missing or damaged cache only costs a measurement
    return data if isinstance(data, dict) else {}


def _write(path: str, key: str, record: dict) -> None:
    path = os.path.expanduser(path)
    data = _read(path)
    data[key] = record
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)  # another process reads the old file or the new, never half
    except OSError:
        pass  # a read-only home: the peak is still kept for this process


def peak(
    dtype: str, size: int = 2048, *, cache: str | None = DEFAULT_CACHE, refresh: bool = False
) -> dict:
    """The matmul peak record of `dtype` (largest side `size`), from a cache when there is one.

    `cache` None or "" keeps it for this process only; `refresh` measures again and keeps the
    new figure whatever it is. `source` says where the figure came from: "measured",
    "process" or "file".
    """
    key = cache_key(dtype, sizes_up_to(size))
    if not refresh:
        if key in _process_cache:
            return {**_process_cache[key], "source": "process"}
        if cache and (stored := _read(cache).get(key)) and stored.get("gflops"):
            _process_cache[key] = stored
            return {**stored, "source": "file"}
    return _measure_and_keep(dtype, size, cache, replace=refresh)


def remeasure(dtype: str, size: int = 2048, *, cache: str | None = DEFAULT_CACHE) -> dict:
    """Measures the peak again; the record kept (and returned) is the higher of old and new."""
    return _measure_and_keep(dtype, size, cache, replace=False)


def _measure_and_keep(dtype: str, size: int, cache: str | None, *, replace: bool) -> dict:
    sizes = sizes_up_to(size)
    key = cache_key(dtype, sizes)
    record = measure(dtype, sizes)
    old = _process_cache.get(key) or (_read(cache).get(key) if cache else None) or {}
    if not replace and old.get("gflops", 0) > record["gflops"]:
        record = old
    _process_cache[key] = record
    if cache:
        _write(cache, key, record)
    return {**record, "source": "measured"}
