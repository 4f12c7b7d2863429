"""One trainer per workdir: a lock file held for the whole run, naming its holder.

On a local (or mounted) workdir both files live in `checkpoints/`, the directory the lock
protects. The lock is an OS file lock (`filelock`), so it is released when the process
ends in any way, kill -9 included; a stale holder record never blocks a rerun. Only
process 0 of a multi-process run takes it. Readers (evaluate, predict, export) never do.

An object store (`gs://...`) has no locks that a killed process releases, so for a remote
workdir the lock is a local file keyed by the workdir's URL (under `JAXVISION_LOCK_DIR`,
default `~/.cache/jaxvision/locks`): a second trainer on the same machine is refused; one
on another machine is only warned about, through the holder record the first one leaves in
the workdir's `checkpoints/` (docs/scaling.md, "Remote workdirs").
"""

import datetime
import hashlib
import json
import os
import socket

import filelock

from jaxvision import workdir_files
from jaxvision.console import log
from jaxvision.exit_status import RunFailure

LOCK_NAME = "jaxvision.lock"
HOLDER_NAME = "jaxvision_lock_holder.json"


class WorkdirBusy(RunFailure):
    """Another process trains in this workdir (exit status 1: rerun once it has ended)."""


def lock_dir(workdir: str) -> str:
    """The local directory holding `workdir`'s lock: its checkpoints/, or for a URL a
    directory under JAXVISION_LOCK_DIR named after the URL's hash."""
    if not workdir_files.is_remote(workdir):
        return workdir_files.checkpoints_dir(workdir)
    home = os.environ.get("JAXVISION_LOCK_DIR") or os.path.expanduser("~/.cache/jaxvision/locks")
    return os.path.join(home, hashlib.sha256(workdir.rstrip("/").encode()).hexdigest()[:24])


def _describe(record: dict) -> str:
    return f"host {record['host']}, pid {record['pid']}, started {record['started']}"


class WorkdirLock:
    """Context manager: `with WorkdirLock(workdir): train...`; fails at once if held."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self._dir = lock_dir(workdir)
        os.makedirs(self._dir, exist_ok=True)
        self._holder_path = os.path.join(self._dir, HOLDER_NAME)
        self._remote_holder = None
        if workdir_files.is_remote(workdir):
            self._remote_holder = workdir_files.join(
                workdir_files.checkpoints_dir(workdir), HOLDER_NAME
            )
        self._lock = filelock.FileLock(os.path.join(self._dir, LOCK_NAME), timeout=0)

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
        with open(self._holder_path, "w") as f:
            json.dump(record, f)
        if self._remote_holder is not None:
            self._claim_remote(record)
        return self

    def _claim_remote(self, record: dict) -> None:
        """Warns about a holder record another machine left, then leaves ours."""
        try:
            other = json.loads(workdir_files.read_text(self._remote_holder))
            if other.get("host") != record["host"]:
                log.warning(
                    "%s may be in use by a run on another machine (%s), or that run was killed. "
                    "Object stores have no locks: make sure only one run trains here.",
                    self.workdir,
                    _describe(other),
                )
        except (OSError, ValueError, KeyError):
            pass  # no record: nobody else announced a run here
        workdir_files.write_text(self._remote_holder, json.dumps(record))

    def _holder(self) -> str:
        try:
            with open(self._holder_path) as f:
                return _describe(json.load(f))
        except (OSError, ValueError, KeyError):
            return "holder unknown"

    def __exit__(self, *exc) -> None:
        try:
            if self._remote_holder is not None:
                workdir_files.remove(self._remote_holder)
        except OSError as e:  # the record is informative only; the run's result stands
            log.warning("Could not remove %s: %s", self._remote_holder, e)
        finally:
            self._lock.release()
