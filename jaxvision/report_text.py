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
