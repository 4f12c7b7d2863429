"""The command line every entry point shares: absl flags, `--help`, and exit statuses.

Bad input (flags, config, dataset, path, weights) exits 2 with a message that names it;
a failure at run time (out of memory, an XLA error, a damaged checkpoint, divergence)
exits 1 with its own message; a run stopped by SIGTERM/SIGINT after saving exits 143.
See `jaxvision.exit_status` for what schedulers make of each.
"""

import sys
from collections.abc import Callable

from absl import app, flags

from jaxvision import exit_status

HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull")


# The same flag for the same thing in every tool: names and help text live here.
def define_workdir(flag_values: flags.FlagValues, required: bool = True) -> flags.FlagHolder:
    """--workdir: the training run's directory."""
    return flags.DEFINE_string(
        "workdir",
        None,
        "A training run's workdir (what python -m jaxvision.main --workdir wrote).",
        flag_values=flag_values,
        required=required,
    )


def define_checkpoint(flag_values: flags.FlagValues) -> flags.FlagHolder:
    """--checkpoint: which checkpoint of the run to load."""
    return flags.DEFINE_string(
        "checkpoint",
        "latest",
        "latest | best (highest logged eval accuracy) | a step number.",
        flag_values=flag_values,
    )


def define_ema(flag_values: flags.FlagValues) -> flags.FlagHolder:
    """--ema: use the run's exponential moving average of the weights."""
    return flags.DEFINE_bool(
        "ema", False, "Use the EMA weights instead of the trained ones.", flag_values=flag_values
    )


def define_split(flag_values: flags.FlagValues) -> flags.FlagHolder:
    """--split: a split of the run's dataset."""
    return flags.DEFINE_string(
        "split", None, "Dataset split (default: the run's eval split).", flag_values=flag_values
    )


def define_top_k(flag_values: flags.FlagValues) -> flags.FlagHolder:
    """--top_k: labels reported per image."""
    return flags.DEFINE_integer(
        "top_k", 5, "Labels per image.", lower_bound=1, flag_values=flag_values
    )


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.filename}: {error.strerror}."
    return str(error) or type(error).__name__


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in str(error)


def _is_tensorflow_error(error: BaseException) -> bool:
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(error, tf.errors.OpError)


def exit_code(error: BaseException) -> int:
    """The exit status an exception that ends a command means (see `jaxvision.exit_status`)."""
    if isinstance(error, exit_status.Preempted):
        return exit_status.PREEMPTED
    if isinstance(error, flags.Error | app.UsageError | FileNotFoundError | NotADirectoryError):
        return exit_status.BAD_INPUT
    if isinstance(error, ValueError) and not _is_out_of_memory(error):
        return exit_status.BAD_INPUT  # BadInputError, config and dataset checks, WorkdirError
    return exit_status.FAILURE


def message(error: BaseException) -> str:
    """What the user reads on stderr for an exception that ends a command."""
    status = exit_code(error)
    if status == exit_status.PREEMPTED:
        return str(error)
    if status == exit_status.BAD_INPUT:
        return f"error: {_describe(error)}"
    if _is_out_of_memory(error):
        return (
            f"error: out of memory (a runtime failure, not bad input): {_describe(error)}\n"
            "Use a smaller batch (--config.batch_size, --config.eval_batch_size), a smaller "
            "model or image size, or a machine with more memory, then rerun the same command."
        )
    return (
        f"error: the run failed ({type(error).__name__}): {_describe(error)}\n"
        "This is a runtime failure, not bad input: fix its cause and rerun the same command."
    )


# What ends a command with a message instead of a traceback: bad input and runtime failures.
_HANDLED = (
    exit_status.Preempted,
    flags.Error,
    app.UsageError,
    ValueError,
    OSError,
    RuntimeError,
    MemoryError,
)


def _is_handled(error: BaseException) -> bool:
    return isinstance(error, _HANDLED) or _is_tensorflow_error(error)


def call(body: Callable[[], int | None]) -> int:
    """Runs `body`; an exception it raises becomes its message on stderr and its exit status.

    Exceptions that mean neither bad input nor a known runtime failure (bugs) propagate
    with their traceback and Python's exit status 1.
    """
    try:
        return body() or exit_status.OK
    except Exception as e:
        if not _is_handled(e):
            raise
        print(message(e), file=sys.stderr, flush=True)
        return exit_code(e)


def reports_failures(main: Callable[[list[str]], int | None]) -> Callable[[list[str]], int]:
    """`main(argv)` for `absl.app.run` that exits with the shared statuses (see `call`)."""

    def wrapped(argv: list[str]) -> int:
        return call(lambda: main(argv))

    wrapped.__doc__ = main.__doc__
    return wrapped


def parse_global_flags(argv: list[str]) -> list[str]:
    """`flags_parser` for `absl.app.run`: --help exits 0, a bad flag exits 2 (not absl's 1)."""
    if any(arg in HELP_FLAGS for arg in argv[1:]):
        app.usage(shorthelp="--helpfull" not in argv, writeto_stdout=True, exitcode=0)
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}\nRun with --help to list the flags.", file=sys.stderr)
    except (AttributeError, KeyError) as e:
        # ml_collections' config flag raises these for a --config.KEY override it lacks.
        print(
            f"error: no such config key {e}: check the --config.KEY=VALUE overrides "
            "(jaxvision/config.py lists every key).",
            file=sys.stderr,
        )
    sys.exit(exit_status.BAD_INPUT)


def help_text(doc: str, flag_values: flags.FlagValues) -> str:
    """The command's docstring and one entry per flag: name, help, default."""
    lines = [doc.strip(), "", "flags:"]
    for name in sorted(flag_values):
        flag = flag_values[name]
        if flag.name != name:
            continue  # a short name; listed under its long one
        text = f"--{flag.name}: {flag.help}"
        if flag.default is not None and not (flag.boolean and flag.default is False):
            text += f" (default: {flag.default_as_str})"
        lines.append(flags.text_wrap(text, indent="      ", firstline_indent="  "))
    return "\n".join(lines)


def run(
    name: str,
    doc: str,
    flag_values: flags.FlagValues,
    body: Callable[[list[str]], int | None],
    argv: list[str] | None,
) -> int:
    """Parses `argv` (default: the process's) into `flag_values` and calls `body(args)`.

    `body` gets the positional arguments. Returns the exit status; callable many times in
    one process (tests), since every call starts from the flags' defaults.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(arg in HELP_FLAGS for arg in argv):
        print(help_text(doc, flag_values))
        return exit_status.OK
    flag_values.unparse_flags()
    try:
        args = flag_values([name, *argv])[1:]
    except flags.Error as e:
        print(f"error: {e}\nRun with --help to list the flags.", file=sys.stderr)
        return exit_status.BAD_INPUT
    _quiet_absl_logging()
    return call(lambda: body(args))


def _quiet_absl_logging() -> None:
    # Libraries (Orbax) log through absl, which warns about unparsed global flags on its
    # first line when no absl.app.run parsed them; these tools parse their own.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
