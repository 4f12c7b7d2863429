"""Pure train and eval steps: (state, batch) -> (state, metrics), jit-able, no I/O."""

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
    """Everything a run needs to continue bitwise: checkpointed as one pytree."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


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


def _variables(state: TrainState, params: Any) -> dict:
    if state.batch_stats:
        return {"params": params, "batch_stats": state.batch_stats}
    return {"params": params}


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    learning_rate_fn: optax.Schedule,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a global batch; returns the new state and scalar metrics."""
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    has_bn = bool(state.batch_stats)

    def loss_fn(params):
        out = model.apply(
            _variables(state, params),
            batch["image"],
            train=True,
            rngs={"dropout": dropout_rng},
            mutable=["batch_stats"] if has_bn else False,
        )
        logits, updates = out if has_bn else (out, {})
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        # Optional per-example weights (class-weighted loss) come with the batch.
        loss = jnp.mean(losses * batch["weight"]) if "weight" in batch else jnp.mean(losses)
        return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, param_updates)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        batch_stats=updates.get("batch_stats", state.batch_stats),
        opt_state=opt_state,
    )
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
        "grad_norm": optax.global_norm(grads),
        "learning_rate": learning_rate_fn(state.step),
    }
    return new_state, metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module) -> dict:
    """Sums of loss, correct top-1/top-5 and example count over the unmasked examples."""
    logits = model.apply(_variables(state, state.params), batch["image"], train=False)
    mask = batch["mask"]
    labels = batch["label"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    k = min(5, logits.shape[-1])
    top_k = jax.lax.top_k(logits, k)[1]
    return {
        "loss_sum": jnp.sum(loss * mask),
        "correct": jnp.sum((top_k[:, 0] == labels) * mask),
        "correct_top5": jnp.sum(jnp.any(top_k == labels[:, None], axis=-1) * mask),
        "count": jnp.sum(mask),
    }
