"""One trainer per workdir: a lock file held for the whole run, naming its holder.

Both files live in `checkpoints/`, the directory the lock protects.

The lock is an OS file lock (`filelock`), so it is released when the process ends in any
way, kill -9 included; a stale holder record never blocks a rerun. Only process 0 of a
multi-process run takes it. Readers (evaluate, predict, export) never take it.
"""

import datetime
import json
import os
import socket

import filelock

from jaxvision.exit_status import RunFailure

LOCK_FILE = os.path.join("checkpoints", "jaxvision.lock")
HOLDER_FILE = os.path.join("checkpoints", "jaxvision_lock_holder.json")


class WorkdirBusy(RunFailure):
    """Another process trains in this workdir (exit status 1: rerun once it has ended)."""


class WorkdirLock:
    """Context manager: `with WorkdirLock(workdir): train...`; fails at once if held."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        os.makedirs(os.path.join(workdir, "checkpoints"), exist_ok=True)
        self._lock = filelock.FileLock(os.path.join(workdir, LOCK_FILE), timeout=0)

    def __enter__(self) -> "WorkdirLock":
        try:
            self._lock.acquire()
        except filelock.Timeout:
            raise WorkdirBusy(
                f"{self.workdir} is in use by another training run ({self._holder()}). "
                "Wait for it to end (or stop it), or train in a different --workdir."
            ) from None
        record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        with open(os.path.join(self.workdir, HOLDER_FILE), "w") as f:
            json.dump(record, f)
        return self

    def _holder(self) -> str:
        try:
            with open(os.path.join(self.workdir, HOLDER_FILE)) as f:
                r = json.load(f)
            return f"host {r['host']}, pid {r['pid']}, started {r['started']}"
        except (OSError, ValueError, KeyError):
            return "holder unknown"

    def __exit__(self, *exc) -> None:
        self._lock.release()
