"""Train (or inference) steps of config variants, interleaved one step each in one process.

    python benchmarks/interleaved_ab.py --config=benchmarks/peer_configs.py:vit_ti4_cifar \
        --steps=16 "" "xla:xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE"
    python benchmarks/interleaved_ab.py --config=... --what=infer "" "grad_accum_steps=4"
    python benchmarks/interleaved_ab.py --config=benchmarks/peer_configs.py:resnet18_cifar \
        --what=infer --steps=10 "" "fold=1"

Each positional argument is one variant: `;`-separated `key=value` config overrides
(`model.scan=True`), `xla:option=value` per-executable XLA options (on top of
`jaxvision/backend/xla_options.py`'s; `xla:option=` with no value drops one), `fold=1`
(the eval forward with BatchNorm folded, `jaxvision.batchnorm_folding`) and `pointwise=0`
(1x1 convolutions left as convolutions, not `backend/pointwise.py`'s matmuls). The empty string is
the config as it is; `--common` overrides apply to every variant. Every variant is built
and compiled exactly as `jaxvision.benchmark` builds it; then the timed loop runs one step
of each variant in turn, so a change in the machine's load hits all of them alike, which
separate runs on a shared 2-core machine do not. Prints one JSON line per variant: median
img/s, min-max, and the ratio to the first. `parallel.cpu_devices` is one per process:
give it in `--common`, not per variant.
"""

import argparse
import ast
import json
import os
import statistics
import time


def apply_variant(config, variant: str) -> tuple[dict[str, str], bool, bool]:
    """Applies `variant`'s config overrides to `config`; returns its XLA option changes,
    whether its eval forward folds BatchNorm (`fold=1`) and whether 1x1 convolutions run as
    matmuls (`pointwise=0` turns that off)."""
    xla: dict[str, str] = {}
    fold, pointwise_dots = False, True
    for item in filter(None, (part.strip() for part in variant.split(";"))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"Variant item {item!r} is not key=value (in {variant!r}).")
        if key.startswith("xla:"):
            xla[key[4:]] = value
            continue
        if key == "fold":
            fold = bool(int(value))
            continue
        if key == "pointwise":
            pointwise_dots = bool(int(value))
            continue
        *path, last = key.split(".")
        node = config
        for name in path:
            node = node[name]
        if last not in node:
            raise KeyError(f"Config has no key {key!r} (variant {variant!r}).")
        old = node[last]
        if isinstance(old, str):
            node[last] = value
        else:
            node[last] = type(old)(ast.literal_eval(value)) if old is not None else value
    return xla, fold, pointwise_dots


def main() -> None:
    """Builds each variant, then times them step by step in turn."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="Config file[:arg], as for training.")
    parser.add_argument("--common", default="", help="Overrides for every variant (k=v;...).")
    parser.add_argument("--steps", type=int, default=10, help="Timed steps per variant.")
    parser.add_argument("--what", choices=("train", "infer"), default="train")
    parser.add_argument("variants", nargs="*")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import jax

    from jaxvision import backend, parallel
    from jaxvision import config as config_lib
    from jaxvision.backend import pointwise, xla_options
    from jaxvision.benchmark import Bench

    variants = args.variants or [""]
    benches = []
    for variant in variants:
        config = config_lib.load(args.config)
        config.unlock()
        xla, fold, pointwise_dots = apply_variant(config, f"{args.common};{variant}")
        with (
            xla_options.overridden(xla),
            backend.folding(fold),
            pointwise.enabled(pointwise_dots),
        ):
            # Process-wide: variants that differ in it fail here with a clear error.
            parallel.set_cpu_devices(config.parallel.cpu_devices)
            bench = Bench(config)
            bench.compile()
            # The forward pass compiles on its first call: under the same options.
            jax.block_until_ready(bench.infer_fn(bench.state, bench.eval_images[0]))
        benches.append(bench)

    def run(bench, i: int):
        if args.what == "train":
            bench.state, metrics = bench.compiled_train(bench.state, bench.batches[i % 2])
            return metrics
        return bench.infer_fn(bench.state, bench.eval_images[i % 2])

    seconds: list[list[float]] = [[] for _ in benches]
    for i in range(args.steps + 1):  # step 0 warms up
        for j, bench in enumerate(benches):
            start = time.perf_counter()
            jax.block_until_ready(run(bench, i))
            if i:
                seconds[j].append(time.perf_counter() - start)
    base = None
    train = args.what == "train"
    for variant, bench, times in zip(variants, benches, seconds, strict=True):
        images = bench.config.batch_size if train else len(bench.eval_images[0])
        rate = images / statistics.median(times)
        base = base or rate
        record = {
            "variant": variant or "(as configured)",
            "what": args.what,
            "img_per_s": round(rate, 2),
            "min": round(images / max(times), 2),
            "max": round(images / min(times), 2),
            "steps": len(times),
            "ratio_to_first": round(rate / base, 3),
            "load_1min": os.getloadavg()[0],
        }
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    from jaxvision import backend

    # The same process set-up as `jaxvision.benchmark` (huge pages for XLA's buffers).
    backend.prepare_process()
    main()
