"""Pure train and eval steps: (state, batch) -> (state, metrics), jit-able, no I/O."""

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxvision import mix, optim


class TrainState(flax.struct.PyTreeNode):
    """Everything a run needs to continue bitwise: checkpointed as one pytree."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array

    @property
    def ema_params(self) -> Any:
        """The EMA of the parameters (kept in the optimizer state), or None without EMA."""
        return optim.ema_params(self.opt_state)


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """What the train step does besides the plain update; built from the config."""

    loss: str = "softmax_xent"
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_switch_prob: float = 0.5
    accum_steps: int = 1
    skip_nonfinite: bool = False

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "StepOptions":
        """The options a config asks for."""
        return cls(
            loss=config.loss,
            label_smoothing=config.label_smoothing,
            mixup_alpha=config.mixup.mixup_alpha,
            cutmix_alpha=config.mixup.cutmix_alpha,
            mix_switch_prob=config.mixup.switch_prob,
            accum_steps=config.grad_accum_steps,
            skip_nonfinite=config.on_nonfinite == "skip",
        )


# (params, batch_stats, batch, rng) -> (mean loss, (accuracy, new batch_stats))
LossFn = Callable[[Any, Any, dict, jax.Array], tuple[jax.Array, tuple[jax.Array, Any]]]
# (the model's train-mode output, batch) -> (per-example loss [N], logits [N, K] for accuracy)
ExampleLoss = Callable[[jax.Array, dict], tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class LossHook:
    """How an extension (a teacher) changes the train loss without a second train step.

    `prepare` adds per-example inputs (e.g. teacher logits) to the augmented, mixed batch;
    `example_loss` scores the model's output, called with `apply_kwargs`, against it.
    """

    prepare: Callable[[dict], dict]
    example_loss: ExampleLoss
    apply_kwargs: tuple[tuple[str, Any], ...] = ()


def init_state(
    model: nn.Module, tx: optax.GradientTransformation, seed: int, image_shape: tuple[int, ...]
) -> TrainState:
    """Initialises parameters, BatchNorm statistics and optimizer state from `seed`."""
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    variables = model.init({"params": init_rng, "dropout": init_rng}, dummy, train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        rng=train_rng,
    )


def variables(params: Any, batch_stats: Any) -> dict:
    """The `variables` dict `model.apply` takes (no `batch_stats` entry for models without)."""
    if batch_stats:
        return {"params": params, "batch_stats": batch_stats}
    return {"params": params}


def example_losses(logits: jax.Array, targets: jax.Array, loss: str) -> jax.Array:
    """Per-example loss [N] against soft targets [N, K]."""
    if loss == "sigmoid_xent":
        # Summed over classes (as in big_vision), so its scale does not shrink with K.
        return optax.sigmoid_binary_cross_entropy(logits, targets).sum(-1)
    return optax.softmax_cross_entropy(logits, targets)


def _micro_batches(batch: dict[str, jax.Array], k: int) -> dict[str, jax.Array]:
    """[N, ...] -> [k, N/k, ...]; micro-batch i takes every k-th example from i, so each
    device's contiguous slice of the batch contributes equally to every micro-batch."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), batch)


def batch_loss(model: nn.Module, loss: str, hook: LossHook | None = None) -> LossFn:
    """The mean weighted loss of `model` on a batch, with accuracy and new BatchNorm stats.

    Dropout and drop-path draw each example's masks from `rng` and the example's global
    index (`batch["index"]`), so any split of the batch sees the same masks. `hook`
    replaces the per-example loss (distillation).
    """

    def label_loss(logits, batch):
        return example_losses(logits, batch["target"], loss), logits

    example_loss = hook.example_loss if hook else label_loss
    apply_kwargs = dict(hook.apply_kwargs) if hook else {}

    def loss_fn(params, batch_stats, batch, rng):
        has_bn = bool(batch_stats)
        out = model.apply(
            variables(params, batch_stats),
            batch["image"],
            train=True,
            example_index=batch["index"],
            rngs={"dropout": rng},
            mutable=["batch_stats"] if has_bn else False,
            **apply_kwargs,
        )
        out, updates = out if has_bn else (out, {})
        losses, logits = example_loss(out, batch)
        losses = losses * batch["weight"]
        correct = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return jnp.mean(losses), (correct, updates.get("batch_stats", batch_stats))

    return loss_fn


def _grads(state, batch, dropout_rng, loss_fn: LossFn, accum_steps: int):
    """Mean loss gradient over the batch, accumulated over `accum_steps` micro-batches."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    k = accum_steps
    if k == 1:
        (loss, (acc, stats)), grads = grad_fn(state.params, state.batch_stats, batch, dropout_rng)
        return loss, acc, stats, grads

    def body(carry, mb):
        grad_sum, stats, loss_sum, acc_sum = carry
        # The same rng for every micro-batch: the masks differ by the examples' indices.
        (loss, (acc, stats)), g = grad_fn(state.params, stats, mb, dropout_rng)
        grad_sum = jax.tree.map(jnp.add, grad_sum, g)
        return (grad_sum, stats, loss_sum + loss, acc_sum + acc), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    init = (zeros, state.batch_stats, jnp.zeros(()), jnp.zeros(()))
    (grad_sum, stats, loss_sum, acc_sum), _ = jax.lax.scan(body, init, _micro_batches(batch, k))
    grads = jax.tree.map(lambda g: g / k, grad_sum)
    return loss_sum / k, acc_sum / k, stats, grads


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    learning_rate_fn: optax.Schedule,
    options: StepOptions = StepOptions(),
    loss_transform: Callable[[LossFn], LossFn] | None = None,
    loss_hook: LossHook | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a global batch; returns the new state and scalar metrics.

    `loss_transform` maps the per-(micro-)batch loss function to one with the same
    signature and value, e.g. one that evaluates it over slices of the batch.
    `loss_hook` adds inputs to the augmented batch and replaces the per-example loss.
    """
    dropout_rng, mix_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
    images, labels = batch["image"], batch["label"]
    # Each example's index in the global batch: what its random masks are drawn from.
    index = batch.get("index", jnp.arange(labels.shape[0], dtype=jnp.int32))
    targets = jax.nn.one_hot(labels, model.num_classes, dtype=jnp.float32)
    images, targets = mix.mix_batch(
        mix_rng,
        images,
        targets,
        mixup_alpha=options.mixup_alpha,
        cutmix_alpha=options.cutmix_alpha,
        switch_prob=options.mix_switch_prob,
    )
    if options.label_smoothing:
        targets = optax.smooth_labels(targets, options.label_smoothing)
    # Optional per-example weights (class-weighted loss) come with the batch.
    weight = batch.get("weight", jnp.ones(labels.shape, jnp.float32))
    prepared = {
        "image": images,
        "label": labels,
        "target": targets,
        "weight": weight,
        "index": index,
    }
    if loss_hook is not None:
        prepared = loss_hook.prepare(prepared)
    loss_fn = batch_loss(model, options.loss, loss_hook)
    if loss_transform is not None:
        loss_fn = loss_transform(loss_fn)
    loss, accuracy, batch_stats, grads = _grads(
        state, prepared, dropout_rng, loss_fn, options.accum_steps
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if options.skip_nonfinite:
        # Keep the old weights and statistics; only the step (and so the data) moves on.
        kept = state.replace(step=state.step + 1)
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, kept)
    metrics = {
        "loss": loss,
        "accuracy": accuracy,
        "grad_norm": grad_norm,
        "param_norm": optax.global_norm(new_state.params),
        "learning_rate": learning_rate_fn(state.step),
        "nonfinite": 1.0 - finite.astype(jnp.float32),
    }
    return new_state, metrics


def logits_of(model: nn.Module, variables: dict, images: jax.Array) -> jax.Array:
    """Eval-mode logits [N, K] of `model` on `images`."""
    return model.apply(variables, images, train=False)


def eval_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    loss: str = "softmax_xent",
    use_ema: bool = False,
    forward: Callable[[nn.Module, dict, jax.Array], jax.Array] | None = None,
) -> dict:
    """Sums of loss, correct top-1/top-5 and example count over the unmasked examples.

    `forward(model, variables, images)` computes the eval-mode logits (default: one apply).
    """
    params = state.ema_params if use_ema else state.params
    forward = forward or logits_of
    logits = forward(model, variables(params, state.batch_stats), batch["image"])
    mask = batch["mask"]
    labels = batch["label"]
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    losses = example_losses(logits, targets, loss)
    k = min(5, logits.shape[-1])
    top_k = jax.lax.top_k(logits, k)[1]
    return {
        "loss_sum": jnp.sum(losses * mask),
        "correct": jnp.sum((top_k[:, 0] == labels) * mask),
        "correct_top5": jnp.sum(jnp.any(top_k == labels[:, None], axis=-1) * mask),
        "count": jnp.sum(mask),
    }
