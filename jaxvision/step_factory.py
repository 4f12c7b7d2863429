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

from jaxvision import backend, distill, models, optim, parallel, steps
from jaxvision import teacher as teacher_lib
from jaxvision.compression import pruning, quantized_model


def num_train_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
    """`num_train_steps`, or `num_epochs` converted to steps at the global batch size."""
    if config.num_train_steps > 0:
        return config.num_train_steps
    return max(1, math.ceil(config.num_epochs * num_train_examples / config.batch_size))


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """The registered model named by `config.model.name` with its overrides, compute dtype and
    quantization (`config.quantization`: QAT or an int8 PTQ model, through qwix)."""
    overrides = {k: v for k, v in config.model.items() if k != "name"}
    if config.compute_dtype == "bfloat16":
        # Parameters stay float32 (the master weights); activations and matmuls run in bf16.
        overrides.setdefault("dtype", jnp.bfloat16)
    if config.distill.loss == "deit":
        overrides["distill_token"] = True  # DeiT's second token and head (models/vit.py)
    model = models.create(config.model.name, num_classes=num_classes, **overrides)
    return quantized_model.apply(model, config.quantization)


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
    # With a teacher: (state, batch) -> sums of student-teacher agreement, teacher correct.
    teacher_eval_fn: Callable | None = None


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
    teacher: teacher_lib.Teacher | None = None,
) -> Steps:
    """Builds `config`'s model, optimizer, shardings and jitted init/train/eval steps.

    The run length comes from `total_steps`, else from `num_train_examples`; the schedule's
    epochs from `steps_per_epoch`, else from `num_train_examples`. Nothing is compiled yet.
    With a `teacher`, `train_step` distils from it (`config.distill`; `distill.train_step`).
    """
    if total_steps is None:
        total_steps = num_train_steps(config, num_train_examples or 0)
    if steps_per_epoch is None and num_train_examples:
        steps_per_epoch = num_train_examples / config.batch_size
    model = create_model(config, num_classes)
    if not quantized_model.enabled(config.quantization):
        # qwix intercepts lax's convolutions; a backend's own conv would escape quantization.
        model = backend.tune_model(model)
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
    step_kwargs = dict(
        model=model,
        tx=tx,
        learning_rate_fn=lr_fn,
        options=steps.StepOptions.from_config(config),
        loss_transform=loss_transform,
    )
    teacher_eval_fn = None
    if teacher is None:
        train_fn = backend.jit(
            functools.partial(train_step, **step_kwargs),
            in_shardings=(state_sharding, batch_sharding),
            out_shardings=(state_sharding, replicated),
            donate_argnums=0,
        )
    else:
        train_fn, teacher_eval_fn = _with_teacher(
            config, teacher, mesh, train_step, step_kwargs, state_sharding, batch_sharding
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
        teacher_eval_fn=teacher_eval_fn,
    )


def _with_teacher(
    config: ml_collections.ConfigDict,
    teacher: teacher_lib.Teacher,
    mesh: Any,
    train_step: Callable,
    step_kwargs: dict[str, Any],
    state_sharding: Any,
    batch_sharding: Any,
) -> tuple[Callable, Callable]:
    """The train step and agreement eval with the teacher's variables as a sharded argument."""
    variables, sharding = teacher_lib.place(teacher.variables, config, mesh)
    replicated = parallel.replicated(mesh)
    on_teacher = dict(teacher_model=teacher.model, image_size=teacher.image_size)
    jitted = backend.jit(
        functools.partial(
            distill.train_step,
            distill=distill.DistillOptions.from_config(config),
            forward=backend.forward,
            base_step=train_step,
            **on_teacher,
            **step_kwargs,
        ),
        in_shardings=(state_sharding, batch_sharding, sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=0,
    )
    eval_jitted = backend.jit(
        functools.partial(
            distill.eval_step, model=step_kwargs["model"], forward=backend.forward, **on_teacher
        ),
        in_shardings=(state_sharding, batch_sharding, sharding),
        out_shardings=replicated,
    )

    def train_fn(state, batch):
        return jitted(state, batch, variables)

    train_fn.lower = lambda state, batch: jitted.lower(state, batch, variables)  # benchmark

    def teacher_eval_fn(state, batch):
        return eval_jitted(state, batch, variables)

    return train_fn, teacher_eval_fn
