"""What XLA charges per compiled kernel, and how many kernels a train step has.

    python benchmarks/kernel_compile_cost.py [--kernels=25,50,100,200]
    python benchmarks/kernel_compile_cost.py --config=benchmarks/peer_configs.py:vit_b16 \
        --set="batch_size=8;model.scan=True"     # then model.scan=False

Without `--config`: compiles programs of N independent `x * 2 + 1` ops on arrays of N
different shapes, so each op is its own kernel and none can be shared, and prints the
compile wall and CPU seconds per kernel. With `--config` (and `--set`'s `;`-separated
`key=value` overrides): traces, lowers and compiles the config's train step as the
benchmark does and prints its fusion instructions, how many of them are distinct kernels
(fusion bodies that differ in more than names and metadata; identical ones are compiled
once) and the compile time. Together they say how much of a step's compile time is the
fixed cost of its kernels. One JSON line per measurement.
"""

import argparse
import json
import os
import re
import time

from interleaved_ab import apply_variant


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process, all threads."""
    times = os.times()
    return times.user + times.system


def _timed(fn) -> tuple[object, float, float]:
    """fn()'s result, wall seconds and CPU seconds."""
    wall, cpu = time.perf_counter(), _cpu_seconds()
    out = fn()
    return out, time.perf_counter() - wall, _cpu_seconds() - cpu


def per_kernel_cost(count: int) -> dict:
    """Compile time of a program of `count` elementwise kernels, none shareable."""
    import jax
    import jax.numpy as jnp

    shapes = [jax.ShapeDtypeStruct((7 + i, 33), jnp.float32) for i in range(count)]
    lowered = jax.jit(lambda *xs: [x * 2.0 + 1.0 for x in xs]).lower(*shapes)
    _, wall, cpu = _timed(lowered.compile)
    return {
        "measurement": "kernel_compile_cost",
        "kernels": count,
        "compile_s": round(wall, 3),
        "compile_cpu_s": round(cpu, 3),
        "ms_per_kernel": round(1e3 * wall / count, 2),
        "cpu_ms_per_kernel": round(1e3 * cpu / count, 2),
    }


def distinct_kernels(hlo: str) -> tuple[int, int]:
    """(fusion instructions, distinct fusion bodies) of an optimised HLO module's text."""
    from jaxvision.backend import op_profile

    instructions, _ = op_profile.parse_hlo(hlo)
    bodies = op_profile.computation_lines(hlo)
    fused = [called[0] for opcode, called in instructions.values() if opcode == "fusion" and called]
    # Names and metadata differ between copies of the same kernel; shapes do not.
    distinct = {
        "\n".join(
            re.sub(r", metadata=\{[^}]*\}", "", re.sub(r"%[\w.\-]+", "%v", line))
            for line in bodies[c]
        )
        for c in fused
    }
    return len(fused), len(distinct)


def step_kernels(config) -> dict:
    """Trace, lower and compile times of the config's train step and its kernel counts."""
    from jaxvision import benchmark

    bench = benchmark.Bench(config, materialize=False)
    lowered, trace_wall, _ = _timed(
        lambda: bench.train_fn.lower(bench.abstract_state, bench.abstract_batch)
    )
    compiled, wall, cpu = _timed(lowered.compile)
    fusions, distinct = distinct_kernels(compiled.as_text())
    return {
        "measurement": "step_kernels",
        "model": config.model.name,
        "scan": bool(config.model.get("scan", False)),
        "trace_s": round(trace_wall, 3),
        "compile_s": round(wall, 3),
        "compile_cpu_s": round(cpu, 3),
        "fusions": fusions,
        "distinct_kernels": distinct,
    }


def main() -> None:
    """CLI: per-kernel cost, or a config's train step with `--config`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kernels", default="25,50,100,200", help="Kernel counts to time.")
    parser.add_argument("--config", default="", help="Config file[:arg], as for training.")
    parser.add_argument("--set", default="", help="Config overrides, key=value;key=value.")
    args = parser.parse_args()
    from jaxvision import config as config_lib
    from jaxvision.backend import compile_cache

    compile_cache.disable()  # compile time is what is measured
    if args.config:
        config = config_lib.load(args.config)
        config.unlock()
        apply_variant(config, args.set)
        results = [step_kernels(config)]
    else:
        results = [per_kernel_cost(int(n)) for n in args.kernels.split(",")]
    for result in results:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
