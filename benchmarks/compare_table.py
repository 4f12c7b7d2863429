"""Prints the jaxvision / PyTorch table from the JSON lines compare_torch.sh wrote.

    python benchmarks/compare_table.py benchmarks/results/compare-*.jsonl

Per model and metric: the median over repetitions for each side, the min-max across
repetitions, the ratio of medians (jaxvision / PyTorch; > 1 means jaxvision is faster), and
the median [min-max] of the per-repetition ratios. Each repetition runs the two sides back to
back, so its ratio cancels the machine's slower drift (its speed moves by 20% and more over
hours here), which the ratio of medians does not.
Both sides are taken as batch / mean step time over their timed steps, as the peer reports.
"""

import json
import statistics
import sys
from collections import defaultdict


def collect(lines: list[str]) -> tuple[dict, list[dict]]:
    """{(model, metric, side): [img/s per repetition]} and the machine records."""
    values: dict = defaultdict(list)
    machines = []
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        rec = json.loads(line)
        kind = rec.get("measurement")
        if kind == "machine":
            machines.append(rec)
        elif rec.get("peer") == "pytorch-eager":
            for metric in ("train", "infer"):
                values[(rec["bench"], metric, "pytorch")].append(rec[f"{metric}_img_per_s"])
        elif kind in ("train", "infer"):
            values[(rec["bench"], kind, "jaxvision")].append(
                rec["batch_size"] / rec["mean_ms"] * 1e3
            )
        elif kind == "summary" and rec.get("mfu") is not None:
            values[(rec["bench"], "mfu", "jaxvision")].append(rec["mfu"])
    return values, machines


def table(values: dict) -> list[str]:
    """Markdown rows: model, metric, each side's median [min-max], both ratios, repetitions."""
    rows = [
        "| model | step | jaxvision img/s (median [min-max]) | PyTorch img/s (median [min-max]) "
        "| ratio of medians | per-repetition ratio (median [min-max]) | reps |",
        "|---|---|---|---|---|---|---|",
    ]
    models = sorted({m for m, _, _ in values})

    def cell(v: list[float]) -> str:
        return f"{statistics.median(v):.1f} [{min(v):.1f}-{max(v):.1f}]"

    for model in models:
        for metric in ("train", "infer"):
            jax_v = values.get((model, metric, "jaxvision"), [])
            torch_v = values.get((model, metric, "pytorch"), [])
            if not jax_v or not torch_v:
                continue
            ratio = statistics.median(jax_v) / statistics.median(torch_v)
            reps = min(len(jax_v), len(torch_v))
            # Each repetition wrote one line per side, so the lists pair up in file order.
            paired = "-"
            if len(jax_v) == len(torch_v):
                r = [j / t for j, t in zip(jax_v, torch_v, strict=True)]
                paired = f"{statistics.median(r):.2f}x [{min(r):.2f}-{max(r):.2f}]"
            rows.append(
                f"| {model} | {metric} | {cell(jax_v)} | {cell(torch_v)} | {ratio:.2f}x "
                f"| {paired} | {reps} |"
            )
        mfu = values.get((model, "mfu", "jaxvision"))
        if mfu:
            rows.append(
                f"| {model} | train MFU (vs measured fp32 matmul peak) | "
                f"{statistics.median(mfu):.1%} [{min(mfu):.1%}-{max(mfu):.1%}] | | | | {len(mfu)} |"
            )
    return rows


def main(paths: list[str]) -> None:
    """Reads the files and prints the machine lines and the table."""
    lines = []
    for path in paths:
        with open(path) as f:
            lines.extend(f)
    values, machines = collect(lines)
    for m in machines:
        print(f"machine: {m['cpu']}, {m['cores']} cores, load {m['load_1min']} at {m['when']}")
    print("\n".join(table(values)))


if __name__ == "__main__":
    main(sys.argv[1:])
