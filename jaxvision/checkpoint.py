"""Checkpoints of the train state with Orbax, plus an integrity manifest of our own.

Orbax saves asynchronously and finalises a step atomically (a step directory only appears
once complete; on gs:// a step counts once Orbax wrote its `commit_success.txt` into it).
Once a step is finalised process 0 writes `jaxvision_manifest.json` into it: the size and
SHA-256 of every file, and which workdir saved it. Its files are checked
against it before any restore.

What this module deletes, and only while the run holds the workdir's lock: old steps that
this workdir's runs saved and verified (keep-last-N, never the newest verified one), and
Orbax's temporary directories of saves that were killed midway (on gs://, where a step is
written in place, the step directories Orbax never committed). It never deletes through
a symbolic link, a step another tool wrote, a step holding files it did not write, or a
step it cannot verify: such a step is kept and reported, or moved aside as
`checkpoints/_unverified_<step>`. Readers (`open_read_only`) never modify anything.
"""

import os
import re
import shutil
import threading
import uuid

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxvision import parallel, workdir_files
from jaxvision.checkpoint_manifest import (
    MANIFEST,
    extra_files,
    read_manifest,
    verify,
    write_manifest,
)
from jaxvision.checkpoint_manifest import step_files as _files  # noqa: F401 (tests)
from jaxvision.console import log
from jaxvision.exit_status import RunFailure
from jaxvision.steps import TrainState

# The workdir's identity: steps whose manifest names it were saved by this workdir's runs.
WORKDIR_ID = "jaxvision_workdir_id"
UNVERIFIED_PREFIX = "_unverified_"
_TMP_SUFFIX = ".orbax-checkpoint-tmp"
# What Orbax writes last into a step saved in place (gs://), where renames are not atomic.
_COMMIT_FILE = "commit_success.txt"


class CheckpointError(RunFailure):
    """No usable checkpoint: the message lists what is wrong and what to do."""


def _is_link(path: str) -> bool:
    return not workdir_files.is_remote(path) and os.path.islink(path)


@jax.jit
def _finite_flag(leaves: list) -> jax.Array:
    # One compiled reduction to a single flag (compiled once per tree structure): the
    # weights never leave the devices, only the flag does.
    return jnp.stack([jnp.isfinite(x).all() for x in leaves]).all()


def all_finite(tree) -> bool:
    """Whether every floating-point leaf of `tree` is free of NaN and Inf."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, np.inexact)]
    return not leaves or bool(jax.device_get(_finite_flag(leaves)))


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


def _workdir_id(directory: str, *, create: bool) -> str:
    """This checkpoints directory's identity (created by the first writer)."""
    path = epath.Path(directory) / WORKDIR_ID
    if path.exists():
        return path.read_text().strip()
    if not create:
        return ""
    value = uuid.uuid4().hex
    path.write_text(value + "\n")
    return value


class Checkpoints:
    """The run's `checkpoints/` directory: save, verify, restore and list finalised steps.

    The writer (the one trainer holding the workdir's lock) opens it with the default
    `read_only=False`; anyone else uses `open_read_only`.
    """

    def __init__(self, directory: str, *, keep: int = 3, read_only: bool = False):
        self.directory = workdir_files.absolute(directory)
        self.keep = keep
        self.read_only = read_only
        options = ocp.CheckpointManagerOptions(
            # jaxvision decides what to delete (`_collect`); Orbax keeps everything, and its
            # own clean-up of temporary directories is off (see `_remove_interrupted_saves`).
            preservation_policy=ocp.checkpoint_managers.LatestN(None),  # None: all
            create=not read_only,
            cleanup_tmp_directories=False,
            enable_async_checkpointing=not read_only,
            read_only=read_only,
        )
        try:
            self._manager = ocp.CheckpointManager(
                self.directory, options=options, item_names=("state", "meta")
            )
        except OSError as e:
            raise RunFailure(self._cannot_open(e)) from e
        self._pending: threading.Thread | None = None
        self._errors: list[str] = []
        if not read_only:
            self._on_process_0("prepare the directory", self._prepare)
        try:
            self.workdir_id = _workdir_id(self.directory, create=False)
        except OSError as e:
            raise RunFailure(self._cannot_open(e)) from e

    def _cannot_open(self, error: Exception) -> str:
        return (
            f"Cannot open {self.directory} for checkpoints: {error}. Check that the workdir "
            "is writable and its disk has space."
        )

    def _prepare(self) -> None:
        try:
            _workdir_id(self.directory, create=True)
        except OSError as e:
            raise RunFailure(self._cannot_open(e)) from e
        self._remove_interrupted_saves()

    def _on_process_0(self, what: str, change) -> None:
        """Only process 0 (the lock holder) changes the directory; every process waits for
        it at a barrier, then sees the result. All processes fail if the change failed."""
        error = None
        if jax.process_index() == 0:
            try:
                change()
            except Exception as e:  # re-raised below, after the others know
                error = e
        if parallel.any_process(error is not None):  # the barrier
            if error is not None:
                raise error
            raise RunFailure(f"Process 0 could not {what} in {self.directory}; see its log.")
        self._manager.reload()

    def step_dir(self, step: int) -> str:
        """The directory of one step."""
        return str(epath.Path(self.directory) / str(step))

    def finalised_steps(self) -> list[int]:
        """Every step Orbax finalised, with or without a manifest, oldest first."""
        return sorted(self._manager.all_steps())

    def all_steps(self) -> list[int]:
        """Every finalised step that has its manifest, oldest first."""
        return [
            s for s in self.finalised_steps() if (epath.Path(self.step_dir(s)) / MANIFEST).exists()
        ]

    def latest_step(self) -> int | None:
        """The newest finalised step with a manifest, or None."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def _writable(self) -> None:
        if self.read_only:
            raise RunFailure(f"{self.directory} was opened read-only; it cannot be changed.")

    def save(self, step: int, state: TrainState, meta: dict) -> None:
        """Starts an asynchronous save of `state` and JSON `meta`; the manifest follows it.

        Raises RunFailure when an earlier save or manifest could not be written.
        """
        self._writable()
        self.wait()  # one save at a time: an earlier failure stops the run here
        meta = {**meta, "workdir_id": self.workdir_id}
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
                force=True,
            )
        except Exception as e:
            raise RunFailure(self._save_failed(step, e)) from e
        if jax.process_index() == 0:
            self._pending = threading.Thread(target=self._finish_save, args=(step,), daemon=True)
            self._pending.start()

    def _save_failed(self, step: int, error: Exception) -> str:
        last = self.latest_step()
        return (
            f"Could not write checkpoint step {step} to {self.directory}: {error}. "
            + (f"The last good checkpoint is step {last}. " if last is not None else "")
            + "Free disk space or fix the permissions, then rerun the same command to resume."
        )

    def _finish_save(self, step: int) -> None:
        """Waits for Orbax to finalise `step`, writes its manifest, then removes old steps."""
        try:
            self._manager.wait_until_finished()
            if not epath.Path(self.step_dir(step)).is_dir():
                raise OSError("Orbax did not finalise it (see the log above)")
            write_manifest(self.step_dir(step), workdir_id=self.workdir_id)
        except Exception as e:
            self._errors.append(self._save_failed(step, e))
            return
        try:
            self._collect()
        except OSError as e:  # nothing is lost: the step stays, reported
            log.warning("Could not remove old checkpoints in %s: %s", self.directory, e)

    def _collect(self) -> None:
        """Keep-last-N over the steps this workdir saved and verified; the rest stay."""
        owned = []
        for step in self.all_steps():
            path = self.step_dir(step)
            record = read_manifest(path) or {}
            if _is_link(path) or record.get("workdir_id") != self.workdir_id:
                continue
            if record.get("origin") == "saved":
                owned.append(step)
        newest = self.latest_step()
        for step in owned[: max(len(owned) - self.keep, 0)]:
            path = self.step_dir(step)
            if step == newest:
                continue
            extras = extra_files(path)
            if extras:
                log.warning(
                    "Keeping old checkpoint %s: it holds files jaxvision did not write (%s). "
                    "Move them out and delete the step yourself.",
                    path,
                    ", ".join(extras[:5]),
                )
                continue
            if verify(path):  # damaged since: kept as evidence, never the only copy lost
                continue
            self._remove_tree(path)
        self._manager.reload()

    def _remove_tree(self, path: str) -> None:
        """Deletes a step this run owns so that a kill midway never leaves a half step."""
        if _is_link(path):
            return
        step = epath.Path(path)
        if workdir_files.is_remote(path):
            # An object store renames by copying every object. Instead the step is
            # uncommitted first, so a kill midway leaves what the next start removes as an
            # unfinished save (or, killed between the two, an intact step it adopts again).
            (step / MANIFEST).unlink(missing_ok=True)
            (step / _COMMIT_FILE).unlink(missing_ok=True)
            step.rmtree()
            return
        doomed = step.parent / f"_deleting_{step.name}"
        step.rename(doomed)
        shutil.rmtree(str(doomed))  # unlinks symbolic links inside, never follows them

    def _unfinished_in_place(self, path: epath.Path) -> bool:
        """Whether `path` is a step Orbax began writing in place and never committed: on
        gs:// a step has no temporary name, it is finalised by `commit_success.txt`."""
        return (
            workdir_files.is_remote(self.directory)
            and re.fullmatch(r"\d+", path.name) is not None
            and not (path / _COMMIT_FILE).exists()
            and not (path / MANIFEST).exists()
        )

    def _remove_interrupted_saves(self) -> None:
        """Removes what killed saves of this workdir's runs left: Orbax temporary
        directories (on gs://, uncommitted steps) and half-deleted old steps (only the
        lock holder calls this)."""
        root = epath.Path(self.directory)
        for path in root.iterdir():
            name = path.name
            temporary = re.fullmatch(r"\d+" + re.escape(_TMP_SUFFIX) + r".*", name)
            half_deleted = re.fullmatch(r"_deleting_\d+", name)
            if _is_link(str(path)):
                continue
            if not (temporary or half_deleted or self._unfinished_in_place(path)):
                continue
            log.info("Removing %s, left by an interrupted save or clean-up.", path)
            if workdir_files.is_remote(str(path)):
                path.rmtree()
            else:
                shutil.rmtree(str(path))

    def read_meta(self, step: int) -> dict:
        """The JSON metadata saved with `step` (cheap: no arrays are read)."""
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return restored["meta"]

    def _read(self, step: int, like: TrainState) -> tuple[TrainState, dict]:
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

    def restore(self, step: int, like: TrainState) -> tuple[TrainState, dict]:
        """Verifies `step` and reads it into the structure, dtypes and shardings of `like`."""
        problems = verify(self.step_dir(step))
        if problems:
            raise CheckpointError(
                f"Checkpoint {self.step_dir(step)} is damaged: " + "; ".join(problems[:10])
            )
        extras = extra_files(self.step_dir(step))
        if extras:
            log.warning(
                "Checkpoint %s holds files jaxvision did not write, ignored: %s",
                self.step_dir(step),
                ", ".join(extras[:5]),
            )
        return self._read(step, like)

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
        """The newest usable step, or None when there is none (a fresh start).

        A finalised step without a manifest (copied, written by another tool or killed
        before its manifest) is verified by reading it and then gets its manifest. A
        damaged step is moved aside to `_unverified_<step>` once an older intact one is
        found; if none is intact, nothing is moved and CheckpointError lists them.
        Only process 0 moves or adopts; every process decides from the same listing.
        """
        self._writable()
        listed = [
            (step, (epath.Path(self.step_dir(step)) / MANIFEST).exists())
            for step in reversed(self.finalised_steps())
        ]
        parallel.barrier("jaxvision_checkpoints_listed")  # before process 0 changes any
        damaged = []
        for step, has_manifest in listed:
            path = self.step_dir(step)
            if not has_manifest:
                state, meta = self._adopt(step, like)
            else:
                problems = verify(path)
                if problems:
                    damaged.append((step, problems))
                    log.warning(
                        "Checkpoint step %d is damaged (%s); trying the previous one.",
                        step,
                        "; ".join(problems[:5]),
                    )
                    continue
                state, meta = self.restore(step, like)
            for newer, _ in damaged:
                self._move_aside(newer)
            self._report_kept()
            return state, meta, step
        if damaged:
            raise CheckpointError(
                f"Every checkpoint in {self.directory} is damaged:\n  "
                + "\n  ".join(f"step {s}: " + "; ".join(p[:5]) for s, p in damaged)
                + "\nNothing was deleted. Move the damaged step directories out of "
                f"{self.directory} to start over, or use a fresh --workdir."
            )
        return None

    def _adopt(self, step: int, like: TrainState) -> tuple[TrainState, dict]:
        """Reads a step that has no manifest; once it restores, gives it one."""
        path = self.step_dir(step)
        try:
            state, meta = self._read(step, like)
        except CheckpointError as e:
            raise CheckpointError(
                f"Checkpoint {path} has no {MANIFEST} and cannot be read as this config's "
                f"train state, so it was left untouched.\n{e}\nIf it is not this run's, move "
                f"it out of {self.directory}; if it is, rerun with the config it was trained "
                "with."
            ) from e
        if not all_finite(state.params):
            raise CheckpointError(
                f"Checkpoint {path} has no {MANIFEST} and holds NaN/Inf weights; it was left "
                f"untouched. Move it out of {self.directory} to resume from an earlier step."
            )
        ours = isinstance(meta, dict) and meta.get("workdir_id") == self.workdir_id
        if _is_link(path):
            log.warning("Checkpoint %s (a symbolic link) was verified by reading it.", path)
            return state, meta

        def give_manifest():
            try:
                origin = "saved" if ours else "adopted"
                write_manifest(path, workdir_id=self.workdir_id, origin=origin)
            except OSError as e:
                raise RunFailure(
                    f"Could not write {MANIFEST} into {path}: {e}. Make it writable, or move "
                    f"the step out of {self.directory}."
                ) from e

        self._on_process_0(f"write {MANIFEST} of step {step}", give_manifest)
        log.warning(
            "Checkpoint %s had no %s; it restored intact and now has one%s.",
            path,
            MANIFEST,
            "" if ours else " (it was not saved by this workdir's runs, so it is never deleted)",
        )
        return state, meta

    def _move_aside(self, step: int) -> None:
        """Renames an unverifiable step so it is kept but no longer counts or blocks a redo."""

        def rename():
            path = epath.Path(self.step_dir(step))
            target = path.parent / f"{UNVERIFIED_PREFIX}{step}"
            n = 1
            while target.exists() or _is_link(str(target)):
                n += 1
                target = path.parent / f"{UNVERIFIED_PREFIX}{step}_{n}"
            path.rename(target)
            log.warning(
                "Moved damaged checkpoint step %d aside to %s; its steps will be redone. "
                "Delete it once you no longer need it.",
                step,
                target,
            )

        self._on_process_0(f"move damaged step {step} aside", rename)

    def _report_kept(self) -> None:
        """Says which steps keep-last-N will never remove, and why."""
        for step in self.all_steps():
            path = self.step_dir(step)
            record = read_manifest(path) or {}
            if _is_link(path):
                why = "a symbolic link"
            elif record.get("workdir_id") != self.workdir_id or record.get("origin") != "saved":
                why = "not saved by this workdir's runs"
            else:
                extras = extra_files(path)
                why = f"it holds files jaxvision did not write ({', '.join(extras[:3])})"
                if not extras:
                    continue
            log.info("Checkpoint step %d is kept whatever keep_checkpoints says: %s.", step, why)

    def wait(self) -> None:
        """Blocks until the pending save is finalised with its manifest; raises RunFailure
        if a save or manifest could not be written."""
        if self._pending is not None:
            self._pending.join()
            self._pending = None
        elif not self.read_only:
            self._manager.wait_until_finished()
        if self._errors:
            errors, self._errors = self._errors, []
            raise RunFailure("\n".join(errors))

    def close(self) -> None:
        """Finishes pending saves and releases the manager; raises RunFailure as `wait`."""
        try:
            self.wait()
        finally:
            self._manager.close()


def open_read_only(directory: str) -> Checkpoints:
    """Opens a run's `checkpoints/` for reading while it may still be training: no temporary
    directory is cleaned up, no step deleted, nothing written."""
    if not workdir_files.is_dir(directory):
        raise RunFailure(f"{directory} does not exist; train (or resume) the run first.")
    return Checkpoints(directory, read_only=True)
