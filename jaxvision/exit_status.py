"""What a jaxvision process's exit status means, the same for every entry point.

Schedulers act on these: SLURM and Kubernetes restart or requeue a job on a non-zero
status, so a preempted run must not exit 0, and a run that can never succeed (bad input)
is told apart from one that failed at run time.
"""

OK = 0
# Runtime failure: divergence, a damaged or unwritable checkpoint, out of memory, an XLA
# error. Rerunning the same command may help once the cause is fixed.
FAILURE = 1
# Bad input: config, dataset, path or weights. Reported before anything is compiled;
# rerunning the same command fails the same way.
BAD_INPUT = 2
# Stopped by SIGTERM or SIGINT after saving a checkpoint at the current step (128 +
# SIGTERM, what a shell reports for a terminated process): rerun the same command to resume.
PREEMPTED = 143


class BadInputError(ValueError):
    """Bad input a user can correct (config, dataset, path, weights): exit status 2."""


class RunFailure(RuntimeError):
    """A failure at run time (damaged checkpoint, unwritable workdir, ...): exit status 1."""


class Preempted(Exception):
    """Training stopped on a signal after saving `step`; the same command resumes it."""

    def __init__(self, signal_name: str, step: int):
        super().__init__(
            f"{signal_name} received: saved a checkpoint at step {step} and stopped. "
            "Run the same command again to resume."
        )
        self.signal_name = signal_name
        self.step = step
