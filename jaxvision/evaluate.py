"""Evaluate a trained run: python -m jaxvision.evaluate --workdir=DIR [--split=test] ...

Writes DIR/eval/<split>/report.json (every metric of `jaxvision.metrics`),
predictions.npz (labels and logits per example), PNGs (confusion matrix, ROC curves,
reliability diagram, training curves) and summary.md. `--compare=DIR2,DIR3` evaluates
further workdirs the same way and prints one side-by-side table (ablations).

`--pretrained=SOURCE --dataset=NAME [--workdir=OUT]` evaluates weights without a run of
their own (a catalog name, hub file, URL, file or another workdir) and writes the same
report into OUT/eval/<split>; weights whose classes are not the dataset's get no accuracy
(bad input, unless feature evaluators are asked). `--evals=linear_probe,fewshot[:DATASET]`
adds the frozen-feature metrics training logs for `config.evals`, named alike.
"""

import json
import os
import re
import sys
from typing import Any

import jax
import numpy as np
from absl import app, flags

from jaxvision import (
    command_line,
    data,
    feature_eval,
    metrics,
    parallel,
    plots,
    pretrained_run,
    report_text,
    split_inference,
    workdir_files,
)
from jaxvision import workdir as workdir_lib
from jaxvision.console import log
from jaxvision.models import pretrained_source


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
    run: workdir_lib.LoadedRun,
    split: str,
    labels: np.ndarray | None,
    logits: np.ndarray | None,
    features: dict[str, float] | None = None,
    **meta: Any,
) -> dict[str, Any]:
    """Metrics plus what was evaluated and what training logged for that checkpoint.

    Without `labels` (weights whose classes are not the dataset's) only `features`."""
    trained_here = run.workdir and "pretrained" not in meta
    report = {
        "workdir": run.workdir,
        "model": run.config.model.name,
        "dataset": run.info.spec.name,
        "split": split,
        "step": run.step,
        "ema": run.ema,
        **meta,
        "training_logged": logged_eval(run.workdir, run.step) if trained_here else {},
    }
    if labels is not None:
        report.update(metrics.classification_report(labels, logits, run.class_names))
    if features:
        # Named as training logs `config.evals`: features/<dataset>/<metric>.
        report["feature_evals"] = features
    return report


def _figures(
    out_dir: str, report: dict[str, Any], labels: np.ndarray, logits: np.ndarray
) -> list[str | None]:
    """The PNGs of a report with classification metrics."""
    probs = metrics.softmax(logits)
    names = [row["name"] for row in report["per_class"]]
    trained_here = report["workdir"] and "pretrained" not in report
    records = workdir_lib.metrics_records(report["workdir"]) if trained_here else []
    return [
        plots.confusion_matrix(
            report["confusion_matrix"], names, workdir_files.join(out_dir, "confusion_matrix.png")
        ),
        plots.roc_curves(labels, probs, names, workdir_files.join(out_dir, "roc_curves.png")),
        plots.reliability_diagram(
            report["calibration"], report["ece"], workdir_files.join(out_dir, "reliability.png")
        ),
        plots.training_curves(records, workdir_files.join(out_dir, "training_curves.png")),
    ]


def write_report(
    out_dir: str,
    report: dict[str, Any],
    labels: np.ndarray | None,
    logits: np.ndarray | None,
) -> dict[str, Any]:
    """Writes report.json, predictions.npz, the PNGs and summary.md into `out_dir` (only
    report.json and summary.md without predictions)."""
    workdir_files.makedirs(out_dir)
    figures = _figures(out_dir, report, labels, logits) if labels is not None else []
    report["figures"] = [os.path.basename(f) for f in figures if f]
    if labels is not None:
        workdir_files.write_with(
            workdir_files.join(out_dir, "predictions.npz"),
            lambda buffer: np.savez_compressed(buffer, labels=labels, logits=logits),
        )
    workdir_files.write_text(
        workdir_files.join(out_dir, "report.json"), json.dumps(report, indent=2) + "\n"
    )
    workdir_files.write_text(
        workdir_files.join(out_dir, "summary.md"), report_text.summary_markdown(report)
    )
    return report


def report_on(
    run: workdir_lib.LoadedRun,
    split: str | None,
    mesh: Any,
    *,
    out_dir: str | None,
    evals: tuple[str, ...] = (),
    norm: str = "",
    classify: bool = True,
    **meta: Any,
) -> dict[str, Any]:
    """Evaluates `run` on `split` (and its frozen features for `evals`) and writes the report
    into `out_dir` (none: only returned). Every process must call it; process 0 writes."""
    split = split or run.info.spec.eval_split
    norm = norm or feature_eval.normalization_of(run.info.spec.eval_pp)
    if evals:  # every probe dataset readable before anything compiles
        feature_eval.check_datasets(run.config, evals, run.info.image_shape, norm)
    labels = logits = None
    if classify:
        try:
            eval_data = data.eval_batches(run.config, run.info, mesh, split=split)
        except (KeyError, ValueError) as e:
            raise workdir_lib.WorkdirError(
                f"--split={split!r} is not usable for {run.info.spec.name}: {e}"
            ) from e
        labels, logits = split_inference.forward_split(run.model, run.variables, eval_data, mesh)
    features = {}
    if evals:
        shape = run.info.image_shape
        features = feature_eval.evaluate_model(
            run.model, run.variables, run.config, evals, shape, norm, mesh
        )
    report = build_report(run, split, labels, logits, features, **meta)
    if jax.process_index() == 0 and out_dir:
        write_report(out_dir, report, labels, logits)
        top1 = f" (top-1 {report['accuracy']:.4f})" if "accuracy" in report else ""
        log.info("Wrote %s%s.", workdir_files.join(out_dir, "report.json"), top1)
    return report


def evaluate_workdir(
    workdir: str,
    *,
    split: str | None = None,
    checkpoint: str = "latest",
    ema: bool = False,
    evals: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Restores a checkpoint of `workdir`, evaluates it on `split` and writes the report."""
    mesh = parallel.make_mesh()
    run = workdir_lib.load(workdir, checkpoint_step=checkpoint, ema=ema, mesh=mesh)
    split = split or run.info.spec.eval_split
    out_dir = output_dir(run.workdir, split, checkpoint=checkpoint, ema=ema)
    meta: dict[str, Any] = {"checkpoint": checkpoint}
    compression = compression_record(run.workdir)
    if compression:
        meta["compression"] = compression
    return report_on(run, split, mesh, out_dir=out_dir, evals=evals, **meta)


def compression_record(workdir: str) -> dict[str, Any] | None:
    """What `python -m jaxvision.compress` measured for a compressed workdir (its
    compression.json: bytes, ratio, sparsity, agreement, img/s), else None."""
    path = workdir_files.join(workdir, "compression.json")
    if not workdir_files.exists(path):
        return None
    record = json.loads(workdir_files.read_text(path))
    keys = ("method", "param_bytes", "sparsity", "agreement", "float_top1", "img_per_s")
    return {k: record[k] for k in keys if k in record}


def evaluate_pretrained(
    spec: str,
    dataset: str,
    *,
    split: str | None = None,
    out: str | None = None,
    model_name: str | None = None,
    norm: str = "",
    evals: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Evaluates the weights `spec` names (catalog name, hub file, URL, file or workdir) on
    `dataset`; the report goes to OUT/eval/<split> (none without `out`)."""
    if out and pretrained_source.is_workdir(out):
        raise workdir_lib.WorkdirError(
            f"--workdir={out} is a training run's workdir; with --pretrained it only names "
            "where the report goes. Give a new directory, or evaluate that run with "
            "--workdir alone."
        )
    mesh = parallel.make_mesh()
    got = pretrained_run.load(
        spec, dataset, model_name=model_name, norm=norm, out_dir=out, mesh=mesh, evals=evals
    )
    split = split or got.run.info.spec.eval_split
    meta: dict[str, Any] = {"pretrained": {"spec": spec, **got.record}}
    if got.mismatch:
        meta["label_mismatch"] = got.mismatch
    out_dir = output_dir(out, split) if out else None
    classify = not got.mismatch
    return report_on(
        got.run, split, mesh, out_dir=out_dir, evals=evals, norm=got.norm, classify=classify, **meta
    )


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
    out_dir = output_dir(run.workdir, split)
    report_on(run, split, mesh, out_dir=out_dir, checkpoint="latest")
    if jax.process_index() != 0:
        return
    plots.training_curves(
        workdir_lib.metrics_records(workdir), workdir_files.join(workdir, "training_curves.png")
    )
    log.info("Eval report: %s", workdir_files.join(out_dir, "summary.md"))


FLAGS = flags.FlagValues()  # this tool's own, so it can be imported next to other tools
_WORKDIR = command_line.define_workdir(FLAGS, required=False)
_SPLIT = command_line.define_split(FLAGS)
_CHECKPOINT = command_line.define_checkpoint(FLAGS)
_EMA = command_line.define_ema(FLAGS)
_COMPARE = flags.DEFINE_list(
    "compare", [], "More workdirs, comma-separated, evaluated the same way.", flag_values=FLAGS
)
_PRETRAINED = flags.DEFINE_string(
    "pretrained",
    None,
    "Evaluate these weights instead of a run: a catalog name (python -m jaxvision.models "
    "--pretrained), hf-hub:ORG/REPO[/FILE], a URL, a weights file or another workdir. Needs "
    "--dataset; --workdir then names where the report goes (OUT/eval/<split>).",
    flag_values=FLAGS,
)
_DATASET = flags.DEFINE_string(
    "dataset", None, "With --pretrained: the dataset to evaluate on.", flag_values=FLAGS
)
_MODEL = flags.DEFINE_string(
    "model",
    None,
    "With --pretrained of a file, URL or hub file: the registered model it holds.",
    flag_values=FLAGS,
)
_NORM = flags.DEFINE_string(
    "norm",
    "",
    "With --pretrained: the normalisation op the weights expect (default: the catalog's, the "
    "workdir's, else value_range(-1,1)).",
    flag_values=FLAGS,
)
_EVALS = flags.DEFINE_list(
    "evals",
    [],
    "Feature evaluators on the frozen pre-logits, as config.evals: linear_probe and fewshot, "
    "each optionally :DATASET (default: the evaluated dataset), e.g. linear_probe,fewshot:digits.",
    flag_values=FLAGS,
)


def _check_workdirs(workdirs: list[str]) -> None:
    """Every workdir usable and trained on one dataset, before evaluating any."""
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
    evals = tuple(_EVALS.value)
    if evals:
        feature_eval.parse_evals(evals, datasets[workdirs[0]])


def _check_pretrained_flags() -> None:
    """--pretrained goes with --dataset and without the flags that choose a run's checkpoint."""
    if not _DATASET.value:
        raise app.UsageError("--pretrained needs --dataset=NAME (the dataset to evaluate on).")
    given = [
        name
        for name, default in (("compare", []), ("checkpoint", "latest"), ("ema", False))
        if FLAGS[name].value != default
    ]
    if given:
        raise app.UsageError(
            f"--{', --'.join(given)} choose among a run's checkpoints; with --pretrained the "
            "weights are the source's (a workdir: its best checkpoint, else its latest)."
        )
    feature_eval.parse_evals(tuple(_EVALS.value), _DATASET.value)


def _evaluate(args: list[str]) -> None:
    if args:
        raise app.UsageError(f"Unexpected arguments: {' '.join(args)}")
    from jaxvision import console

    console.setup()
    evals = tuple(_EVALS.value)
    if _PRETRAINED.value:
        _check_pretrained_flags()
        report = evaluate_pretrained(
            _PRETRAINED.value,
            _DATASET.value,
            split=_SPLIT.value,
            out=_WORKDIR.value,
            model_name=_MODEL.value,
            norm=_NORM.value,
            evals=evals,
        )
        _print_tables([report])
        return
    if not _WORKDIR.value:
        raise app.UsageError("Pass --workdir=DIR (a training run) or --pretrained=SOURCE.")
    for name in ("dataset", "model", "norm"):
        if FLAGS[name].value:
            raise app.UsageError(
                f"--{name} goes with --pretrained; to evaluate a run on another dataset, pass "
                "--pretrained=DIR --dataset=NAME."
            )
    workdirs = [_WORKDIR.value, *_COMPARE.value]
    _check_workdirs(workdirs)  # bad input writes nothing
    reports = [
        evaluate_workdir(
            w, split=_SPLIT.value, checkpoint=_CHECKPOINT.value, ema=_EMA.value, evals=evals
        )
        for w in workdirs
    ]
    table = _print_tables(reports)
    if _COMPARE.value and jax.process_index() == 0:
        first = reports[0]
        out_dir = output_dir(
            first["workdir"], first["split"], checkpoint=_CHECKPOINT.value, ema=_EMA.value
        )
        workdir_files.write_text(workdir_files.join(out_dir, "compare.md"), table + "\n")


def _print_tables(reports: list[dict[str, Any]]) -> str:
    """Prints the comparison table (of reports with an accuracy) and any feature metrics."""
    classified = [r for r in reports if "accuracy" in r]
    table = report_text.compare_table(classified) if classified else ""
    if table:
        print(table)
    for r in reports:
        if "label_mismatch" in r:
            print(f"No accuracy: {r['label_mismatch']}")
        if "feature_evals" in r:
            print(report_text.features_table(r["feature_evals"]))
    return table


def main(argv: list[str] | None = None) -> int:
    """Runs the command on `argv` (default: the process's); returns its exit status."""
    return command_line.run("jaxvision.evaluate", __doc__, FLAGS, _evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
