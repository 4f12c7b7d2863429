"""The ViT-Ti/4 step's kernels alone, jaxvision's XLA options against PyTorch, in one run.

    python benchmarks/kernels_vs_torch.py [--batch=128] [--repeats=20]

Times, on the same random fp32 inputs and 2 threads on both sides, (1) each matmul shape
of a ViT-Ti/4 train step at batch 128 (8192 tokens; weight gradients contract the token
axis) and (2) the attention core softmax(q k^T / sqrt(d)) v forward and forward+backward
over [batch, 64 tokens, 3 heads, 64]: `jax.nn.dot_product_attention` as the model calls it
vs `torch.nn.functional.scaled_dot_product_attention`. Prints one JSON line per kernel:
medians in ms, GFLOP/s for matmuls, and the time ratio (>1: jaxvision faster). Needs torch
(`pip install -e ".[torch]"`).
"""

import argparse
import json
import statistics
from collections.abc import Callable

import numpy as np

TOKENS, WIDTH, HEADS, MLP = 64, 192, 3, 768


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `fn` over `repeats` calls after two warm-up calls."""
    from jaxvision.benchmark import time_calls

    return statistics.median(time_calls(lambda _: fn(), warmup=2, steps=repeats)) * 1e3


def matmul_shapes(batch: int) -> list[tuple[str, int, int, int, bool]]:
    """(name, M, K, N, lhs contracts its first axis) for each matmul of one block."""
    t = batch * TOKENS
    return [
        ("q/k/v or out projection", t, WIDTH, WIDTH, False),
        ("MLP in", t, WIDTH, MLP, False),
        ("MLP out / input gradient of MLP in", t, MLP, WIDTH, False),
        ("weight gradient, MLP in", WIDTH, t, MLP, True),
        ("weight gradient, MLP out", MLP, t, WIDTH, True),
        ("weight gradient, projection", WIDTH, t, WIDTH, True),
    ]


def time_matmul(lhs: np.ndarray, rhs: np.ndarray, transposed: bool, options, repeats: int):
    """(jax ms, torch ms) of lhs @ rhs, or lhs^T @ rhs if `transposed`."""
    import jax
    import torch

    dims = (((0,), (0,)), ((), ())) if transposed else (((1,), (0,)), ((), ()))
    dot = jax.jit(lambda a, b: jax.lax.dot_general(a, b, dims), compiler_options=options)
    ja, jb = jax.device_put(lhs), jax.device_put(rhs)
    ta, tb = torch.from_numpy(lhs), torch.from_numpy(rhs)
    ta = ta.T if transposed else ta
    return (
        median_ms(lambda: dot(ja, jb).block_until_ready(), repeats),
        median_ms(lambda: ta @ tb, repeats),
    )


def main() -> None:
    """Runs every kernel in both frameworks and prints the JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    import jax
    import torch
    import torch.nn.functional as F

    from jaxvision.backend import xla_options

    torch.set_num_threads(2)
    options = xla_options.compiler_options()
    rng = np.random.default_rng(0)

    for name, m, k, n, transposed in matmul_shapes(args.batch):
        lhs = rng.standard_normal((k, m) if transposed else (m, k), dtype=np.float32)
        rhs = rng.standard_normal((k, n), dtype=np.float32)
        jax_ms, torch_ms = time_matmul(lhs, rhs, transposed, options, args.repeats)
        gflop = 2 * m * k * n / 1e9
        print(json.dumps({
            "kernel": f"matmul {m}x{k}x{n}", "what": name,
            "jax_ms": round(jax_ms, 2), "torch_ms": round(torch_ms, 2),
            "jax_gflops": round(gflop / jax_ms * 1e3, 1),
            "torch_gflops": round(gflop / torch_ms * 1e3, 1),
            "ratio": round(torch_ms / jax_ms, 2),
        }))  # fmt: skip

    shape = (args.batch, TOKENS, HEADS, WIDTH // HEADS)
    q, k, v = (rng.standard_normal(shape, dtype=np.float32) for _ in range(3))
    jq, jk, jv = (jax.device_put(x) for x in (q, k, v))
    forward = jax.jit(jax.nn.dot_product_attention, compiler_options=options)
    backward = jax.jit(
        jax.grad(lambda *x: (jax.nn.dot_product_attention(*x) ** 2).sum(), argnums=(0, 1, 2)),
        compiler_options=options,
    )
    # PyTorch wants [batch, heads, tokens, dim].
    tq, tk, tv = (torch.from_numpy(x).permute(0, 2, 1, 3).contiguous() for x in (q, k, v))
    for x in (tq, tk, tv):
        x.requires_grad_()

    def torch_forward():
        with torch.no_grad():
            return F.scaled_dot_product_attention(tq, tk, tv)

    def torch_backward():
        (F.scaled_dot_product_attention(tq, tk, tv) ** 2).sum().backward()

    for what, jax_fn, torch_fn in (
        ("forward", lambda: forward(jq, jk, jv).block_until_ready(), torch_forward),
        ("forward+backward", lambda: jax.block_until_ready(backward(jq, jk, jv)), torch_backward),
    ):
        jax_ms, torch_ms = median_ms(jax_fn, args.repeats), median_ms(torch_fn, args.repeats)
        print(json.dumps({
            "kernel": f"attention {list(shape)}", "what": what,
            "jax_ms": round(jax_ms, 2), "torch_ms": round(torch_ms, 2),
            "ratio": round(torch_ms / jax_ms, 2),
        }))  # fmt: skip


if __name__ == "__main__":
    main()
