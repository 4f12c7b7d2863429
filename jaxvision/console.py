"""jaxvision's own console log: progress and results, separate from library chatter."""

import logging
import sys

log = logging.getLogger("jaxvision")


def setup(level: int = logging.INFO) -> None:
    """Prints jaxvision lines to stderr and quiets the INFO logs of Orbax, TF and absl."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
