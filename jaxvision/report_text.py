"""The report's text: summary.md, the side-by-side table of runs, the feature metrics table."""

from typing import Any


def _what_was_evaluated(report: dict[str, Any]) -> str:
    """The summary's first line about the weights: a checkpoint step or a pretrained source."""
    if "pretrained" in report:
        source = report["pretrained"]
        step = f" (step {report['step']})" if report["step"] is not None else ""
        return f"Pretrained weights {source['spec']}{step}, from {source['source']}."
    ema = " (EMA weights)" if report["ema"] else ""
    return f"Checkpoint step {report['step']}{ema}."


def _classification_markdown(report: dict[str, Any]) -> list[str]:
    """The metric table and the lowest-F1 classes."""
    avg = report["precision_recall_f1"]
    auc = report["roc_auc"]["macro"]
    lines = [
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
    return lines


def features_table(features: dict[str, float]) -> str:
    """The feature evaluators' metrics as a markdown table."""
    rows = ["| feature metric | value |", "|---|---|"]
    rows += [f"| {k} | {v:.4g} |" for k, v in features.items()]
    return "\n".join(rows)


def summary_markdown(report: dict[str, Any]) -> str:
    """A short human-readable summary of a report."""
    lines = [f"# {report['model']} on {report['dataset']} ({report['split']})", ""]
    lines.append(_what_was_evaluated(report))
    if "accuracy" in report:
        lines += _classification_markdown(report)
    if "label_mismatch" in report:
        lines += ["", f"No accuracy: {report['label_mismatch']}"]
    if "feature_evals" in report:
        lines += ["", features_table(report["feature_evals"])]
    figures = ["confusion_matrix.png", "roc_curves.png", "reliability.png", "training_curves.png"]
    lines += ["", *[f"![{f[:-4]}]({f})" for f in figures if f in report["figures"]], ""]
    return "\n".join(lines)


def _compression_cells(r: dict[str, Any]) -> str:
    """The compression columns of a row: from the workdir's compression.json, else blanks."""
    c = r.get("compression")
    if not c:
        return "| - " * 6
    speed = c["img_per_s"]
    return (
        f"| {c['method']} | {c['param_bytes']['compressed']:,} | {c['param_bytes']['ratio']:.1%} "
        f"| {c['sparsity']:.1%} | {c['agreement']:.1%} "
        f"| {speed['float']:.0f} / {speed['compressed']:.0f} "
    )


def compare_table(reports: list[dict[str, Any]]) -> str:
    """A markdown table with one row per evaluated workdir; compressed workdirs add their
    method, parameter bytes, ratio to float32, sparsity, agreement with the float model and
    img/s (float / compressed) from compression.json."""
    compressed = any(r.get("compression") for r in reports)
    header = (
        "| workdir | model | dataset | split | step | top-1 | top-5 | loss | macro F1 | AUC | ECE |"
    )
    columns = 11
    if compressed:
        header += (
            " method | param bytes | ratio | sparsity | agreement | img/s float / compressed |"
        )
        columns += 6
    rows = [header, "|" + "---|" * columns]
    for r in reports:
        auc = r["roc_auc"]["macro"]
        rows.append(
            f"| {r['workdir']} | {r['model']} | {r['dataset']} | {r['split']} | {r['step']} "
            f"| {r['accuracy']:.4f} | {r['top5_accuracy']:.4f} | {r['loss']:.4f} "
            f"| {r['precision_recall_f1']['macro']['f1']:.4f} "
            f"| {'n/a' if auc is None else f'{auc:.4f}'} | {r['ece']:.4f} "
            + (_compression_cells(r) if compressed else "")
            + "|"
        )
    return "\n".join(rows)
