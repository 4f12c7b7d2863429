"""The training loop: init or resume, step, eval, checkpoint, log, survive interruptions."""

import contextlib
import dataclasses
import json
import signal
import threading
import time
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from jaxvision import (
    checkpoint,
    data,
    parallel,
    step_factory,
    steps,
    workdir_files,
    writers,
)
from jaxvision import config as config_lib
from jaxvision import teacher as teacher_lib
from jaxvision.console import log
from jaxvision.exit_status import Preempted, RunFailure
from jaxvision.workdir_lock import WorkdirLock

# Dataset keys that change how fast data is read, not which data: free to change on resume.
_RUNTIME_DATASET_KEYS = ("data_dir", "cache", "download", "parallel_calls", "threads")


class DivergedError(RunFailure):
    """The loss, gradient or weights became NaN/Inf; the message names the step and metric."""


def check_workdir(workdir: str) -> None:
    """Fails early when the workdir cannot hold a run."""
    if workdir_files.exists(workdir) and not workdir_files.is_dir(workdir):
        raise ValueError(
            f"--workdir {workdir!r} is a file, not a directory. Pass a new or existing directory."
        )
    workdir_files.check_checkpoint_location(workdir_files.checkpoints_dir(workdir))


def with_pretrained_overrides(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` plus the model overrides its `pretrained` file needs and the config leaves
    unset (timm ViTs: the exact GELU), so that config.json records the model really run."""
    if not config.pretrained:
        return config
    from jaxvision.models import pretrained_source

    resolved = pretrained_source.resolve(config.pretrained, config.model.name)
    # The data decides the resolution of a fine-tune, not the checkpoint.
    wanted = {k: v for k, v in resolved.overrides().items() if k != "image_size"}
    extra = {k: v for k, v in wanted.items() if k not in config.model}
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.model.update(extra)
        record = resolved.record()
        config.pretrained_resolved = " ".join(f"{k}={v}" for k, v in record.items())
    if extra:
        log.info("For %s: model overrides %s.", config.pretrained, extra)
    return config


def evaluate(
    eval_fn, state: steps.TrainState, eval_data: data.EvalData, prefix: str = "eval"
) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy over the whole eval split (each example once)."""
    totals = None
    for batch in eval_data:
        out = eval_fn(state, batch)
        totals = out if totals is None else jax.tree.map(lambda a, b: a + b, totals, out)
    totals = jax.device_get(totals)
    count = float(totals["count"])
    return {
        f"{prefix}/loss": float(totals["loss_sum"]) / count,
        f"{prefix}/accuracy": float(totals["correct"]) / count,
        f"{prefix}/accuracy_top5": float(totals["correct_top5"]) / count,
        f"{prefix}/num_examples": count,
    }


def config_record(config: ml_collections.ConfigDict) -> dict:
    """The config as plain JSON data (what config.json and checkpoint metadata hold)."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def resume_differences(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
    """Model and data settings that differ between a checkpoint's config and `config`."""
    now = config_record(config)
    diffs = []
    for section in ("model", "dataset"):
        old, new = saved.get(section, {}), now[section]
        for key in sorted(set(old) | set(new)):
            if section == "dataset" and key in _RUNTIME_DATASET_KEYS:
                continue
            if old.get(key, "<unset>") != new.get(key, "<unset>"):
                was, is_ = old.get(key, "<unset>"), new.get(key, "<unset>")
                diffs.append(f"{section}.{key}: checkpoint {was!r}, now {is_!r}")
    return diffs


def _prepare_data(config: ml_collections.ConfigDict) -> data.DataInfo:
    """Process 0 prepares the dataset first; the others wait, then open what it wrote."""
    if jax.process_index() == 0:
        info = data.prepare(config)
    parallel.barrier("jaxvision_data_prepared")
    if jax.process_index() != 0:
        info = data.prepare(config)
    return info


@dataclasses.dataclass
class _Setup:
    """Everything the loop needs, built once from the config."""

    config: ml_collections.ConfigDict
    info: data.DataInfo
    model: nn.Module
    total_steps: int
    mesh: Any
    abstract_state: Any  # shapes, dtypes and shardings: what a restore reads into
    init_fn: Any
    reinit_fn: Any  # (state, params, batch_stats) -> state with fresh optimizer state
    train_fn: Any
    eval_fns: dict[str, Any]  # metric prefix -> jitted eval step
    teacher_eval_fn: Any = None  # distillation: student-teacher agreement sums


def _build(config: ml_collections.ConfigDict) -> _Setup:
    info = _prepare_data(config)
    teacher = None
    if config.distill.loss != "none":
        teacher = teacher_lib.load(config, info.num_classes, info.image_shape)
        config = teacher_lib.with_record(config, teacher)
        log.info("Teacher %s from %s.", teacher.model.__class__.__name__, teacher.record())
    built = step_factory.build(
        config,
        num_classes=info.num_classes,
        image_shape=info.image_shape,
        num_train_examples=info.num_train,
        teacher=teacher,
    )
    return _Setup(
        config,
        info,
        built.model,
        built.total_steps,
        built.mesh,
        built.abstract_state,
        built.init_fn,
        built.reinit_fn,
        built.train_fn,
        built.eval_fns,
        built.teacher_eval_fn,
    )


def _restore_or_init(
    s: _Setup, ckpts: checkpoint.Checkpoints, workdir: str
) -> tuple[steps.TrainState, int]:
    """The latest intact checkpoint if the config still fits it, else a fresh state."""
    latest = ckpts.latest_step()
    if latest is not None:
        try:
            saved = ckpts.read_meta(latest).get("config", {})
        except Exception:  # unreadable metadata: restore_latest reports the damage
            saved = {}
        _refuse_or_warn(
            resume_differences(saved, s.config) if saved else [],
            s.config.force_resume,
            f"{workdir} holds a run with a different model or data config",
            "Use a fresh --workdir, or --config.force_resume=True to resume anyway.",
            "Resuming despite config changes: %s",
        )
        _refuse_or_warn(
            teacher_lib.resume_differences(saved, s.config) if saved else [],
            s.config.distill.force_teacher,
            f"{workdir} was distilled from another teacher or loss",
            "Use a fresh --workdir, or --config.distill.force_teacher=True to resume.",
            "Resuming with another teacher: %s",
        )
    restored = ckpts.restore_latest(s.abstract_state)
    if restored is None:
        state = s.init_fn()
        if s.config.pretrained:
            state = _load_pretrained(s, state)
        return state, 0
    state, _, step = restored
    log.info("Resumed from %s at step %d.", ckpts.directory, step)
    return state, step


def _load_pretrained(s: _Setup, state: steps.TrainState) -> steps.TrainState:
    """Starts a new run from `config.pretrained` weights (head re-initialised if it differs)."""
    from jaxvision.models import pretrained_source

    path = s.config.pretrained
    resolved = pretrained_source.resolve(path, s.config.model.name)
    variables = pretrained_source.load(
        resolved, s.model, image_shape=s.info.image_shape, rng=jax.random.PRNGKey(s.config.seed)
    )
    log.info("Initialised from %s (%s).", path, s.config.pretrained_resolved)
    batch_stats = variables.get("batch_stats", state.batch_stats)
    return s.reinit_fn(state, variables["params"], batch_stats)


class _StopRequest:
    """SIGTERM/SIGINT set a flag; the loop saves at the current step and returns."""

    def __init__(self):
        self.signal_name = ""
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name
        # A second signal falls through to the previous behaviour (e.g. KeyboardInterrupt).
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self, step: int, every: int) -> bool:
        """Whether to stop now; with several processes they agree every `every` steps."""
        if jax.process_count() == 1:
            return bool(self.signal_name)
        return step % every == 0 and parallel.any_process(bool(self.signal_name))


def check_finite(records: list[tuple[int, dict]], on_nonfinite: str) -> int:
    """Raises DivergedError at the first NaN/Inf step ("stop"); returns skipped ("skip").

    Weights that became NaN/Inf (`param_norm`) stop the run in either mode: a skipped step
    keeps the old weights only when its loss or gradient was the non-finite one.
    """
    skipped = 0
    for step, metrics in records:
        bad = [k for k in ("loss", "grad_norm") if not np.isfinite(metrics[k])]
        weights_bad = "param_norm" in metrics and not np.isfinite(metrics["param_norm"])
        if not bad and not metrics["nonfinite"] and not weights_bad:
            continue
        if on_nonfinite == "skip" and not weights_bad:
            skipped += 1
            continue
        bad += ["param_norm"] if weights_bad and not metrics["nonfinite"] else []
        raise DivergedError(
            f"Training diverged at step {step}: "
            + ", ".join(f"train/{k} = {metrics[k]}" for k in bad or ["loss"])
            + ". The last good checkpoint is kept. Lower optimizer.learning_rate, set "
            "optimizer.grad_clip_norm"
            + (", or --config.on_nonfinite=skip to skip such steps." if not weights_bad else ".")
        )
    return skipped


class _Loop:
    """The step loop's bookkeeping: pending metrics, logging, eval, checkpoints, summary."""

    def __init__(self, s: _Setup, ckpts, writer, start_step: int):
        self.s, self.ckpts, self.writer = s, ckpts, writer
        self.progress = writers.Progress(s.total_steps, start_step, s.config.batch_size)
        self.pending: list[tuple[int, dict]] = []
        self.start_step = start_step
        self.best: tuple[float, int] | None = None
        self.final: dict[str, float] = {}
        self.skipped = 0  # steps skipped by this process (on_nonfinite=skip)

    def fetch(self) -> list[tuple[int, dict]]:
        """Pending per-step metrics on the host, checked for NaN/Inf."""
        fetched = [(step, jax.device_get(m)) for step, m in self.pending]
        skipped = check_finite(fetched, self.s.config.on_nonfinite)
        if skipped:
            log.warning("Skipped %d steps with a NaN/Inf loss or gradient.", skipped)
            self.skipped += skipped
        return fetched

    def check_skipped(self, step: int) -> None:
        """Fails the run once more than `max_skipped_share` of its steps were skipped."""
        share = self.skipped / max(step - self.start_step, 1)
        if self.skipped and share > self.s.config.max_skipped_share:
            raise DivergedError(
                f"{self.skipped} of the {step - self.start_step} steps up to step {step} had a "
                f"NaN/Inf loss or gradient and were skipped ({share:.0%}, more than "
                f"max_skipped_share={self.s.config.max_skipped_share}). The last good "
                "checkpoint is kept. Lower optimizer.learning_rate or set "
                "optimizer.grad_clip_norm."
            )

    def log_train(self, step: int) -> None:
        fetched = self.fetch()
        self.pending = []
        keys = [k for k in fetched[0][1] if k != "nonfinite"]
        scalars = {f"train/{k}": float(np.mean([m[k] for _, m in fetched])) for k in keys}
        if self.s.config.on_nonfinite == "skip":
            scalars["train/skipped_steps"] = float(sum(m["nonfinite"] for _, m in fetched))
        img_per_s, step_time = self.progress.rate(step)
        scalars["train/img_per_s"] = img_per_s
        scalars["train/step_ms"] = step_time * 1e3
        scalars.update(writers.device_memory())
        self.writer.write(step, scalars)
        shown = ("train/loss", "train/accuracy", "train/learning_rate")
        self.progress.line(step, {k: scalars[k] for k in shown}, img_per_s)

    def evaluate(self, state, step: int, eval_data) -> None:
        self.progress.clear()
        for prefix, eval_fn in self.s.eval_fns.items():
            result = evaluate(eval_fn, state, eval_data, prefix)
            self.writer.write(step, result)
            self.final.update(result)
            log.info(
                "step %d: %s accuracy %.4f, loss %.4f",
                step,
                prefix,
                result[f"{prefix}/accuracy"],
                result[f"{prefix}/loss"],
            )
            accuracy = result[f"{prefix}/accuracy"]
            if self.best is None or accuracy > self.best[0]:
                self.best = (accuracy, step)
        if self.s.teacher_eval_fn is not None:
            self.teacher_metrics(state, step, eval_data, "eval/teacher_agreement")
        if self.s.config.evals:
            self.writer.write(step, self._feature_evals(state))

    def teacher_metrics(self, state, step: int, eval_data, key: str) -> None:
        """Logs `key` (student-teacher agreement, or the teacher's own eval accuracy)."""
        from jaxvision import distill

        value = distill.evaluate(self.s.teacher_eval_fn, state, eval_data)[key]
        self.writer.write(step, {key: value})
        self.final[key] = value
        log.info("step %d: %s %.4f", step, key, value)

    def _feature_evals(self, state) -> dict[str, float]:
        """`config.evals`: linear probe / k-shot accuracy of the current frozen features."""
        from jaxvision import feature_eval

        s = self.s
        variables = {"params": state.params}
        if state.batch_stats:
            variables["batch_stats"] = state.batch_stats
        norm = feature_eval.normalization_of(s.info.spec.eval_pp)
        shape = s.info.image_shape
        evals = tuple(s.config.evals)
        return feature_eval.evaluate_model(s.model, variables, s.config, evals, shape, norm, s.mesh)

    def save(self, state, step: int) -> None:
        self.fetch()  # never checkpoint a diverged state
        self.check_skipped(step)
        if not checkpoint.all_finite((state.params, state.batch_stats)):
            raise DivergedError(
                f"The weights hold NaN/Inf at step {step}; they were not saved and the last "
                "good checkpoint is kept. Lower optimizer.learning_rate or set "
                "optimizer.grad_clip_norm."
            )
        meta = {"step": step, "dataset": self.s.info.spec.name}
        self.ckpts.save(step, state, {**meta, "config": config_record(self.s.config)})

    def summary(self, step: int, seconds: float) -> dict[str, float]:
        images = (step - self.start_step) * self.s.config.batch_size
        out = {
            **self.final,
            "train/wall_seconds": seconds,
            "train/mean_img_per_s": images / max(seconds, 1e-9),
        }
        best = f"best eval accuracy {self.best[0]:.4f} at step {self.best[1]}" if self.best else ""
        log.info(
            "Done: step %d/%d in %.1f s, %.0f img/s%s.",
            step,
            self.s.total_steps,
            seconds,
            out["train/mean_img_per_s"],
            f", {best}" if best else "",
        )
        if self.best:
            out["eval/best_accuracy"], out["eval/best_step"] = self.best[0], float(self.best[1])
        return out


def _train(s: _Setup, state, loop: _Loop, stop: _StopRequest) -> tuple[Any, int]:
    """Runs the steps; returns the last state and step (earlier if a stop was requested)."""
    config = s.config
    eval_data = data.eval_batches(config, s.info, s.mesh)
    batches = data.train_batches(config, s.info, s.mesh, loop.start_step)
    step = loop.start_step
    if s.teacher_eval_fn is not None:  # once at the start: what the teacher itself scores
        loop.teacher_metrics(state, step, eval_data, "eval/teacher_accuracy")
    for step in range(loop.start_step + 1, s.total_steps + 1):
        state, metrics = s.train_fn(state, next(batches))
        loop.pending.append((step, metrics))
        last = step == s.total_steps
        stopping = stop.requested(step, config.log_every_steps)
        if step % config.log_every_steps == 0 or last or stopping:
            loop.log_train(step)
        if (config.eval_every_steps and step % config.eval_every_steps == 0) or last:
            loop.evaluate(state, step, eval_data)
        if step % config.checkpoint_every_steps == 0 or last or stopping:
            loop.save(state, step)
        if stopping:
            log.warning(
                "%s received: saved a checkpoint at step %d; stopping.", stop.signal_name, step
            )
            break
    return state, step


def _workdir_lock(workdir: str):
    """The workdir's writer lock, taken by process 0 (the others share its run)."""
    if jax.process_index() != 0:
        return contextlib.nullcontext()
    return WorkdirLock(workdir)


def _refuse_or_warn(diffs: list[str], forced: bool, what: str, remedy: str, warning: str):
    """Refuses to resume over `diffs` (bad input) unless `forced`, which only warns."""
    if diffs and not forced:
        raise ValueError(f"{what}:\n  " + "\n  ".join(diffs) + f"\n{remedy}")
    if diffs:
        log.warning(warning, "; ".join(diffs))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains `config` in `workdir`, resuming from its latest checkpoint; returns final metrics.

    Raises `exit_status.Preempted` after saving when stopped by SIGTERM/SIGINT,
    `workdir_lock.WorkdirBusy` when another run trains in `workdir`, and RunFailure
    (DivergedError, CheckpointError) when training or a checkpoint fails.
    """
    check_workdir(workdir)
    parallel.set_cpu_devices(config.parallel.cpu_devices)
    config_lib.validate(config, num_devices=jax.device_count(), num_processes=jax.process_count())
    config = with_pretrained_overrides(config)
    # Built before the workdir exists: a config the data or schedule rejects leaves nothing.
    s = _build(config)
    workdir_files.makedirs(workdir)
    with _workdir_lock(workdir):
        return _run_locked(s, s.config, workdir)


def _run_locked(s: _Setup, config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    ckpts = checkpoint.Checkpoints(
        workdir_files.checkpoints_dir(workdir), keep=config.keep_checkpoints
    )
    try:
        state, start_step = _restore_or_init(s, ckpts, workdir)
        if jax.process_index() == 0:
            workdir_files.write_text(
                workdir_files.join(workdir, "config.json"),
                config.to_json_best_effort(indent=2, sort_keys=True) + "\n",
            )
        writer = writers.MetricWriter(workdir, resume_step=start_step)
        log.info(
            "Training %s on %s: %d steps of %d images on %d devices (%d processes)%s.",
            config.model.name,
            s.info.spec.name,
            s.total_steps,
            config.batch_size,
            jax.device_count(),
            jax.process_count(),
            ", FSDP" if config.parallel.fsdp else "",
        )
        loop = _Loop(s, ckpts, writer, start_step)
        start_time = time.perf_counter()
        with _StopRequest() as stop:
            state, step = _train(s, state, loop, stop)
        result = loop.summary(step, time.perf_counter() - start_time)
    finally:
        ckpts.close()  # pending saves finish even when the run fails
    writer.close()
    if stop.signal_name:
        raise Preempted(stop.signal_name, step)
    # Imported here: plotting libraries load only at the very end.
    from jaxvision.evaluate import after_training

    after_training(workdir, s.config, s.info, s.model, state)
    return result
