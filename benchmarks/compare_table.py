"""Prints the jaxvision / PyTorch tables from the JSON lines compare_torch.sh wrote.

    python benchmarks/compare_table.py benchmarks/results/compare-*.jsonl

The headline, per model and step (train, infer): jaxvision against the FASTEST PyTorch
setup there (eager, torch.compile, either with channels-last; fastest by median img/s),
as the ratio of medians (jaxvision / PyTorch; > 1 means jaxvision is faster) and the
median [min-max] of the per-repetition ratios. Then every setup with its median [min-max]
img/s and both ratios. Each repetition runs all setups back to back, so its ratio cancels
the machine's slower drift (its speed moves by 20% and more over hours), which the ratio of
medians does not. Every side is taken as batch / mean step time over its timed steps, as
the peer reports.
"""

import json
import statistics
import sys
from collections import defaultdict

JAX = "jaxvision"


def collect(lines: list[str]) -> tuple[dict, list[dict]]:
    """{(model, metric, setup): {repetition: img/s}} and the machine records.

    Metrics are "train" and "infer" (img/s) and "mfu"; setups are "jaxvision" and the
    peer's names ("pytorch-eager", "pytorch-compile-channels-last", ...).
    """
    values: dict = defaultdict(dict)
    machines = []
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        rec = json.loads(line)
        kind, rep = rec.get("measurement"), rec.get("rep")
        if kind == "machine":
            machines.append(rec)
        elif "peer" in rec:
            for metric in ("train", "infer"):
                values[(rec["bench"], metric, rec["peer"])][rep] = rec[f"{metric}_img_per_s"]
        elif kind in ("train", "infer"):
            values[(rec["bench"], kind, JAX)][rep] = rec["batch_size"] / rec["mean_ms"] * 1e3
        elif kind == "summary":
            values[(rec["bench"], "batch", JAX)][rep] = rec["batch_size"]
            if rec.get("peak_suspect"):
                values[(rec["bench"], "peak_suspect", JAX)][rep] = 1
            if rec.get("mfu") is not None:
                values[(rec["bench"], "mfu", JAX)][rep] = rec["mfu"]
    return values, machines


def _cell(v: list[float]) -> str:
    return f"{statistics.median(v):.1f} [{min(v):.1f}-{max(v):.1f}]"


def _ratios(jax_v: dict, torch_v: dict) -> tuple[str, str]:
    """The ratio of medians and the per-repetition ratios' median [min-max]."""
    medians = statistics.median(jax_v.values()) / statistics.median(torch_v.values())
    both = sorted(set(jax_v) & set(torch_v), key=str)
    paired = "-"
    if both:
        r = [jax_v[k] / torch_v[k] for k in both]
        paired = f"{statistics.median(r):.2f}x [{min(r):.2f}-{max(r):.2f}]"
    return f"{medians:.2f}x", paired


def table(values: dict) -> list[str]:
    """Markdown rows: the headline table (vs the fastest setup), then every setup's rows."""
    models = sorted({m for m, _, _ in values})
    head = [
        "| model | batch | step | jaxvision img/s | fastest PyTorch setup | its img/s "
        "| jaxvision / fastest (ratio of medians) | per-repetition ratio | reps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    detail = [
        "| model | step | setup | img/s (median [min-max]) | jaxvision / setup "
        "| per-repetition ratio | reps |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in models:
        batch = values.get((model, "batch", JAX), {})
        batch_text = str(next(iter(batch.values()))) if batch else "-"
        for metric in ("train", "infer"):
            jax_v = values.get((model, metric, JAX), {})
            peers = {s: v for (m, k, s), v in values.items() if (m, k) == (model, metric)}
            peers.pop(JAX, None)
            if not jax_v or not peers:
                continue
            fastest = max(peers, key=lambda s: statistics.median(peers[s].values()))
            medians, paired = _ratios(jax_v, peers[fastest])
            head.append(
                f"| {model} | {batch_text} | {metric} | {_cell(list(jax_v.values()))} "
                f"| {fastest} | {_cell(list(peers[fastest].values()))} | **{medians}** "
                f"| {paired} | {len(jax_v)} |"
            )
            detail.append(
                f"| {model} | {metric} | {JAX} | {_cell(list(jax_v.values()))} | 1.00x | - "
                f"| {len(jax_v)} |"
            )
            for setup in sorted(peers, key=lambda s: -statistics.median(peers[s].values())):
                medians, paired = _ratios(jax_v, peers[setup])
                detail.append(
                    f"| {model} | {metric} | {setup} | {_cell(list(peers[setup].values()))} "
                    f"| {medians} | {paired} | {len(peers[setup])} |"
                )
        mfu = list(values.get((model, "mfu", JAX), {}).values())
        suspect = len(values.get((model, "peak_suspect", JAX), {}))
        if mfu or suspect:
            text = f"{statistics.median(mfu):.1%} [{min(mfu):.1%}-{max(mfu):.1%}]" if mfu else "-"
            detail.append(
                f"| {model} | train MFU (vs the measured matmul peak) | {JAX} | {text} | | "
                f"{suspect} repetitions with peak_suspect | {len(mfu)} |"
            )
    return [*head, "", *detail]


def main(paths: list[str]) -> None:
    """Reads the files and prints the machine lines and the tables."""
    lines = []
    for path in paths:
        with open(path) as f:
            lines.extend(f)
    values, machines = collect(lines)
    for m in machines:
        print(
            f"machine: {m['cpu']}, ISA {m.get('isa', 'unknown')}, {m['cores']} cores, "
            f"load {m['load_1min']} at {m['when']}"
        )
    print("\n".join(table(values)))


if __name__ == "__main__":
    main(sys.argv[1:])
