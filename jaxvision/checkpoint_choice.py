"""Which checkpoint of a workdir to read: latest, best (by logged eval accuracy) or a step."""

import json

from jaxvision import checkpoint, workdir_files


class WorkdirError(ValueError):
    """A workdir cannot be used as asked; the message says why and what to do."""


def metrics_records(workdir: str) -> list[dict[str, float]]:
    """Every line of the run's `metrics.jsonl` (empty if it has none)."""
    path = workdir_files.join(workdir, "metrics.jsonl")
    if not workdir_files.is_file(path):
        return []
    return [json.loads(line) for line in workdir_files.lines(path) if line.strip()]


def _best_step(workdir: str, available: list[int]) -> int:
    accuracy = {
        int(r["step"]): r["eval/accuracy"] for r in metrics_records(workdir) if "eval/accuracy" in r
    }
    scored = [s for s in available if s in accuracy]
    if not scored:
        raise WorkdirError(
            f"--checkpoint=best needs eval/accuracy logged at a kept checkpoint step; "
            f"{workdir}/metrics.jsonl has none for steps {available}. Use latest or a step."
        )
    return max(scored, key=lambda s: (accuracy[s], s))


def choose_step(workdir: str, ckpts: checkpoint.Checkpoints, which: str) -> int:
    """Resolves "latest", "best" (highest logged eval accuracy) or a step number."""
    available = ckpts.all_steps()
    if not available:
        raise WorkdirError(
            f"No finished checkpoint in {ckpts.directory}. Train (or resume) the run first."
        )
    if which == "latest":
        return available[-1]
    if which == "best":
        return _best_step(workdir, available)
    try:
        step = int(which)
    except ValueError:
        raise WorkdirError(f"--checkpoint={which!r}: use latest, best or a step number.") from None
    if step not in available:
        raise WorkdirError(
            f"No checkpoint at step {step} in {ckpts.directory}; available steps: {available}."
        )
    return step
