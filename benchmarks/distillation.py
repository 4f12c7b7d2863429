"""The offline distillation experiment of docs/distillation.md: teacher, student alone, distilled.

    nice -n 5 python benchmarks/distillation.py --root=/tmp/distill --seeds=0,1,2 \
        --out=benchmarks/results/distillation.jsonl

Trains the quick-start CNN teacher, then per seed the configs/distill.py student alone, with
`soft`, `hard` and `deit` distillation from that (first seed's) teacher, then the teacher with
the other seeds for its own spread; one run at a time. `--schedule=long` runs the students
of `configs/distill.py:METHOD,long` (2000 steps) into workdirs named `METHOD_long_sSEED`;
`--schedule=few` those of `METHOD,few` (2000 steps on the first 500 training images), with
teachers trained on the same 500 images (`teacher_few_sSEED`).
Each run's final test accuracy, student-teacher agreement and median step time go into one
JSON line; the table (mean, min-max over seeds) is printed at the end. The teacher's forward
cost per step is measured twice: as the step-time difference between the distilled and the
lone student, and as the wall-clock of the teacher's jitted forward pass on one batch alone.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # this checkout's jaxvision, as the runs' `python -m` from REPO use
from configs.distill import FEW_LABELS  # noqa: E402 (needs REPO on the path)

METHODS = ("alone", "soft", "hard", "deit")
# --methods=unlabelled (with --schedule=few): `soft` on all 4,000 images, none of their labels.
EXTRA_METHODS = ("unlabelled",)


def _run(config: str, workdir: str, *overrides: str) -> None:
    """Trains `config` into `workdir` (skipped if it already finished)."""
    if os.path.isfile(os.path.join(workdir, "eval", "test", "report.json")):
        return
    cmd = [sys.executable, "-m", "jaxvision.main", f"--config={config}", f"--workdir={workdir}"]
    print("+", " ".join([*cmd[1:], *overrides]), flush=True)
    subprocess.run([*cmd, *overrides], cwd=REPO, check=True)


def _summary(workdir: str) -> dict:
    """Final eval accuracy, agreement and the median logged step time of a finished run."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    last = max(r["step"] for r in records)
    final = {k: v for r in records if r["step"] == last for k, v in r.items()}
    # The first logged window includes compilation.
    step_ms = [r["train/step_ms"] for r in records if "train/step_ms" in r][1:]
    teacher = [r["eval/teacher_accuracy"] for r in records if "eval/teacher_accuracy" in r]
    return {
        "step": last,
        "accuracy": final["eval/accuracy"],
        "agreement": final.get("eval/teacher_agreement"),
        "teacher_accuracy": teacher[0] if teacher else None,
        "step_ms": statistics.median(step_ms),
    }


def teacher_forward_ms(teacher_dir: str, batch: int, repeats: int = 20) -> float:
    """Median wall-clock of the teacher's jitted eval forward on one batch at its input size."""
    import jax
    import jax.numpy as jnp

    from jaxvision import backend
    from jaxvision import workdir as workdir_lib

    run = workdir_lib.load(teacher_dir)
    images = jnp.zeros((batch, *run.info.image_shape), jnp.float32)
    fn = jax.jit(lambda v, x: backend.forward(run.model, v, x))
    fn(run.variables, images).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(run.variables, images).block_until_ready()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _table(rows: list[dict]) -> str:
    lines = [
        "| method | seeds | test accuracy, mean [min-max] | agreement with teacher | step ms |",
        "|---|---|---|---|---|",
    ]
    for method in ("teacher", *METHODS, *EXTRA_METHODS):
        got = [r for r in rows if r["method"] == method]
        if not got:
            continue
        acc = [r["accuracy"] for r in got]
        agree = [r["agreement"] for r in got if r["agreement"] is not None]
        lines.append(
            f"| {method} | {len(got)} | {100 * statistics.mean(acc):.2f}% "
            f"[{100 * min(acc):.2f}-{100 * max(acc):.2f}] "
            f"| {f'{100 * statistics.mean(agree):.2f}%' if agree else '-'} "
            f"| {statistics.median(r['step_ms'] for r in got):.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Runs the grid and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="where the workdirs go")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--teacher_seeds", default="", help="teacher seeds (default: --seeds)")
    parser.add_argument(
        "--schedule",
        default="",
        help='"long": configs/distill.py\'s 2000-step students; "few": on 500 labels',
    )
    parser.add_argument("--out", default="", help="JSON lines file for the results")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    few = args.schedule == "few"
    # With few labels the teacher learns from the students' images only (no extra data), for
    # the quick start's 375 steps (96 epochs of the 500 images instead of 12 of 4,000).
    teacher_args = (
        [f"--config.dataset.train_split=train[:{FEW_LABELS}]", "--config.num_train_steps=375"]
        if few
        else []
    )
    teacher_name = "teacher_few" if few else "teacher"
    teacher = os.path.join(args.root, f"{teacher_name}_s{seeds[0]}")
    _run("configs/quickstart.py", teacher, f"--config.seed={seeds[0]}", *teacher_args)
    for seed in seeds:
        for method in args.methods.split(","):
            suffix = f",{args.schedule}" if args.schedule else ""
            wd = os.path.join(args.root, f"{method}{suffix.replace(',', '_')}_s{seed}")
            extra = [] if method == "alone" else [f"--config.distill.teacher={teacher}"]
            arg = "soft,unlabelled" if method == "unlabelled" else method
            _run(f"configs/distill.py:{arg}{suffix}", wd, f"--config.seed={seed}", *extra)
            rows.append({"method": method, "seed": seed, **_summary(wd)})
    # The teacher's own spread over seeds (the students all learn from the first).
    for seed in [int(s) for s in args.teacher_seeds.split(",") if s] or seeds:
        wd = os.path.join(args.root, f"{teacher_name}_s{seed}")
        _run("configs/quickstart.py", wd, f"--config.seed={seed}", *teacher_args)
        rows.append({"method": "teacher", "seed": seed, **_summary(wd)})
    forward = teacher_forward_ms(teacher, batch=128)
    rows.append({"method": "teacher_forward", "batch": 128, "forward_ms": forward})
    if args.out:
        with open(args.out, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    print(_table(rows))
    print(f"\nTeacher forward alone: {forward:.1f} ms per batch of 128 (median of 20).")


if __name__ == "__main__":
    main()
