"""Pure train and eval steps: (state, batch) -> (state, metrics), jit-able, no I/O."""

import dataclasses
import functools
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
    branches: int = 1  # 0 = auto: `auto_branches` decides at trace time
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
            branches=config.parallel.batch_branches,
            skip_nonfinite=config.on_nonfinite == "skip",
        )

    def train_branches(self, has_batch_norm: bool, examples: int) -> int:
        """The branch count a train step on `examples` examples runs (0 resolved by auto)."""
        return self.branches or auto_branches(has_batch_norm, examples)


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


def _variables(params: Any, batch_stats: Any) -> dict:
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


def auto_branches(has_batch_norm: bool, examples: int, *, train: bool = True) -> int:
    """How many independent branches a step on `examples` examples runs by default.

    XLA:CPU runs some kernels on one thread (a batched matmul's products one after another,
    e.g. attention over short sequences); independent sub-graphs over slices of the batch
    let one slice's such kernels run beside another's. Only when the whole run is one CPU
    device: with several (`parallel.cpu_devices`, or processes) each core already has its
    own slice, and accelerators gain nothing. Training: 2 branches, and 1 with BatchNorm,
    which would then see per-branch statistics. Inference: 4 (running statistics: exact
    for every model).
    """
    if jax.default_backend() != "cpu" or jax.device_count() != 1:
        return 1
    b = (1 if has_batch_norm else 2) if train else 4
    return b if examples % b == 0 else 1


def forward(model: nn.Module, variables: dict, images: jax.Array) -> jax.Array:
    """Eval-mode logits [N, K], over `auto_branches` independent slices of the batch."""
    b = auto_branches(False, images.shape[0], train=False)
    if b == 1:
        return model.apply(variables, images, train=False)
    # Jitted, the branch is traced once and called b times (XLA inlines the calls); XLA
    # then also lays out the attention without 48 of its copies: ViT-Ti/4 inference 1.10x.
    branch = jax.jit(functools.partial(model.apply, train=False))
    return jnp.concatenate([branch(variables, x) for x in jnp.split(images, b)])


def _grads(state, batch, dropout_rng, model, options):
    """Mean loss gradient over the batch, accumulated over `accum_steps` micro-batches."""
    has_bn = bool(state.batch_stats)

    def branch_loss(params, batch_stats, mb, rng):
        out = model.apply(
            _variables(params, batch_stats),
            mb["image"],
            train=True,
            rngs={"dropout": rng},
            mutable=["batch_stats"] if has_bn else False,
        )
        logits, updates = out if has_bn else (out, {})
        losses = example_losses(logits, mb["target"], options.loss) * mb["weight"]
        correct = jnp.mean(jnp.argmax(logits, -1) == mb["label"])
        return jnp.mean(losses), (correct, updates.get("batch_stats", batch_stats))

    def loss_fn(params, batch_stats, mb, rng):
        b = options.train_branches(has_bn, mb["image"].shape[0])
        if b == 1:
            return branch_loss(params, batch_stats, mb, rng)
        # Independent sub-graphs over equal slices of the batch: the mean of their means is
        # the batch mean, and XLA may run their kernels concurrently.
        parts = _micro_batches(mb, b)
        # Jitted, the branch is traced and differentiated once and called b times (XLA
        # inlines the calls): tracing an unrolled ViT-B/16 step takes 1.7 s instead of 2.6.
        branch = jax.jit(branch_loss)
        outs = [
            branch(
                params,
                batch_stats,
                jax.tree.map(lambda x, i=i: x[i], parts),
                jax.random.fold_in(rng, i),
            )
            for i in range(b)
        ]
        return jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs), 0), *outs)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    k = options.accum_steps
    if k == 1:
        (loss, (acc, stats)), grads = grad_fn(state.params, state.batch_stats, batch, dropout_rng)
        return loss, acc, stats, grads

    def body(carry, xs):
        grad_sum, stats, loss_sum, acc_sum = carry
        mb, i = xs
        (loss, (acc, stats)), g = grad_fn(
            state.params, stats, mb, jax.random.fold_in(dropout_rng, i)
        )
        grad_sum = jax.tree.map(jnp.add, grad_sum, g)
        return (grad_sum, stats, loss_sum + loss, acc_sum + acc), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    init = (zeros, state.batch_stats, jnp.zeros(()), jnp.zeros(()))
    xs = (_micro_batches(batch, k), jnp.arange(k))
    (grad_sum, stats, loss_sum, acc_sum), _ = jax.lax.scan(body, init, xs)
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
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a global batch; returns the new state and scalar metrics."""
    dropout_rng, mix_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
    images, labels = batch["image"], batch["label"]
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
    prepared = {"image": images, "label": labels, "target": targets, "weight": weight}
    loss, accuracy, batch_stats, grads = _grads(state, prepared, dropout_rng, model, options)
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


def eval_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    loss: str = "softmax_xent",
    use_ema: bool = False,
) -> dict:
    """Sums of loss, correct top-1/top-5 and example count over the unmasked examples."""
    params = state.ema_params if use_ema else state.params
    logits = forward(model, _variables(params, state.batch_stats), batch["image"])
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
