"""The one place for backend-specific speed work; on GPU and TPU every function is a no-op.

The rest of the code calls this small interface without knowing the backend:

- `jit(fn, ...)`: `jax.jit` plus XLA:CPU's compiler options on CPU (`xla_options`);
- `train_loss(loss_fn, ...)` / `forward(...)`: a step over independent slices of the batch
  (`branches`), which XLA:CPU can run side by side; `forward` (eval mode) can also fold
  BatchNorm into the convolution before it (`folding(True)`, off by default);
- `tune_model(model)`: 1x1 convolutions as matmuls and Winograd 3x3 ones for ResNets on CPU
  (`convolution`);
- `prepare_process()` and `configure_compile_cache(dir)`: process set-up for the
  command-line entry points (huge pages: `host_memory`; `compile_cache`);
- `environment()`: the settings that change speed, for benchmark records.

`forced(platform)` makes every decision as on another platform (tests, FLOP counts).
"""

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

# Model config keys earlier versions read for backend choices (now made here); a saved
# config.json that still has them loads without them.
RETIRED_MODEL_KEYS = ("winograd",)

# JAX is imported inside the functions: entry points call `prepare_process()` before
# anything imports JAX, and the process may re-execute itself right then.

_forced_platform: str | None = None
# Whether eval-mode forwards fold BatchNorm into convolutions on CPU. Off: XLA:CPU already
# fuses the eval BatchNorm into the loop after each convolution, and folding measured no
# faster (docs/performance.md, "Folding, measured"); `folding(True)` for A/B runs.
_fold_batch_norm = False

# Executables run once (init): XLA:CPU's slow optimisation passes are wasted on them; a
# ResNet-18's init (dozens of RNG calls) compiles in a third of the time without them.
_ONE_SHOT_CPU_OPTIONS = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
}


def platform() -> str:
    """The platform the decisions are made for: "cpu", "gpu" or "tpu"."""
    import jax

    return _forced_platform or jax.default_backend()


@contextlib.contextmanager
def forced(name: str) -> Iterator[None]:
    """Within the block, decide as on platform `name` (decisions are taken at build/trace)."""
    global _forced_platform
    saved, _forced_platform = _forced_platform, name
    try:
        yield
    finally:
        _forced_platform = saved


@contextlib.contextmanager
def folding(enabled: bool) -> Iterator[None]:
    """Within the block, eval forwards built (traced) fold BatchNorm or not (A/B, tests)."""
    global _fold_batch_norm
    saved, _fold_batch_norm = _fold_batch_norm, enabled
    try:
        yield
    finally:
        _fold_batch_norm = saved


def compiler_options(*, once: bool = False) -> dict[str, Any] | None:
    """The compiler options `jit` adds (None: XLA's defaults); `once`: for run-once code."""
    from jaxvision.backend import xla_options

    if platform() != "cpu":
        return None
    if once:
        return dict(_ONE_SHOT_CPU_OPTIONS)
    return xla_options.compiler_options()


def jit(fn: Callable, *, once: bool = False, **jit_kwargs: Any) -> Callable:
    """`jax.jit(fn, **jit_kwargs)` with this platform's compiler options."""
    import jax

    return jax.jit(fn, compiler_options=compiler_options(once=once), **jit_kwargs)


def train_branches(configured: int, has_batch_norm: bool, examples: int) -> int:
    """Branches of a train step on `examples` examples; `configured` 0 means auto."""
    from jaxvision.backend import branches

    if configured:
        return configured
    return branches.auto_branches(platform(), has_batch_norm, examples, train=True)


def train_loss(
    loss_fn: Callable, *, configured: int, has_batch_norm: bool, examples: int
) -> Callable:
    """`loss_fn(params, batch_stats, batch, rng)` over this platform's branches of the batch."""
    from jaxvision.backend import branches

    return branches.branched_loss(loss_fn, train_branches(configured, has_batch_norm, examples))


def forward(model: Any, variables: dict, images: Any) -> Any:
    """Eval-mode logits [N, K] of `model`, over this platform's branches of the batch; within
    `folding(True)` on CPU with BatchNorm folded into the convolutions before it
    (`batchnorm_folding`), unless the model's class sets `fold_batch_norm = False`."""
    from jaxvision import batchnorm_folding
    from jaxvision.backend import branches

    b = branches.auto_branches(platform(), False, images.shape[0], train=False)
    apply = lambda v, x: model.apply(v, x, train=False)
    if platform() == "cpu" and _fold_batch_norm and getattr(model, "fold_batch_norm", True):
        variables, apply = batchnorm_folding.fold_forward(apply, variables, images)
    return branches.branched_apply(apply, b)(variables, images)


def tune_model(model: Any) -> Any:
    """`model` with this platform's faster convolutions where it takes them (ResNet blocks)."""
    from jaxvision.backend import convolution

    fields = {f.name for f in dataclasses.fields(model)}
    if platform() != "cpu" or "block_conv" not in fields or model.block_conv is not None:
        return model
    return model.clone(block_conv=convolution.conv_general_dilated)


def prepare_process() -> None:
    """First thing in a command-line entry point's `__main__` block, before JAX starts: the
    process re-executes itself once with huge pages for XLA's buffers where that helps."""
    from jaxvision.backend import host_memory

    host_memory.reexec_with_huge_pages()


def configure_compile_cache(directory: str | None) -> None:
    """Keeps compiled steps in `directory` (None: the default directory, "": no cache)."""
    from jaxvision.backend import compile_cache

    compile_cache.configure(directory)


def environment() -> dict[str, str]:
    """The environment settings that change this backend's speed (benchmark records)."""
    import os

    return {
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
    }
