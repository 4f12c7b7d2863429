"""Evaluate a trained run: python -m jaxvision.evaluate --workdir=DIR [--split=test] ...

Writes DIR/eval/<split>/report.json (every metric of `jaxvision.metrics`),
predictions.npz (labels and logits per example), PNGs (confusion matrix, ROC curves,
reliability diagram, training curves) and summary.md. `--compare=DIR2,DIR3` evaluates
further workdirs the same way and prints one side-by-side table (ablations).
"""

import json
import os
import re
import sys
from typing import Any

import jax
import numpy as np
from absl import app, flags

from jaxvision import command_line, data, metrics, parallel, plots, split_inference, workdir_files
from jaxvision import workdir as workdir_lib
from jaxvision.console import log


def logged_eval(workdir: str, step: int) -> dict[str, float]:
    """The eval metrics training logged at `step` (empty if it logged none there)."""
    found = {}
    for record in workdir_lib.metrics_records(workdir):
        if int(record["step"]) == step:
            found.update({k: v for k, v in record.items() if k.startswith("eval/")})
    return found


def output_dir(workdir: str, split: str, *, checkpoint: str = "latest", ema: bool = False) -> str:
    """DIR/eval/<split>[-ema][-step<N>|-best]: one directory per evaluated variant."""
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "_", split).strip("_") or "split"
    if ema:
        name += "-ema"
    if checkpoint != "latest":
        name += "-best" if checkpoint == "best" else f"-step{checkpoint}"
    return workdir_files.join(workdir, "eval", name)


def build_report(
    run: workdir_lib.LoadedRun, split: str, labels: np.ndarray, logits: np.ndarray, **meta: Any
) -> dict[str, Any]:
    """Metrics plus what was evaluated and what training logged for that checkpoint."""
    report = {
        "workdir": run.workdir,
        "model": run.config.model.name,
        "dataset": run.info.spec.name,
        "split": split,
        "step": run.step,
        "ema": run.ema,
        **meta,
        "training_logged": logged_eval(run.workdir, run.step),
    }
    report.update(metrics.classification_report(labels, logits, run.class_names))
    return report


def summary_markdown(report: dict[str, Any]) -> str:
    """A short human-readable summary of a report."""
    avg = report["precision_recall_f1"]
    auc = report["roc_auc"]["macro"]
    lines = [
        f"# {report['model']} on {report['dataset']} ({report['split']})",
        "",
        f"Checkpoint step {report['step']}{' (EMA weights)' if report['ema'] else ''}, "
        f"{report['num_examples']} examples, {report['num_classes']} classes.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| top-1 accuracy | {report['accuracy']:.4f} |",
        f"| top-{report['top_k']} accuracy | {report['top5_accuracy']:.4f} |",
        f"| loss | {report['loss']:.4f} |",
        f"| macro F1 | {avg['macro']['f1']:.4f} |",
        f"| weighted F1 | {avg['weighted']['f1']:.4f} |",
        f"| ROC-AUC (macro, one-vs-rest) | {'n/a' if auc is None else f'{auc:.4f}'} |",
        f"| ECE | {report['ece']:.4f} |",
        "",
    ]
    worst = sorted(report["per_class"], key=lambda r: r["f1"])[:5]
    lines += ["Lowest-F1 classes:", ""]
    lines += [f"- {r['name']}: F1 {r['f1']:.3f} (support {r['support']})" for r in worst]
    figures = ["confusion_matrix.png", "roc_curves.png", "reliability.png", "training_curves.png"]
    lines += ["", *[f"![{f[:-4]}]({f})" for f in figures if f in report["figures"]], ""]
    return "\n".join(lines)


def write_report(
    out_dir: str, report: dict[str, Any], labels: np.ndarray, logits: np.ndarray
) -> dict[str, Any]:
    """Writes report.json, predictions.npz, the PNGs and summary.md into `out_dir`."""
    workdir_files.makedirs(out_dir)
    probs = metrics.softmax(logits)
    names = [row["name"] for row in report["per_class"]]
    figures = [
        plots.confusion_matrix(
            report["confusion_matrix"], names, workdir_files.join(out_dir, "confusion_matrix.png")
        ),
        plots.roc_curves(labels, probs, names, workdir_files.join(out_dir, "roc_curves.png")),
        plots.reliability_diagram(
            report["calibration"], report["ece"], workdir_files.join(out_dir, "reliability.png")
        ),
        plots.training_curves(
            workdir_lib.metrics_records(report["workdir"]),
            workdir_files.join(out_dir, "training_curves.png"),
        ),
    ]
    report["figures"] = [os.path.basename(f) for f in figures if f]
    workdir_files.write_with(
        workdir_files.join(out_dir, "predictions.npz"),
        lambda buffer: np.savez_compressed(buffer, labels=labels, logits=logits),
    )
    workdir_files.write_text(
        workdir_files.join(out_dir, "report.json"), json.dumps(report, indent=2) + "\n"
    )
    workdir_files.write_text(workdir_files.join(out_dir, "summary.md"), summary_markdown(report))
    return report


def evaluate_workdir(
    workdir: str, *, split: str | None = None, checkpoint: str = "latest", ema: bool = False
) -> dict[str, Any]:
    """Restores a checkpoint of `workdir`, evaluates it on `split` and writes the report."""
    mesh = parallel.make_mesh()
    run = workdir_lib.load(workdir, checkpoint_step=checkpoint, ema=ema, mesh=mesh)
    split = split or run.info.spec.eval_split
    try:
        eval_data = data.eval_batches(run.config, run.info, mesh, split=split)
    except (KeyError, ValueError) as e:
        raise workdir_lib.WorkdirError(
            f"--split={split!r} is not usable for {run.info.spec.name}: {e}"
        ) from e
    labels, logits = split_inference.forward_split(run.model, run.variables, eval_data, mesh)
    report = build_report(run, split, labels, logits, checkpoint=checkpoint)
    out_dir = output_dir(run.workdir, split, checkpoint=checkpoint, ema=ema)
    if jax.process_index() == 0:
        write_report(out_dir, report, labels, logits)
        report_path = workdir_files.join(out_dir, "report.json")
        log.info("Wrote %s (top-1 %.4f).", report_path, report["accuracy"])
    return report


def after_training(workdir: str, config: Any, info: data.DataInfo, model: Any, state: Any) -> None:
    """End of training: training curves and the eval report of the final state.

    Every process must call it (the eval split is spread over them); process 0 writes.
    """
    mesh = parallel.make_mesh()
    run = workdir_lib.LoadedRun(
        workdir=workdir_files.absolute(workdir),
        config=config,
        info=info,
        model=model,
        variables=workdir_lib.inference_variables(state),
        step=int(jax.device_get(state.step)),
        ema=False,
    )
    split = info.spec.eval_split
    labels, logits = split_inference.forward_split(
        model, run.variables, data.eval_batches(config, info, mesh), mesh
    )
    if jax.process_index() != 0:
        return
    report = build_report(run, split, labels, logits, checkpoint="latest")
    out_dir = output_dir(run.workdir, split)
    write_report(out_dir, report, labels, logits)
    plots.training_curves(
        workdir_lib.metrics_records(workdir), workdir_files.join(workdir, "training_curves.png")
    )
    log.info("Eval report: %s", workdir_files.join(out_dir, "summary.md"))


def compare_table(reports: list[dict[str, Any]]) -> str:
    """A markdown table with one row per evaluated workdir."""
    header = (
        "| workdir | model | dataset | split | step | top-1 | top-5 | loss | macro F1 | AUC | ECE |"
    )
    rows = [header, "|" + "---|" * 11]
    for r in reports:
        auc = r["roc_auc"]["macro"]
        rows.append(
            f"| {r['workdir']} | {r['model']} | {r['dataset']} | {r['split']} | {r['step']} "
            f"| {r['accuracy']:.4f} | {r['top5_accuracy']:.4f} | {r['loss']:.4f} "
            f"| {r['precision_recall_f1']['macro']['f1']:.4f} "
            f"| {'n/a' if auc is None else f'{auc:.4f}'} | {r['ece']:.4f} |"
        )
    return "\n".join(rows)


FLAGS = flags.FlagValues()  # this tool's own, so it can be imported next to other tools
_WORKDIR = command_line.define_workdir(FLAGS)
_SPLIT = command_line.define_split(FLAGS)
_CHECKPOINT = command_line.define_checkpoint(FLAGS)
_EMA = command_line.define_ema(FLAGS)
_COMPARE = flags.DEFINE_list(
    "compare", [], "More workdirs, comma-separated, evaluated the same way.", flag_values=FLAGS
)


def _evaluate(args: list[str]) -> None:
    if args:
        raise app.UsageError(f"Unexpected arguments: {' '.join(args)}")
    from jaxvision import console

    console.setup()
    workdirs = [_WORKDIR.value, *_COMPARE.value]
    # Validate every workdir before evaluating any, so bad input writes nothing.
    datasets = {}
    for w in workdirs:
        datasets[w] = workdir_lib.load_config(w).dataset.name
        if not workdir_files.is_dir(workdir_files.checkpoints_dir(w)):
            raise workdir_lib.WorkdirError(f"{w!r} holds no checkpoints/ directory.")
    if len(set(datasets.values())) > 1:
        named = ", ".join(f"{w} ({d})" for w, d in datasets.items())
        raise workdir_lib.WorkdirError(
            f"--compare needs runs trained on one dataset; these differ: {named}. "
            "Compare runs of the same dataset, or evaluate each one alone."
        )
    reports = [
        evaluate_workdir(w, split=_SPLIT.value, checkpoint=_CHECKPOINT.value, ema=_EMA.value)
        for w in workdirs
    ]
    table = compare_table(reports)
    print(table)
    if _COMPARE.value and jax.process_index() == 0:
        first = reports[0]
        out_dir = output_dir(
            first["workdir"], first["split"], checkpoint=_CHECKPOINT.value, ema=_EMA.value
        )
        workdir_files.write_text(workdir_files.join(out_dir, "compare.md"), table + "\n")


def main(argv: list[str] | None = None) -> int:
    """Runs the command on `argv` (default: the process's); returns its exit status."""
    return command_line.run("jaxvision.evaluate", __doc__, FLAGS, _evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
