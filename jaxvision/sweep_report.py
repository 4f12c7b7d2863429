"""A sweep's ablation table: mean ± std over seeds per point, as Markdown, CSV and curves.

Reads each run's `metrics.jsonl` (and the sweep's record of its exit status and wall time).
A point whose seeds did not all finish is listed with what is missing, never averaged over
the seeds that happen to be there.
"""

import csv
import io
import json
import os
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from jaxvision import workdir_files
from jaxvision.checkpoint_choice import metrics_records

RUN_RECORD = "sweep_run.json"
DEFAULT_METRICS = ("eval/accuracy", "eval/loss")


def read_run_record(workdir: str) -> dict[str, Any]:
    """What the sweep recorded of a run: last exit status, attempts, wall seconds."""
    path = os.path.join(workdir, RUN_RECORD)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def lower_is_better(metric: str) -> bool:
    """Losses and errors are minimised; everything else (accuracies) is maximised."""
    return "loss" in metric or "error" in metric


def run_status(workdir: str, total_steps: int | None) -> str:
    """finished | failed | interrupted | missing, from the run's metrics and the sweep's record."""
    record = read_run_record(workdir)
    evals = [r for r in metrics_records(workdir) if any(k.startswith("eval/") for k in r)]
    last_eval = max((int(r["step"]) for r in evals), default=0)
    if (total_steps is not None and last_eval >= total_steps) or (
        total_steps is None and record.get("exit_status") == 0
    ):
        return "finished"
    if record.get("exit_status") in (1, 2):
        return "failed"
    if record or os.path.isdir(os.path.join(workdir, "checkpoints")):
        return "interrupted"
    return "missing"


def run_summary(workdir: str, metrics: tuple[str, ...]) -> dict[str, float]:
    """Final and best value of each eval metric, the last step and the wall time of one run."""
    records = metrics_records(workdir)
    out: dict[str, float] = {}
    for metric in metrics:
        logged = [(int(r["step"]), float(r[metric])) for r in records if metric in r]
        if not logged:
            continue
        values = [v for _, v in logged]
        out[f"final {metric}"] = max(logged)[1]
        out[f"best {metric}"] = min(values) if lower_is_better(metric) else max(values)
    out["steps"] = float(max((int(r["step"]) for r in records), default=0))
    wall = read_run_record(workdir).get("wall_seconds")
    if wall is not None:
        out["wall seconds"] = float(wall)
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    # Sample standard deviation over seeds (ddof=1); 0 for a single seed.
    array = np.asarray(values, np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def point_rows(plan: dict[str, Any], metrics: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per point: status per seed and mean/std of every column over complete seeds."""
    rows = []
    for point in plan["points"]:
        statuses = {r["seed"]: run_status(r["workdir"], point["steps"]) for r in point["runs"]}
        row = {"point": point["name"], "overrides": point["overrides"], "seeds": statuses}
        row["complete"] = all(s == "finished" for s in statuses.values())
        if row["complete"]:
            summaries = [run_summary(r["workdir"], metrics) for r in point["runs"]]
            columns = [c for c in summaries[0] if all(c in s for s in summaries)]
            row["stats"] = {c: _mean_std([s[c] for s in summaries]) for c in columns}
        rows.append(row)
    return rows


def mark_best(rows: list[dict[str, Any]], metric: str) -> str:
    """Marks the best complete row by `metric`; returns a note on how it compares."""
    column = f"final {metric}"
    scored = [r for r in rows if r["complete"] and column in r["stats"]]
    if not scored:
        return f"No point has all its seeds finished with {metric} logged."
    sign = 1.0 if lower_is_better(metric) else -1.0
    scored.sort(key=lambda r: sign * r["stats"][column][0])
    scored[0]["best"] = True
    best_mean, best_std = scored[0]["stats"][column]
    note = f"Best by final {metric}: {scored[0]['point']}."
    if len(scored) > 1:
        second_mean, second_std = scored[1]["stats"][column]
        if abs(best_mean - second_mean) <= max(best_std, second_std):
            note += (
                f" The runner-up {scored[1]['point']} is within one standard deviation "
                f"({best_mean:.4f} vs {second_mean:.4f}): the seeds do not separate them."
            )
    return note


def _cell(stats: tuple[float, float], column: str) -> str:
    mean, std = stats
    if column == "steps":
        return f"{mean:.0f}"
    if column == "wall seconds":
        return f"{mean:.1f} ± {std:.1f}"
    return f"{mean:.4f} ± {std:.4f}"


def _status_text(seeds: dict[int, str]) -> str:
    done = sum(s == "finished" for s in seeds.values())
    other = ", ".join(f"seed {k} {s}" for k, s in seeds.items() if s != "finished")
    return f"{done}/{len(seeds)}" + (f" ({other})" if other else "")


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        for c in row.get("stats", {}):
            if c not in columns:
                columns.append(c)
    return columns


def markdown(plan: dict[str, Any], rows: list[dict[str, Any]], note: str) -> str:
    """The table a paper can use: mean ± std over seeds (sample std), best row in bold."""
    columns = _columns(rows)
    lines = [
        f"Sweep of `{plan['config']}` over seeds {plan['seeds']}: mean ± std over seeds "
        "(sample standard deviation). The best point is in bold; a point whose seeds did "
        "not all finish shows no numbers.",
        "",
        "| point | seeds | " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for row in rows:
        cells = [_cell(row["stats"][c], c) if c in row.get("stats", {}) else "—" for c in columns]
        name = f"`{row['point']}`"
        if row.get("best"):
            name, cells = f"**{name}** (best)", [f"**{c}**" for c in cells]
        lines.append(f"| {name} | {_status_text(row['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", note, ""])


def csv_text(plan: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The same table as CSV: one column per override, mean and std per metric."""
    columns = _columns(rows)
    keys = list(dict.fromkeys(k for p in plan["points"] for k in p["overrides"]))
    out = io.StringIO()
    writer = csv.writer(out)
    header = ["point", *keys, "seeds_finished", "seeds", "status", "best"]
    writer.writerow(header + [f"{c} {part}" for c in columns for part in ("mean", "std")])
    for row in rows:
        values = [row["overrides"].get(k, "") for k in keys]
        done = sum(s == "finished" for s in row["seeds"].values())
        status = ";".join(f"{k}:{s}" for k, s in row["seeds"].items())
        stats = [
            repr(row["stats"][c][i]) if c in row.get("stats", {}) else ""
            for c in columns
            for i in (0, 1)
        ]
        best = bool(row.get("best"))
        writer.writerow([row["point"], *values, done, len(row["seeds"]), status, best, *stats])
    return out.getvalue()


def _curve(workdirs: list[str], metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Steps every seed logged `metric` at, and the values [seeds, steps]."""
    series = []
    for workdir in workdirs:
        logged = {int(r["step"]): float(r[metric]) for r in metrics_records(workdir) if metric in r}
        series.append(logged)
    common = sorted(set.intersection(*[set(s) for s in series])) if series else []
    if not common:
        return None
    return np.asarray(common), np.asarray([[s[t] for t in common] for s in series])


def figure(plan: dict[str, Any], path: str) -> str:
    """Training loss and eval accuracy per point: the mean over seeds and a ±1 std band."""
    panels = ("train/loss", "eval/accuracy")
    # A figure outside pyplot's global state, so notebooks keep their own backend.
    fig = Figure(figsize=(6 * len(panels), 4.2))
    axes = fig.subplots(1, len(panels))
    for ax, metric in zip(axes, panels):
        for point in plan["points"]:
            curve = _curve([r["workdir"] for r in point["runs"]], metric)
            if curve is None:
                continue
            steps, values = curve
            mean, std = values.mean(0), values.std(0)
            marker = "o" if len(steps) < 8 else None
            (line,) = ax.plot(steps, mean, marker=marker, label=point["name"])
            ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set_xlabel("step")
        ax.set_title(f"{metric} (mean ± std over seeds)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    workdir_files.write_with(
        path, lambda buffer: fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    )
    return path


def write(root: str, plan: dict[str, Any], metrics: tuple[str, ...] = ()) -> dict[str, Any]:
    """Writes ROOT/ablation.md, .csv and .png; returns the rows and the note."""
    metrics = tuple(dict.fromkeys((*metrics, *DEFAULT_METRICS)))
    rows = point_rows(plan, metrics)
    note = mark_best(rows, metrics[0])
    workdir_files.write_text(os.path.join(root, "ablation.md"), markdown(plan, rows, note))
    workdir_files.write_text(os.path.join(root, "ablation.csv"), csv_text(plan, rows))
    figure(plan, os.path.join(root, "ablation.png"))
    return {"rows": rows, "note": note}
