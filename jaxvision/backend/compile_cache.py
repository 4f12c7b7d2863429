"""A compilation cache on disk, so a rerun or a resume skips XLA's compilation.

`python -m jaxvision.main` keeps compiled steps in `~/.cache/jaxvision/xla` (LRU, at most
`MAX_BYTES`): the scanned ViT-B/16 train step compiles in 3.9 s and loads in 0.3 s
(docs/performance.md). JAX keys each entry on the program, the compile options, the
jax/jaxlib versions and the devices, so a changed model or flag compiles afresh. A
`JAX_COMPILATION_CACHE_DIR` set in the environment wins over the default directory, and
`JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS` over the one-second threshold.
"""

import os
import warnings

import jax

DEFAULT_DIR = os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "jaxvision", "xla"
)
MAX_BYTES = 4 << 30
# Programs that compile faster than this are not worth a file (JAX's own default).
MIN_COMPILE_SECONDS = 1.0


def enable(directory: str) -> bool:
    """Caches every compilation of this process that takes a second or more in `directory`.

    A directory that cannot be created (a read-only home, say) costs the cache, not the
    run: a warning names it and this returns False.
    """
    directory = os.path.expanduser(directory)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        warnings.warn(f"No compilation cache: cannot create {directory!r} ({e}).", stacklevel=2)
        disable()
        return False
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", directory)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return True


def configure(directory: str | None) -> None:
    """`directory`'s cache; None: $JAX_COMPILATION_CACHE_DIR or `DEFAULT_DIR`; "": none."""
    if directory is None:
        directory = os.environ.get("JAX_COMPILATION_CACHE_DIR", DEFAULT_DIR)
    if directory:
        enable(directory)
    else:
        disable()


def disable() -> None:
    """No cache for this process (the benchmark measures compilation itself)."""
    jax.config.update("jax_enable_compilation_cache", False)
