"""Command line: python -m jaxvision.main --config=FILE[:ARG] --workdir=DIR [--config.KEY=VALUE].

Several machines: start the same command on each. Under SLURM, MPI or on a Cloud TPU pod
the processes find each other; elsewhere pass --coordinator_address, --num_processes and
--process_id (see docs/scaling.md).
"""

import logging

from absl import app, flags

from jaxvision import command_line, config_overrides

_CONFIG = config_overrides.define_config_flag()
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "HOST:PORT of process 0, for multi-process runs without a launcher."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Number of processes (with coordinator).")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index, 0..num_processes-1.")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache_dir",
    None,
    "Where compiled steps are kept for reruns and resumes; '' for none. Default: "
    "$JAX_COMPILATION_CACHE_DIR if set, else ~/.cache/jaxvision/xla.",
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    """Hands the parsed config to `train.run` (exit statuses: `jaxvision.command_line`)."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    import jax

    from jaxvision import backend, console, parallel, train

    console.setup()
    backend.configure_compile_cache(_COMPILATION_CACHE.value)
    # Before process_index() below starts JAX; train.run's own call is for notebooks.
    parallel.set_cpu_devices(_CONFIG.value.parallel.cpu_devices)
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if jax.process_index() != 0:
        console.log.setLevel(logging.WARNING)  # one copy of the progress lines
    result = train.run(_CONFIG.value, _WORKDIR.value)
    console.log.info("Final: %s", {k: round(v, 4) for k, v in result.items()})


if __name__ == "__main__":
    from jaxvision import backend

    backend.prepare_process()
    app.run(command_line.reports_failures(main), flags_parser=command_line.parse_global_flags)
