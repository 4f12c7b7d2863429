"""The one optimizer builder: optimizer, schedule, weight-decay mask, clipping, freezing,
per-layer learning-rate multipliers and the parameter EMA, all chosen by name in the config.

Parameters are addressed by their "/"-joined path in the parameter tree, e.g.
`stage1_block0/conv1/kernel` or `head/bias`; masks and multipliers are regexes on it.
"""

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax


def param_path(path: tuple) -> str:
    """The "/"-joined name of a leaf from its key path, e.g. `conv0/kernel`."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def regex_labels(params: Any, pattern: str) -> Any:
    """A tree of bools: True where the parameter's path matches `pattern` (re.search)."""
    regex = re.compile(pattern)
    return jax.tree_util.tree_map_with_path(
        lambda p, _: regex.search(param_path(p)) is not None, params
    )


def _boundaries(config: ml_collections.ConfigDict, steps_per_epoch: float) -> list[int]:
    sched = config.schedule
    if sched.boundaries_epochs:
        return [round(e * steps_per_epoch) for e in sched.boundaries_epochs]
    return [int(s) for s in sched.boundaries_steps]


def _steps_per_epoch(config: ml_collections.ConfigDict, num_steps: int, given: float | None):
    if given:
        return given
    if config.num_train_steps == -1 and config.num_epochs > 0:
        return num_steps / config.num_epochs
    raise ValueError(
        "The schedule is given in epochs (schedule.warmup_epochs or boundaries_epochs) but the "
        "run length is in steps: pass steps_per_epoch, or give the schedule in steps."
    )


def learning_rate_schedule(
    config: ml_collections.ConfigDict, num_steps: int, *, steps_per_epoch: float | None = None
) -> optax.Schedule:
    """Linear warmup to the peak learning rate, then the named decay; checked against the run."""
    peak = config.optimizer.learning_rate
    sched = config.schedule
    if peak <= 0:
        raise ValueError(f"optimizer.learning_rate must be > 0, got {peak}.")
    uses_epochs = sched.warmup_epochs or sched.boundaries_epochs
    spe = _steps_per_epoch(config, num_steps, steps_per_epoch) if uses_epochs else 1.0
    warmup = round(sched.warmup_epochs * spe) if sched.warmup_epochs else sched.warmup_steps
    if warmup >= num_steps:
        raise ValueError(
            f"The schedule is longer than the run: warmup of {warmup} steps (schedule.warmup_steps"
            f"/warmup_epochs) must be shorter than the run ({num_steps} steps)."
        )
    length = num_steps - warmup
    if sched.name == "constant":
        decay = optax.constant_schedule(peak)
    elif sched.name == "cosine":
        decay = optax.cosine_decay_schedule(peak, length, alpha=sched.end_factor)
    elif sched.name == "linear":
        decay = optax.linear_schedule(peak, peak * sched.end_factor, length)
    elif sched.name == "rsqrt":
        timescale = float(sched.timescale_steps)
        decay = lambda t: peak / jnp.sqrt(1.0 + t / timescale)
    elif sched.name == "step":
        bounds = _boundaries(config, spe)
        late = [b for b in bounds if not warmup < b < num_steps]
        if not bounds or late:
            raise ValueError(
                f"schedule.name='step' needs boundaries inside the run (after the {warmup} warmup "
                f"steps, before step {num_steps}); got {bounds} (schedule.boundaries_steps"
                "/boundaries_epochs)."
            )
        decay = optax.piecewise_constant_schedule(
            peak, {b - warmup: sched.decay_factor for b in bounds}
        )
    else:
        raise ValueError(f"Unknown schedule.name {sched.name!r}.")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def _optimizer(opt: ml_collections.ConfigDict, lr: optax.Schedule, mask: Any):
    wd = opt.weight_decay
    if opt.name == "sgd":
        return optax.chain(
            optax.add_decayed_weights(wd, mask=mask) if wd else optax.identity(),
            optax.sgd(lr, momentum=opt.momentum or None, nesterov=opt.nesterov),
        )
    if opt.name == "adamw":
        return optax.adamw(lr, b1=opt.b1, b2=opt.b2, weight_decay=wd, mask=mask)
    if opt.name == "lamb":
        return optax.lamb(lr, b1=opt.b1, b2=opt.b2, weight_decay=wd, mask=mask)
    if opt.name == "lion":
        return optax.lion(lr, b1=opt.b1, b2=opt.b2, weight_decay=wd, mask=mask)
    if opt.name == "adafactor":
        return optax.adafactor(lr, weight_decay_rate=wd or None, weight_decay_mask=mask)
    raise ValueError(
        f"Unknown optimizer.name {opt.name!r}; known: sgd, adamw, lamb, lion, adafactor."
    )


def scale_by_path(rules: tuple[tuple[str, float], ...]) -> optax.GradientTransformation:
    """Multiplies each update by the multiplier of the first regex matching its path."""
    compiled = [(re.compile(pattern), float(mult)) for pattern, mult in rules]

    def multiplier(path: tuple) -> float:
        name = param_path(path)
        return next((m for regex, m in compiled if regex.search(name)), 1.0)

    def update(updates, state, params=None):
        del params
        scaled = jax.tree_util.tree_map_with_path(lambda p, u: u * multiplier(p), updates)
        return scaled, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class ParamEmaState(NamedTuple):
    """The exponential moving average of the parameters after each update."""

    count: jax.Array
    ema: Any


def param_ema(decay: float) -> optax.GradientTransformation:
    """Tracks an EMA of the updated parameters (updates pass through unchanged).

    The effective decay ramps up as min(decay, (1 + t) / (10 + t)) so that short runs and the
    first steps are not dominated by the random initialisation.
    """

    def init(params):
        return ParamEmaState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.asarray, params))

    def update(updates, state, params):
        new_params = optax.apply_updates(params, updates)
        t = state.count.astype(jnp.float32)
        d = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
        ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema, new_params)
        return updates, ParamEmaState(state.count + 1, ema)

    return optax.GradientTransformation(init, update)


def ema_params(opt_state: Any) -> Any:
    """The EMA parameters kept in `opt_state`, or None when the run has no EMA."""
    found = [
        s
        for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, ParamEmaState))
        if isinstance(s, ParamEmaState)
    ]
    return found[0].ema if found else None


def build(
    config: ml_collections.ConfigDict, num_steps: int, *, steps_per_epoch: float | None = None
) -> optax.GradientTransformation:
    """The full optimizer chain for a run of `num_steps` steps; raises on bad values."""
    opt = config.optimizer
    lr = learning_rate_schedule(config, num_steps, steps_per_epoch=steps_per_epoch)
    mask = lambda params: regex_labels(params, opt.weight_decay_mask)
    train = [
        optax.clip_by_global_norm(opt.grad_clip_norm) if opt.grad_clip_norm > 0 else None,
        _optimizer(opt, lr, mask),
        scale_by_path(tuple(opt.lr_multipliers)) if opt.lr_multipliers else None,
    ]
    tx = optax.chain(*[t for t in train if t is not None])
    if opt.freeze:
        labels = lambda params: jax.tree.map(
            lambda frozen: "frozen" if frozen else "train", regex_labels(params, opt.freeze)
        )
        tx = optax.partition({"train": tx, "frozen": optax.set_to_zero()}, labels)
    if opt.ema_decay > 0:
        tx = optax.chain(tx, param_ema(opt.ema_decay))
    return tx
