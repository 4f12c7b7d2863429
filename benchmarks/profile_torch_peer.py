"""Where the PyTorch peer's step time goes, by op category: the other side of `--what=profile`.

    python benchmarks/profile_torch_peer.py --model=resnet18_cifar --batch=128 --compile
    python benchmarks/profile_torch_peer.py --model=resnet50_imagenet --batch=16 --compile \
        --channels-last --step=infer

Builds the model of `../shared/peers/torch_reference.py` exactly as that script does (eager,
`--compile` for inductor, `--channels-last`), warms it up (inductor compiles there), then
runs `--steps` train steps or eval forwards under `torch.profiler` and sums each op's self
CPU time into categories like `jaxvision/backend/op_profile.py`'s: inductor's generated C++
loops (named with `cpp.enable_kernel_profile`; each fuses BatchNorm, ReLU, adds and
reductions), convolution (oneDNN's forward and backward kernels), matmul, batch-norm,
optimizer, reductions, elementwise (eager's pointwise ops), other. Prints one JSON line per
category (ms per step, share) and the ten largest ops, with the CPU model and ISA. Self
times are wall time on the calling thread: with 2 intra-op threads a kernel's time counts
once, so the shares add up to the step's wall time.
"""

import argparse
import collections
import importlib.util
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# The first pattern an op's name contains decides its category.
CATEGORIES = (
    # Inductor's generated loops carry the names of every op they fused, convolution's
    # backward included; they are elementwise/reduction passes, never a convolution.
    ("fused loops (inductor)", ("cpp_fused",)),
    ("convolution", ("convolution", "conv2d", "mkldnn_conv")),
    ("matmul", ("addmm", "aten::mm", "bmm", "matmul", "linear", "scaled_dot_product")),
    ("batch-norm", ("batch_norm",)),
    ("optimizer", ("optim", "_foreach", "sgd", "adam")),
    ("reductions", ("sum", "mean", "max_pool", "avg_pool", "softmax", "nll_loss", "amax")),
    ("elementwise", ("kernel_cpp", "relu", "add", "mul", "gelu", "layer_norm",
                     "threshold", "copy_", "clone", "contiguous", "to_copy", "fill_", "zero_")),
)  # fmt: skip


def category(name: str) -> str:
    """The category of one profiled op by its name."""
    low = name.lower()
    for label, patterns in CATEGORIES:
        if any(p in low for p in patterns):
            return label
    return "other"


def load_peer(path: str):
    """The peer module at `path` (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("torch_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    """Profiles the peer's train step or eval forward and prints the category table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", default=os.path.join(REPO, "..", "shared", "peers",
                                                       "torch_reference.py"))  # fmt: skip
    parser.add_argument("--model", default="resnet18_cifar")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--step", choices=("train", "infer"), default="train")
    args = parser.parse_args()

    import torch
    import torch._inductor.config as inductor_config
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    from jaxvision import matmul_peak

    inductor_config.cpp.enable_kernel_profile = True  # inductor's loops as named events
    peer = load_peer(args.peer)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    build, size, make_opt = peer.MODELS[args.model]
    model = build()
    opt = make_opt(model.parameters())
    x = torch.randn(args.batch, 3, size, size)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if args.compile:
        model = torch.compile(model)
    y = torch.randint(0, 10, (args.batch,))

    def train_step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def infer_step():
        with torch.no_grad():
            model(x)

    if args.step == "infer":
        model.eval()
    step = train_step if args.step == "train" else infer_step
    for _ in range(2):  # warm-up; with --compile, compilation
        step()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    wall_ms = (time.perf_counter() - start) * 1e3 / args.steps

    sums: collections.Counter = collections.Counter()
    ops: collections.Counter = collections.Counter()
    for event in prof.key_averages():
        ms = event.self_cpu_time_total / 1e3 / args.steps
        sums[category(event.key)] += ms
        ops[event.key] += ms
    machine = matmul_peak.machine()
    setup = ("compile" if args.compile else "eager") + (
        "-channels-last" if args.channels_last else ""
    )
    total = sum(sums.values())
    head = {"model": args.model, "batch": args.batch, "step": args.step, "setup": setup,
            "torch": torch.__version__, "cpu": machine["cpu"], "isa": machine["isa"]}  # fmt: skip
    print(json.dumps({**head, "wall_ms_profiled": round(wall_ms, 1), "self_ms": round(total, 1)}))
    for label, ms in sums.most_common():
        print(json.dumps({**head, "category": label, "ms": round(ms, 1),
                          "share": round(ms / total, 3)}))  # fmt: skip
    for name, ms in ops.most_common(10):
        print(json.dumps({**head, "op": name[:120], "category": category(name),
                          "ms": round(ms, 1)}))  # fmt: skip


if __name__ == "__main__":
    main()
