"""Per-executable XLA options: which kernel library runs which op on the CPU.

Every jitted train step and forward pass of a model is compiled with these options.
XLA:CPU sends matmuls and convolutions to YNNPACK by default. For convolutions that is
the wrong choice: the weight gradient of a 3x3 conv (a correlation of
the activations with the output gradient over the whole image) runs about 10x slower in
YNNPACK than in XLA's Eigen convolution on this project's reference machine (762 vs 80 ms
for a 128x32x32x64 layer, see docs/performance.md), and the ResNet-18 forward pass runs
1.27x faster with Eigen's convolutions (121.6 vs 95.5 img/s, medians of 8 interleaved
batches of 128, idle machine, 2026-11-24).

Matmuls go to Eigen as well. Its matmuls beat YNNPACK's on the ViT's skinny shapes
(8192 tokens by 192-768 features) inside a whole step: the ViT-Ti/4 train step ran 1.12x
faster (39.0 vs 34.7 img/s, medians of 16 interleaved steps) and its forward pass 1.08x
(160.2 vs 148.4 img/s), benchmarks/peer_configs.py, idle machine, 2026-11-24.

Reductions go to YNNPACK too. Without a library for them XLA:CPU splits every reduction
over more than 32 elements into a reduce-window plus a reduce that run as separate,
unfused ops, so each LayerNorm statistic, softmax sum and bias gradient first writes its
elementwise input to memory. With YNNPACK they are fused with that input: the train step
ran 1.10x faster for ViT-Ti/4 (41.1 vs 37.3 img/s, medians of 14 interleaved steps) and
1.29x for ResNet-18 (37.7 vs 29.3 img/s, 6 steps), benchmarks/peer_configs.py, 2026-11-24.
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
