"""The one optimizer builder: optax chain from the config (optimizer, schedule, wd mask, clip)."""

import jax
import ml_collections
import optax


def learning_rate_schedule(config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """Linear warmup to the peak learning rate, then the configured decay."""
    peak = config.optimizer.learning_rate
    sched = config.schedule
    warmup = sched.warmup_steps
    if warmup >= num_steps:
        raise ValueError(
            f"schedule.warmup_steps={warmup} must be shorter than the run ({num_steps} steps)."
        )
    if sched.name == "constant":
        decay = optax.constant_schedule(peak)
    else:  # cosine
        decay = optax.cosine_decay_schedule(peak, num_steps - warmup, alpha=sched.end_factor)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def kernel_mask(params):
    """Weight decay applies to matrices and conv kernels only, not to biases and norms."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def build(config: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """The full optimizer chain for a run of `num_steps` steps."""
    opt = config.optimizer
    lr = learning_rate_schedule(config, num_steps)
    chain = []
    if opt.grad_clip_norm > 0:
        chain.append(optax.clip_by_global_norm(opt.grad_clip_norm))
    if opt.name == "sgd":
        if opt.weight_decay:
            chain.append(optax.add_decayed_weights(opt.weight_decay, mask=kernel_mask))
        chain.append(optax.sgd(lr, momentum=opt.momentum or None, nesterov=opt.nesterov))
    elif opt.name == "adamw":
        chain.append(
            optax.adamw(lr, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=kernel_mask)
        )
    else:
        raise ValueError(f"Unknown optimizer.name {opt.name!r}; known: sgd, adamw.")
    return optax.chain(*chain)
