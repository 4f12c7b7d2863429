"""Per-executable XLA options: which kernel library runs which op on the CPU.

Every jitted train step and forward pass of a model is compiled with these options.
Convolutions and matmuls go to XLA's Eigen kernels, which beat YNNPACK's on the conv weight
gradients and the ViT's skinny matmuls; reductions go to YNNPACK, which fuses them with
their elementwise input. The measurements: docs/performance.md, "Why each CPU option".
"""

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import jax

# Compiler option -> value; passed as `jax.jit(..., compiler_options=...)`.
_CPU_OPTIONS = {
    # Only reductions go to YNNPACK; matmuls and convolutions (and their gradients) use
    # Eigen.
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE",
}


def compiler_options() -> dict[str, Any] | None:
    """Compiler options for a jitted train or eval step on this platform (None: defaults)."""
    if jax.default_backend() != "cpu":
        return None
    # A choice made in XLA_FLAGS wins, so users can still compare libraries.
    given = os.environ.get("XLA_FLAGS", "")
    return {k: v for k, v in _CPU_OPTIONS.items() if f"--{k}=" not in given} or None


@contextlib.contextmanager
def overridden(changes: dict[str, str]) -> Iterator[None]:
    """Within the block, `compiler_options()` has `changes` applied (a value of "" drops one).

    For A/B measurements in one process (benchmarks/interleaved_ab.py): the options are read
    when a step is jitted, so build and compile each variant inside its own block.
    """
    global _CPU_OPTIONS
    saved = _CPU_OPTIONS
    merged = {**saved, **changes}
    _CPU_OPTIONS = {k: v for k, v in merged.items() if v != ""}
    try:
        yield
    finally:
        _CPU_OPTIONS = saved
