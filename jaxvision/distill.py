"""Knowledge distillation inside the one train step: the teacher's forward pass and the losses.

The frozen teacher runs in eval mode inside the student's jitted step, on exactly the
augmented and mixed batch the student sees ("consistent teaching", Beyer et al. 2022).
Its logits join the batch through `steps.LossHook`, so there is no second train step.
Losses per example, with w = `weight` and the usual label loss L:

- `soft` (Hinton et al. 2015): (1 - w) L(s, y) + w T^2 KL(softmax(t / T) || softmax(s / T));
- `hard`: (1 - w) L(s, y) + w CE(s, argmax t);
- `deit` (Touvron et al. 2021): (1 - w) L(s_cls, y) + w CE(s_dist, argmax t) on a ViT's class
  and distillation heads; the student's prediction is the mean of both heads.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxvision import steps

# forward(model, variables, images) -> eval-mode logits [N, K]
Forward = Callable[[nn.Module, dict, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class DistillOptions:
    """The distillation loss a config asks for."""

    loss: str = "soft"
    temperature: float = 1.0
    weight: float = 0.5
    label_loss: str = "softmax_xent"

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "DistillOptions":
        """The options of `config.distill` (and the run's label loss)."""
        d = config.distill
        return cls(
            loss=d.loss,
            temperature=float(d.temperature),
            weight=float(d.weight),
            label_loss=config.loss,
        )


def soft_losses(student: jax.Array, teacher: jax.Array, temperature: float) -> jax.Array:
    """T^2 KL(softmax(teacher / T) || softmax(student / T)) per example [N].

    The T^2 keeps the gradient's scale independent of T (Hinton et al. 2015).
    """
    t = jax.nn.log_softmax(teacher / temperature, axis=-1)
    s = jax.nn.log_softmax(student / temperature, axis=-1)
    return temperature**2 * jnp.sum(jnp.exp(t) * (t - s), axis=-1)


def hard_targets(teacher: jax.Array) -> jax.Array:
    """One-hot [N, K] of the teacher's top-1 class."""
    return jax.nn.one_hot(jnp.argmax(teacher, -1), teacher.shape[-1], dtype=jnp.float32)


def example_loss(options: DistillOptions) -> steps.ExampleLoss:
    """The per-example distillation loss on a batch that holds `teacher_logits`."""
    w = options.weight

    def loss(out: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array]:
        teacher = batch["teacher_logits"]
        if options.loss == "deit":
            label = steps.example_losses(out[:, 0], batch["target"], options.label_loss)
            taught = optax.softmax_cross_entropy(out[:, 1], hard_targets(teacher))
            return (1 - w) * label + w * taught, out.mean(axis=1)
        label = steps.example_losses(out, batch["target"], options.label_loss)
        if options.loss == "soft":
            taught = soft_losses(out, teacher, options.temperature)
        else:
            taught = optax.softmax_cross_entropy(out, hard_targets(teacher))
        return (1 - w) * label + w * taught, out

    return loss


def teacher_logits(
    teacher_model: nn.Module,
    teacher_variables: dict,
    images: jax.Array,
    *,
    image_size: int,
    forward: Forward,
) -> jax.Array:
    """The frozen teacher's eval-mode fp32 logits, the images resized to its input size."""
    n, h, w, c = images.shape
    if (h, w) != (image_size, image_size):
        images = jax.image.resize(images, (n, image_size, image_size, c), "bilinear")
    logits = forward(teacher_model, teacher_variables, images)
    return jax.lax.stop_gradient(logits.astype(jnp.float32))


def loss_hook(
    teacher_model: nn.Module,
    teacher_variables: dict,
    options: DistillOptions,
    *,
    image_size: int,
    forward: Forward,
) -> steps.LossHook:
    """The `steps.LossHook` that adds the teacher's logits and scores the student against them."""

    def prepare(batch: dict) -> dict:
        logits = teacher_logits(
            teacher_model, teacher_variables, batch["image"], image_size=image_size, forward=forward
        )
        return {**batch, "teacher_logits": logits}

    apply_kwargs = (("heads", True),) if options.loss == "deit" else ()
    return steps.LossHook(prepare, example_loss(options), apply_kwargs)


def train_step(
    state: steps.TrainState,
    batch: dict[str, jax.Array],
    teacher_variables: dict,
    *,
    teacher_model: nn.Module,
    distill: DistillOptions,
    image_size: int,
    forward: Forward,
    base_step: Callable = steps.train_step,
    **step_kwargs: Any,
) -> tuple[steps.TrainState, dict[str, jax.Array]]:
    """`base_step` with the teacher: its variables are an argument, so they are never baked
    into the compiled step as constants, and they get no gradient (not differentiated)."""
    hook = loss_hook(
        teacher_model, teacher_variables, distill, image_size=image_size, forward=forward
    )
    return base_step(state, batch, loss_hook=hook, **step_kwargs)


def eval_step(
    state: steps.TrainState,
    batch: dict[str, jax.Array],
    teacher_variables: dict,
    *,
    model: nn.Module,
    teacher_model: nn.Module,
    image_size: int,
    forward: Forward,
) -> dict[str, jax.Array]:
    """Sums over the unmasked examples: student-teacher top-1 agreement, teacher correct."""
    student = forward(model, steps.variables(state.params, state.batch_stats), batch["image"])
    teacher = teacher_logits(
        teacher_model, teacher_variables, batch["image"], image_size=image_size, forward=forward
    )
    mask, top = batch["mask"], jnp.argmax(teacher, -1)
    return {
        "agree": jnp.sum((jnp.argmax(student, -1) == top) * mask),
        "teacher_correct": jnp.sum((top == batch["label"]) * mask),
        "count": jnp.sum(mask),
    }


def evaluate(eval_fn: Callable, state: steps.TrainState, eval_data: Any) -> dict[str, float]:
    """`eval/teacher_agreement` and `eval/teacher_accuracy` over the whole eval split."""
    totals = None
    for batch in eval_data:
        out = eval_fn(state, batch)
        totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    totals = jax.device_get(totals)
    count = float(totals["count"])
    return {
        "eval/teacher_agreement": float(totals["agree"]) / count,
        "eval/teacher_accuracy": float(totals["teacher_correct"]) / count,
    }
