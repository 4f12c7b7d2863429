"""Command line: python -m jaxvision.main --config=FILE[:ARG] --workdir=DIR [--config.KEY=VALUE]."""

import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    """Hands the parsed config to `train.run`; bad input exits 2 with the reason."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from jaxvision import console, train

    console.setup()

    try:
        result = train.run(_CONFIG.value, _WORKDIR.value)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    console.log.info("Final: %s", {k: round(v, 4) for k, v in result.items()})


if __name__ == "__main__":
    app.run(main)
