"""Checkpoints of the train state with Orbax, plus an integrity manifest of our own.

Orbax saves asynchronously and finalises a step atomically (a step directory only appears
once complete), keeping the last N. Orbax does not notice bytes damaged after the save, so
once a step is finalised process 0 writes `jaxvision_manifest.json` into it: the size and
SHA-256 of every file. A step counts only once its manifest exists, and its files are
checked against it before any restore; a damaged step is reported and the previous good
one is used instead.
"""

import hashlib
import json
import os
import re
import threading

import jax
import orbax.checkpoint as ocp
from etils import epath

from jaxvision.console import log
from jaxvision.steps import TrainState

MANIFEST = "jaxvision_manifest.json"


class CheckpointError(RuntimeError):
    """No usable checkpoint: the message lists what is wrong and what to do."""


# File access goes through epath so that gs:// (and other remote) workdirs work too.


def _sha256(path: epath.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(step_dir: str) -> dict[str, epath.Path]:
    """Relative path -> path of every file of a step, except the manifest."""
    root = epath.Path(step_dir)
    found = {}
    for directory, _, names in root.walk():
        for name in names:
            path = epath.Path(directory) / name
            rel = str(path.relative_to(root))
            if rel not in (MANIFEST, MANIFEST + ".tmp"):
                found[rel] = path
    return found


def _size(path: epath.Path) -> int:
    return int(path.stat().length)


def write_manifest(step_dir: str) -> None:
    """Records size and SHA-256 of every file of a finalised step, then publishes it."""
    entries = {
        rel: {"bytes": _size(p), "sha256": _sha256(p)}
        for rel, p in sorted(_files(step_dir).items())
    }
    tmp = epath.Path(step_dir) / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"files": entries}, indent=1))
    tmp.replace(epath.Path(step_dir) / MANIFEST)  # readers never see a partial manifest


def verify(step_dir: str) -> list[str]:
    """What differs between a step's files and its manifest (empty when intact)."""
    path = epath.Path(step_dir) / MANIFEST
    try:
        expected = json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError) as e:
        return [f"{path} is missing or unreadable ({e})"]
    actual = _files(step_dir)
    problems = [f"missing file {rel}" for rel in sorted(set(expected) - set(actual))]
    problems += [f"unexpected file {rel}" for rel in sorted(set(actual) - set(expected))]
    for rel in sorted(set(expected) & set(actual)):
        size = _size(actual[rel])
        if size != expected[rel]["bytes"]:
            problems.append(f"{rel}: {size} bytes, expected {expected[rel]['bytes']}")
        elif _sha256(actual[rel]) != expected[rel]["sha256"]:
            problems.append(f"{rel}: contents changed (SHA-256 mismatch)")
    return problems


def _leaf_name(path: tuple) -> str:
    return "/".join(re.sub(r"[\[\]'.]", "", jax.tree_util.keystr((k,))) for k in path)


def _shapes(tree) -> dict[str, tuple]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_leaf_name(p): tuple(getattr(x, "shape", ())) for p, x in flat}


def describe_mismatch(saved, expected, limit: int = 12) -> list[str]:
    """Leaves missing, extra or differently shaped between two trees (checkpoint vs config)."""
    a, b = _shapes(saved), _shapes(expected)
    lines = [f"only in the checkpoint: {k} {a[k]}" for k in sorted(set(a) - set(b))]
    lines += [f"only in this config: {k} {b[k]}" for k in sorted(set(b) - set(a))]
    lines += [
        f"shape of {k}: checkpoint {a[k]}, this config {b[k]}"
        for k in sorted(set(a) & set(b))
        if a[k] != b[k]
    ]
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])


class Checkpoints:
    """The run's `checkpoints/` directory: save, verify, restore and list finalised steps."""

    def __init__(self, directory: str, *, keep: int = 3):
        self.directory = directory if "://" in directory else os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            create=True,
            cleanup_tmp_directories=True,  # leftovers of a save that was killed midway
            enable_async_checkpointing=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )
        self._manifest_threads: list[threading.Thread] = []

    def step_dir(self, step: int) -> str:
        """The directory of one step."""
        return str(epath.Path(self.directory) / str(step))

    def all_steps(self) -> list[int]:
        """Every finalised step that has its manifest, oldest first."""
        return sorted(
            s
            for s in self._manager.all_steps()
            if (epath.Path(self.step_dir(s)) / MANIFEST).exists()
        )

    def latest_step(self) -> int | None:
        """The newest finalised step, or None; unfinished (interrupted) saves never count."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, state: TrainState, meta: dict) -> None:
        """Starts an asynchronous save of `state` and JSON `meta`; the manifest follows it."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        if jax.process_index() == 0:
            thread = threading.Thread(target=self._write_manifest, args=(step,), daemon=True)
            thread.start()
            self._manifest_threads.append(thread)

    def _write_manifest(self, step: int) -> None:
        try:
            self._manager.wait_until_finished()
            if epath.Path(self.step_dir(step)).is_dir():
                write_manifest(self.step_dir(step))
        except Exception as e:  # a failed save: the step simply never counts
            log.warning("Checkpoint step %d was not finalised: %s", step, e)

    def read_meta(self, step: int) -> dict:
        """The JSON metadata saved with `step` (cheap: no arrays are read)."""
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return restored["meta"]

    def restore(self, step: int, like: TrainState) -> tuple[TrainState, dict]:
        """Verifies `step` and reads it into the structure, dtypes and shardings of `like`."""
        problems = verify(self.step_dir(step))
        if problems:
            raise CheckpointError(
                f"Checkpoint {self.step_dir(step)} is damaged: " + "; ".join(problems[:10])
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                ),
            )
        except Exception as e:
            raise CheckpointError(self._incompatible(step, like, e)) from e
        return restored["state"], restored["meta"]

    def _incompatible(self, step: int, like: TrainState, error: Exception) -> str:
        try:
            saved = self._manager.item_metadata(step)["state"]
            lines = describe_mismatch(saved, like)
        except Exception:  # the metadata itself is unreadable: report the original error
            lines = []
        detail = "\n  ".join(lines) if lines else str(error)
        return (
            f"Cannot restore checkpoint step {step} from {self.directory}: it does not match "
            f"this config's model/optimizer:\n  {detail}\n"
            "Use a fresh --workdir, or the config the run was trained with."
        )

    def restore_latest(self, like: TrainState) -> tuple[TrainState, dict, int] | None:
        """The newest intact step (falling back past damaged ones with a warning), or None."""
        steps = self.all_steps()
        damaged = []
        for step in reversed(steps):
            problems = verify(self.step_dir(step))
            if not problems:
                state, meta = self.restore(step, like)
                self._drop_steps_after(step)
                return state, meta, step
            damaged.append(f"step {step}: " + "; ".join(problems[:5]))
            log.warning(
                "Checkpoint step %d is damaged (%s); trying the previous one.",
                step,
                "; ".join(problems[:5]),
            )
        if damaged:
            raise CheckpointError(
                f"Every checkpoint in {self.directory} is damaged:\n  "
                + "\n  ".join(damaged)
                + "\nDelete the damaged step directories to start over, or use a fresh --workdir."
            )
        self._drop_steps_after(None)
        return None

    def _drop_steps_after(self, step: int | None) -> None:
        """Deletes saves newer than the restored `step` (no manifest yet, or damaged).

        The resumed run redoes those steps and saves them again; left in place they would
        block that save ("Checkpoint for step N already exists").
        """
        for newer in self._manager.all_steps():
            if step is None or newer > step:
                log.warning("Removing unverified checkpoint step %d; it will be redone.", newer)
                self._manager.delete(newer)

    def wait(self) -> None:
        """Blocks until every pending save is finalised on disk with its manifest."""
        self._manager.wait_until_finished()
        for thread in self._manifest_threads:
            thread.join()
        self._manifest_threads = []

    def close(self) -> None:
        """Finishes pending saves and releases the manager."""
        self.wait()
        self._manager.close()
