"""Mixed precision: bf16 compute with float32 master weights, and its accuracy vs fp32."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision import optim, step_factory, steps, train


def test_bf16_computes_in_bf16_and_keeps_float32_weights(smoke_config):
    smoke_config.compute_dtype = "bfloat16"
    smoke_config.schedule.warmup_steps = 0  # so the first step moves the weights
    model = step_factory.create_model(smoke_config, 10)
    assert model.dtype == jnp.bfloat16
    tx = optim.build(smoke_config, 20)
    state = steps.init_state(model, tx, 0, (28, 28, 1))
    batch = {
        "image": jnp.asarray(np.random.default_rng(0).random((8, 28, 28, 1)), jnp.float32),
        "label": jnp.arange(8, dtype=jnp.int32),
    }
    step = jax.jit(
        functools.partial(
            steps.train_step,
            model=model,
            tx=tx,
            learning_rate_fn=optim.learning_rate_schedule(smoke_config, 20),
        )
    )
    new, metrics = step(state, batch)
    assert {x.dtype for x in jax.tree.leaves(new.params)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(new.opt_state) if x.ndim} == {jnp.dtype(jnp.float32)}
    assert np.isfinite(float(metrics["loss"]))
    logits = model.apply({"params": new.params}, batch["image"])
    assert logits.dtype == jnp.float32  # the head's output is cast back for the loss
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new.params, state.params)
    assert all(jax.tree.leaves(changed))


@pytest.mark.slow  # ~8 min on 2 CPU cores: two 8-epoch quickstart runs
def test_bf16_trains_the_quickstart_to_the_fp32_accuracy(tmp_path):
    from configs import quickstart

    accuracy = {}
    for dtype in ("float32", "bfloat16"):
        config = quickstart.get_config()
        config.unlock()
        config.num_epochs = 8.0  # shortened from 20 to keep the test to minutes
        config.compute_dtype = dtype
        accuracy[dtype] = train.run(config, str(tmp_path / dtype))["eval/accuracy"]
    print(f"accuracy fp32 {accuracy['float32']:.4f}, bf16 {accuracy['bfloat16']:.4f}")
    assert accuracy["float32"] > 0.97
    # One-sided: bf16 must not cost accuracy; landing above fp32 (seen: 98.4 vs 97.9) is
    # run-to-run noise in bf16's rounding, not a failure.
    assert accuracy["bfloat16"] >= accuracy["float32"] - 0.005, accuracy
