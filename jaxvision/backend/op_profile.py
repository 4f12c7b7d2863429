"""Where the train step's time goes, by XLA op category (matmul, conv, elementwise, ...).

    python -m jaxvision.benchmark --config=benchmarks/peer_configs.py:vit_ti4_cifar --what=profile
    python -m jaxvision.benchmark --config=benchmarks/peer_configs.py:resnet18_cifar \
        --what=profile_infer     # the eval-mode forward instead of the train step

Runs the benchmark's train step (after warm-up) under `jax.profiler`, matches each
executed XLA CPU thunk to its instruction in the optimized HLO, and sums the thunks'
durations per category over all threads ("thread-ms": with 2 cores up to 2x wall time).
Fusions are classed by what they contain: a dot or convolution first, then reductions,
then pure data movement (copy/transpose), else elementwise. XLA emits the per-thunk
events only with --xla_cpu_enable_xprof_traceme=true, which the benchmark sets for it.

A dot run by Eigen does most of its work outside its own event: a 192x8192x768 weight
gradient's event lasts 1.9 ms, which would be 1300 GFLOP/s. So "matmul" counts only what
the dots' events cover; the rest of their work, and any idle thread time, is in
`unattributed`: the step's wall time times the threads available, minus every event.
"""

import collections
import glob
import os
import re
import tempfile
from collections.abc import Callable

_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%?([\w.-]+) = .*? ([a-z][a-z0-9-]*)\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.-]+) .*\{\s*$")
_LAYOUT_OPS = {"copy", "transpose", "bitcast", "reshape", "broadcast", "slice", "concatenate",
               "dynamic-slice", "dynamic-update-slice", "pad", "parameter", "constant", "tuple",
               "get-tuple-element", "iota"}  # fmt: skip


def parse_hlo(text: str) -> tuple[dict, dict]:
    """{instruction: (opcode, called computations)} and {computation: [opcodes]}."""
    instructions, computations = {}, collections.defaultdict(list)
    current = None
    for line in text.splitlines():
        if m := _COMPUTATION.match(line):
            current = m.group(1)
            continue
        if m := _INSTRUCTION.match(line):
            name, opcode, rest = m.groups()
            called = re.findall(r"(?:calls|to_apply|body|condition)=%?([\w.-]+)", rest)
            instructions[name] = (opcode, called)
            computations[current].append(opcode)
    return instructions, computations


def computation_lines(text: str) -> dict[str, list[str]]:
    """{computation: its instruction lines, stripped} of an HLO module's text."""
    lines, current = collections.defaultdict(list), None
    for line in text.splitlines():
        if m := _COMPUTATION.match(line):
            current = m.group(1)
        elif line.startswith("}"):
            current = None
        elif current is not None:
            lines[current].append(line.strip())
    return lines


def category(name: str, instructions: dict, computations: dict) -> str:
    """The op category of one executed instruction."""
    opcode, called = instructions.get(name, ("unknown", []))
    inner = set()
    stack, seen = list(called), set()
    while stack:
        comp = stack.pop()
        if comp in seen:
            continue
        seen.add(comp)
        inner.update(computations.get(comp, []))
    ops = {opcode} | inner if opcode in ("fusion", "call", "custom-call") else {opcode}
    if "convolution" in ops:
        return "convolution"
    if "dot" in ops:
        return "matmul"
    if ops & {"reduce", "reduce-window", "select-and-scatter"}:
        return "reduction"
    if opcode in ("while", "conditional", "call"):
        return "control"
    if ops <= _LAYOUT_OPS:
        return "copy/layout"
    return "elementwise"


def enable_trace_events() -> None:
    """Asks XLA:CPU for per-op trace events; read when its backend starts, so call before."""
    flags_env = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags_env} --xla_cpu_enable_xprof_traceme=true".strip()


def profile(bench, steps: int) -> dict:
    """Thread-ms per category and the top instructions over `steps` profiled train steps of a
    compiled and warmed-up `benchmark.Bench`."""
    hlo = bench.compiled_train.as_text()
    return _profile(hlo, lambda: bench.train(warmup=0, steps=steps)["step_ms"], steps, "train")


def profile_infer(bench, steps: int) -> dict:
    """The same for the eval-mode forward (`infer_fn`) of a `benchmark.Bench`, warmed up here."""
    import jax

    images = bench.eval_images[0]
    compiled = bench.infer_fn.lower(bench.state, images).compile()
    for _ in range(2):
        jax.block_until_ready(compiled(bench.state, images))

    def timed() -> float:
        import time

        start = time.perf_counter()
        for _ in range(steps):
            jax.block_until_ready(compiled(bench.state, images))
        return (time.perf_counter() - start) / steps * 1e3

    return _profile(compiled.as_text(), timed, steps, "infer")


def _profile(hlo: str, run: Callable[[], float], steps: int, step: str) -> dict:
    """Runs `run()` (which returns its ms per step over `steps` steps) under the profiler and
    sums the executed XLA ops' thread time per category."""
    import jax
    from jax.profiler import ProfileData

    instructions, computations = parse_hlo(hlo)
    trace_dir = tempfile.mkdtemp(prefix="jaxvision_profile_")
    jax.profiler.start_trace(trace_dir)
    step_ms = run()
    jax.profiler.stop_trace()
    path = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[-1]
    per_op: dict = collections.Counter()
    for plane in ProfileData.from_file(path).planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):
                continue
            for event in line.events:
                if event.name in instructions:
                    per_op[event.name] += event.duration_ns / 1e6 / steps
    per_category: dict = collections.Counter()
    for name, ms in per_op.items():
        per_category[category(name, instructions, computations)] += ms
    if not per_op:
        raise RuntimeError(
            "No XLA op events in the trace: set XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true."
        )
    capacity = step_ms * len(os.sched_getaffinity(0))
    per_category["unattributed"] = max(0.0, capacity - sum(per_category.values()))
    total = sum(per_category.values())
    return {
        "measurement": "profile" if step == "train" else f"profile_{step}",
        "step_ms": round(step_ms, 2),
        "thread_ms": {k: round(v, 1) for k, v in per_category.most_common()},
        "share": {k: round(v / total, 3) for k, v in per_category.most_common()},
        "top_instructions": [(n, round(ms, 1)) for n, ms in per_op.most_common(12)],
    }
