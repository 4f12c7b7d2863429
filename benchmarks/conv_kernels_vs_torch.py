"""A ResNet's convolutions alone, XLA:CPU against PyTorch's oneDNN, one shape at a time.

    python benchmarks/conv_kernels_vs_torch.py [--config=benchmarks/peer_configs.py:resnet18_cifar]
        [--batch=128] [--repeats=10] [--backward]

Traces the config's eval-mode forward once to list its convolutions (input, kernel, stride,
padding; how many times each shape occurs), then times each distinct one on the same random
fp32 inputs with 2 threads on both sides: jaxvision's convolution as the model runs it
(`backend/convolution.py` picks Winograd, a 1x1 matmul or `lax.conv_general_dilated`, jitted
with the backend's XLA options) against `torch.nn.functional.conv2d` in NCHW and in channels-last
memory, under `torch.no_grad()` (the oneDNN kernels torch.compile also calls for
convolutions). With `--backward`, also the input and kernel gradients (a `jax.vjp` against
`torch.autograd.grad`). One JSON line per shape (medians in ms, GFLOP/s, the count, the
ratio torch/jax: > 1 means jaxvision is faster), then a total line weighting each shape by
its count: how much of a whole forward the kernels alone explain. The process re-executes
with glibc's hugetlb tunable as `jaxvision.benchmark` does (`GLIBC_TUNABLES=
glibc.malloc.hugetlb=0` to compare without); it applies to both frameworks. Needs torch
(`pip install -e ".[torch]"`).
"""

import argparse
import collections
import json
import os
import statistics
import sys
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `fn` over `repeats` calls after two warm-up calls."""
    from jaxvision.benchmark import time_calls

    return statistics.median(time_calls(lambda _: fn(), warmup=2, steps=repeats)) * 1e3


def forward_convolutions(config_path: str, batch: int) -> list[tuple[dict, int]]:
    """Each distinct convolution of the config's eval forward at `batch`, with its count."""
    import jax
    import jax.numpy as jnp

    from jaxvision import benchmark, step_factory
    from jaxvision import config as config_lib

    config = config_lib.load(config_path)
    image_shape, num_classes = benchmark.model_inputs(config)  # as the benchmark builds it
    model = step_factory.create_model(config, num_classes)
    images = jnp.zeros((batch, *image_shape), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images[:1], train=False))
    closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, images)
    found: collections.Counter = collections.Counter()

    def walk(jaxpr) -> None:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                lhs, rhs = (v.aval.shape for v in eqn.invars)
                p = eqn.params
                key = (
                    tuple(lhs),
                    tuple(rhs),
                    tuple(p["window_strides"]),
                    tuple(map(tuple, p["padding"])),
                )
                found[key] += 1
            for value in eqn.params.values():
                for sub in value if isinstance(value, tuple) else (value,):
                    if hasattr(sub, "eqns"):
                        walk(sub)
                    elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                        walk(sub.jaxpr)

    walk(closed.jaxpr)
    return [
        ({"input": lhs, "kernel": rhs, "strides": s, "padding": pad}, n)
        for (lhs, rhs, s, pad), n in found.items()
    ]


def conv_flops(conv: dict) -> float:
    """Multiply-adds x 2 of one forward convolution (NHWC input, HWIO kernel)."""
    n, h, w, _ = conv["input"]
    kh, kw, c, k = conv["kernel"]
    sh, sw = conv["strides"]
    (pt, pb), (pl, pr) = conv["padding"]
    oh, ow = (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1
    return 2.0 * n * oh * ow * kh * kw * c * k


def _inputs(conv: dict) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(conv["input"], dtype=np.float32)
    return x, rng.standard_normal(conv["kernel"], dtype=np.float32) * 0.05


def time_jax(conv: dict, repeats: int, backward: bool) -> dict:
    """Milliseconds of one convolution as jaxvision's model runs it (and its gradients)."""
    import jax
    from jax import lax

    from jaxvision.backend import convolution, xla_options

    x, w = _inputs(conv)
    dims = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))

    def conv_fn(a, b):
        return convolution.conv_general_dilated(
            a, b, conv["strides"], conv["padding"], dimension_numbers=dims
        )

    options = xla_options.compiler_options()
    forward = jax.jit(conv_fn, compiler_options=options)
    jx, jw = jax.device_put(x), jax.device_put(w)
    row = {"jax_ms": median_ms(lambda: forward(jx, jw).block_until_ready(), repeats)}
    if backward:
        cotangent = forward(jx, jw)
        grads = jax.jit(lambda a, b, g: jax.vjp(conv_fn, a, b)[1](g), compiler_options=options)
        row["jax_backward_ms"] = median_ms(
            lambda: jax.block_until_ready(grads(jx, jw, cotangent)), repeats
        )
    return row


def time_torch(conv: dict, repeats: int, backward: bool) -> dict:
    """Milliseconds of the same convolution in PyTorch, NCHW and channels-last."""
    import torch
    import torch.nn.functional as F

    x, w = _inputs(conv)
    (pt, pb), (pl, pr) = conv["padding"]
    assert pt == pb and pl == pr, f"asymmetric padding {conv['padding']} has no conv2d twin"
    tx = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous()
    tx_cl = tx.contiguous(memory_format=torch.channels_last)
    tw_cl = tw.contiguous(memory_format=torch.channels_last)

    def forward(a, b):
        with torch.no_grad():
            return F.conv2d(a, b, stride=conv["strides"], padding=(pt, pl))

    row = {
        "torch_ms": median_ms(lambda: forward(tx, tw), repeats),
        "torch_cl_ms": median_ms(lambda: forward(tx_cl, tw_cl), repeats),
    }
    if backward:
        ta, tb = tx.clone().requires_grad_(), tw.clone().requires_grad_()
        out = F.conv2d(ta, tb, stride=conv["strides"], padding=(pt, pl))
        g = torch.randn_like(out)
        row["torch_backward_ms"] = median_ms(
            lambda: torch.autograd.grad(out, (ta, tb), g, retain_graph=True), repeats
        )
    return row


def main() -> None:
    """Times every distinct convolution and prints the JSON lines and the weighted total."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="benchmarks/peer_configs.py:resnet18_cifar")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--backward", action="store_true")
    args = parser.parse_args()

    import torch

    from jaxvision import matmul_peak

    torch.set_num_threads(2)
    machine = matmul_peak.machine()
    total: collections.Counter = collections.Counter()
    convs = forward_convolutions(args.config, args.batch)
    # Every jaxvision timing first, then every PyTorch one, so that one framework's thread
    # pool is never still busy while the other's kernels run (measured: the sums moved < 2%).
    rows = [time_jax(conv, args.repeats, args.backward) for conv, _ in convs]
    for row, (conv, _) in zip(rows, convs, strict=True):
        row.update(time_torch(conv, args.repeats, args.backward))
    for row, (conv, count) in zip(rows, convs, strict=True):
        flops = conv_flops(conv)
        for key, ms in row.items():
            total[key] += count * ms
        best_torch = min(row["torch_ms"], row["torch_cl_ms"])
        print(json.dumps({
            **{k: list(v) if isinstance(v, tuple) else v for k, v in conv.items()},
            "count": count, **{k: round(v, 2) for k, v in row.items()},
            "jax_gflops": round(flops / row["jax_ms"] / 1e6, 1),
            "torch_best_gflops": round(flops / best_torch / 1e6, 1),
            "ratio": round(best_torch / row["jax_ms"], 2),
            "cpu": machine["cpu"], "isa": machine["isa"],
        }), flush=True)  # fmt: skip
    print(json.dumps({
        "total": "sum over the forward's convolutions, each shape times its count",
        **{k: round(v, 1) for k, v in total.items()},
        "ratio_vs_nchw": round(total["torch_ms"] / total["jax_ms"], 2),
        "ratio_vs_channels_last": round(total["torch_cl_ms"] / total["jax_ms"], 2),
        "cpu": machine["cpu"], "isa": machine["isa"],
    }))  # fmt: skip


if __name__ == "__main__":
    from jaxvision import backend

    backend.prepare_process()  # huge pages for XLA's buffers, as `jaxvision.benchmark`
    main()
