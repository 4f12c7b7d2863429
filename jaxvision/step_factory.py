"""One way to build a run's steps from a config: model, optimizer, shardings, jitted steps.

`train`, `benchmark`, `workdir` (evaluate, predict, export) and the tests all call `build`,
so the step that is measured is the step that trains. Extensions (a teacher, compressed
parameters) pass their own `train_step` with the same (state, batch) signature.
"""

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxvision import backend, models, optim, parallel, steps
from jaxvision.compression import pruning


def num_train_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
    """`num_train_steps`, or `num_epochs` converted to steps at the global batch size."""
    if config.num_train_steps > 0:
        return config.num_train_steps
    return max(1, math.ceil(config.num_epochs * num_train_examples / config.batch_size))


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """The registered model named by `config.model.name` with its overrides and compute dtype."""
    overrides = {k: v for k, v in config.model.items() if k != "name"}
    if config.compute_dtype == "bfloat16":
        # Parameters stay float32 (the master weights); activations and matmuls run in bf16.
        overrides.setdefault("dtype", jnp.bfloat16)
    return models.create(config.model.name, num_classes=num_classes, **overrides)


@dataclasses.dataclass(frozen=True)
class Steps:
    """A config's model and its jitted steps, with the shardings they expect."""

    model: nn.Module
    tx: optax.GradientTransformation
    learning_rate_fn: optax.Schedule
    total_steps: int
    mesh: Any
    state_sharding: Any
    batch_sharding: Any
    abstract_state: Any  # shapes, dtypes and shardings: what a restore reads into
    init_fn: Callable[[], steps.TrainState]
    reinit_fn: Callable  # (state, params, batch_stats) -> state with fresh optimizer state
    train_fn: Callable  # (state, batch) -> (state, metrics); the state is donated
    eval_fns: dict[str, Callable]  # metric prefix -> (state, batch) -> sums
    infer_fn: Callable  # (state, images) -> eval-mode logits
    train_branches: int  # slices of the batch the backend runs the train step over


def build(
    config: ml_collections.ConfigDict,
    *,
    num_classes: int,
    image_shape: tuple[int, ...],
    num_train_examples: int | None = None,
    total_steps: int | None = None,
    steps_per_epoch: float | None = None,
    mesh: Any = None,
    train_step: Callable = steps.train_step,
) -> Steps:
    """Builds `config`'s model, optimizer, shardings and jitted init/train/eval steps.

    The run length comes from `total_steps`, else from `num_train_examples`; the schedule's
    epochs from `steps_per_epoch`, else from `num_train_examples`. Nothing is compiled yet.
    """
    if total_steps is None:
        total_steps = num_train_steps(config, num_train_examples or 0)
    if steps_per_epoch is None and num_train_examples:
        steps_per_epoch = num_train_examples / config.batch_size
    model = backend.tune_model(create_model(config, num_classes))
    tx = optim.build(config, total_steps, steps_per_epoch=steps_per_epoch)  # bad schedules fail
    if pruning.enabled(config.pruning):
        # Last in the chain: masked weights stay exactly zero whatever the optimizer does.
        tx = optax.chain(tx, pruning.keep_pruned(pruning.Schedule.from_config(config.pruning)))
    lr_fn = optim.learning_rate_schedule(config, total_steps, steps_per_epoch=steps_per_epoch)
    mesh = mesh or parallel.make_mesh()
    init = functools.partial(steps.init_state, model, tx, config.seed, tuple(image_shape))
    shapes = jax.eval_shape(init)
    state_sharding = parallel.state_shardings(
        shapes, mesh, fsdp=config.parallel.fsdp, min_size=config.parallel.fsdp_min_size
    )
    batch_sharding, replicated = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    has_bn = bool(shapes.batch_stats)
    examples = config.batch_size // config.grad_accum_steps
    branches = backend.train_branches(config.parallel.batch_branches, has_bn, examples)
    loss_transform = functools.partial(
        backend.train_loss,
        configured=config.parallel.batch_branches,
        has_batch_norm=has_bn,
        examples=examples,
    )
    train_fn = backend.jit(
        functools.partial(
            train_step,
            model=model,
            tx=tx,
            learning_rate_fn=lr_fn,
            options=steps.StepOptions.from_config(config),
            loss_transform=loss_transform,
        ),
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=0,
    )
    eval_fns = {}
    for prefix, use_ema in (("eval", False), ("eval_ema", True)):
        if use_ema and config.optimizer.ema_decay <= 0:
            continue
        eval_fns[prefix] = backend.jit(
            functools.partial(
                steps.eval_step,
                model=model,
                loss=config.loss,
                use_ema=use_ema,
                forward=backend.forward,
            ),
            in_shardings=(state_sharding, batch_sharding),
            out_shardings=replicated,
        )

    def infer(state, images):
        return backend.forward(model, steps.variables(state.params, state.batch_stats), images)

    def reinit(state, params, batch_stats):
        return state.replace(params=params, batch_stats=batch_stats, opt_state=tx.init(params))

    return Steps(
        model=model,
        tx=tx,
        learning_rate_fn=lr_fn,
        total_steps=total_steps,
        mesh=mesh,
        state_sharding=state_sharding,
        batch_sharding=batch_sharding,
        abstract_state=jax.tree.map(
            lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
            shapes,
            state_sharding,
        ),
        init_fn=backend.jit(init, once=True, out_shardings=state_sharding),
        reinit_fn=backend.jit(reinit, once=True, out_shardings=state_sharding),
        train_fn=train_fn,
        eval_fns=eval_fns,
        infer_fn=backend.jit(infer, in_shardings=(state_sharding, batch_sharding)),
        train_branches=branches,
    )
