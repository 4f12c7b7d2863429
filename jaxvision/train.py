"""The training loop: init or resume, step, eval, checkpoint, log."""

import functools
import math
import os
import time

import jax
import ml_collections
import numpy as np

from jaxvision import checkpoint, data, models, optim, parallel, steps, writers
from jaxvision import config as config_lib
from jaxvision.console import log


def check_workdir(workdir: str) -> None:
    """Fails early when the workdir cannot hold a run."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(
            f"--workdir {workdir!r} is a file, not a directory. Pass a new or existing directory."
        )


def num_train_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
    """`num_train_steps`, or `num_epochs` converted to steps at the global batch size."""
    if config.num_train_steps > 0:
        return config.num_train_steps
    return max(1, math.ceil(config.num_epochs * num_train_examples / config.batch_size))


def create_model(config: ml_collections.ConfigDict, num_classes: int):
    """The registered model named by `config.model.name` with its overrides."""
    overrides = {k: v for k, v in config.model.items() if k != "name"}
    return models.create(config.model.name, num_classes=num_classes, **overrides)


def evaluate(eval_fn, state: steps.TrainState, eval_data: data.EvalData) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy over the whole eval split (each example once)."""
    totals = None
    for batch in eval_data:
        out = eval_fn(state, batch)
        totals = out if totals is None else jax.tree.map(lambda a, b: a + b, totals, out)
    totals = jax.device_get(totals)
    count = float(totals["count"])
    return {
        "eval/loss": float(totals["loss_sum"]) / count,
        "eval/accuracy": float(totals["correct"]) / count,
        "eval/accuracy_top5": float(totals["correct_top5"]) / count,
        "eval/num_examples": count,
    }


def _save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains `config` in `workdir`, resuming from its latest checkpoint; returns final metrics."""
    check_workdir(workdir)
    config_lib.validate(config, num_devices=jax.device_count(), num_processes=jax.process_count())
    info = data.prepare(config)
    model = create_model(config, info.num_classes)
    total_steps = num_train_steps(config, info.num_train)
    tx = optim.build(config, total_steps)
    lr_fn = optim.learning_rate_schedule(config, total_steps)

    os.makedirs(workdir, exist_ok=True)
    _save_config(config, workdir)
    mesh = parallel.make_mesh()
    replicated = parallel.replicated(mesh)
    batch_sharding = parallel.batch_sharding(mesh)
    init = jax.jit(
        functools.partial(steps.init_state, model, tx, config.seed, info.image_shape),
        out_shardings=replicated,
    )
    state = init()
    ckpts = checkpoint.Checkpoints(
        os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints
    )
    start_step = ckpts.latest_step() or 0
    if start_step:
        state, _ = ckpts.restore(start_step, state)
        log.info("Resumed from %s at step %d.", ckpts.directory, start_step)

    train_fn = jax.jit(
        functools.partial(steps.train_step, model=model, tx=tx, learning_rate_fn=lr_fn),
        in_shardings=(replicated, batch_sharding),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )
    eval_fn = jax.jit(
        functools.partial(steps.eval_step, model=model),
        in_shardings=(replicated, batch_sharding),
        out_shardings=replicated,
    )
    eval_data = data.eval_batches(config, info, mesh)
    writer = writers.MetricWriter(workdir, resume_step=start_step)
    progress = writers.Progress(total_steps, start_step, config.batch_size)
    batches = data.train_batches(config, info, mesh, start_step)
    log.info(
        "Training %s on %s: %d steps of %d images on %d devices (%d processes).",
        config.model.name,
        info.spec.name,
        total_steps,
        config.batch_size,
        jax.device_count(),
        jax.process_count(),
    )

    pending = []  # device metrics, fetched at log time so the loop never waits on the host
    final = {}
    start_time = time.perf_counter()
    for step in range(start_step + 1, total_steps + 1):
        state, metrics = train_fn(state, next(batches))
        pending.append(metrics)
        last = step == total_steps
        if step % config.log_every_steps == 0 or last:
            fetched = jax.device_get(pending)
            pending = []
            scalars = {f"train/{k}": float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
            img_per_s, step_time = progress.rate(step)
            scalars["train/img_per_s"] = img_per_s
            scalars["train/step_ms"] = step_time * 1e3
            writer.write(step, scalars)
            progress.line(
                step, {k: scalars[k] for k in ("train/loss", "train/learning_rate")}, img_per_s
            )
        if (config.eval_every_steps and step % config.eval_every_steps == 0) or last:
            final = evaluate(eval_fn, state, eval_data)
            writer.write(step, final)
            log.info(
                "step %d: eval accuracy %.4f, loss %.4f",
                step,
                final["eval/accuracy"],
                final["eval/loss"],
            )
        if step % config.checkpoint_every_steps == 0 or last:
            ckpts.save(step, state, {"step": step, "dataset": info.spec.name})
    ckpts.close()
    writer.close()
    final["train/wall_seconds"] = time.perf_counter() - start_time
    if jax.process_index() == 0:
        # Imported here: plotting libraries load only at the very end.
        from jaxvision.evaluate import after_training

        after_training(workdir, config, info, model, state)
    return final
