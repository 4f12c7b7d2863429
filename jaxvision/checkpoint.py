"""Checkpoints of the train state with Orbax, plus an integrity manifest of our own.

Orbax saves asynchronously and finalises a step atomically (a step directory only appears
once complete). Once a step is finalised process 0 writes `jaxvision_manifest.json` into
it: the size and SHA-256 of every file, and which workdir saved it. Its files are checked
against it before any restore.

What this module deletes, and only while the run holds the workdir's lock: old steps that
this workdir's runs saved and verified (keep-last-N, never the newest verified one), and
Orbax's temporary directories of saves that were killed midway. It never deletes through
a symbolic link, a step another tool wrote, a step holding files it did not write, or a
step it cannot verify: such a step is kept and reported, or moved aside as
`checkpoints/_unverified_<step>`. Readers (`open_read_only`) never modify anything.
"""

import hashlib
import json
import os
import re
import shutil
import threading
import uuid

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxvision.console import log
from jaxvision.exit_status import RunFailure
from jaxvision.steps import TrainState

MANIFEST = "jaxvision_manifest.json"
# The workdir's identity: steps whose manifest names it were saved by this workdir's runs.
WORKDIR_ID = "jaxvision_workdir_id"
UNVERIFIED_PREFIX = "_unverified_"
_TMP_SUFFIX = ".orbax-checkpoint-tmp"
# Files other programs leave in directories; reported, never counted as damage.
_STRAY = re.compile(r"(^\.nfs.*|^\.DS_Store$|^Thumbs\.db$|^\._.*)")


class CheckpointError(RunFailure):
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


def _is_link(path: str) -> bool:
    return "://" not in path and os.path.islink(path)


def write_manifest(step_dir: str, *, workdir_id: str = "", origin: str = "saved") -> None:
    """Records size and SHA-256 of every file of a finalised step, then publishes it.

    `origin` is "saved" for a step this workdir's run wrote, "adopted" for one found
    without a manifest and verified by reading it. Raises OSError when it cannot be written.
    """
    entries = {
        rel: {"bytes": _size(p), "sha256": _sha256(p)}
        for rel, p in sorted(_files(step_dir).items())
        if not _STRAY.match(os.path.basename(rel))
    }
    record = {"files": entries, "workdir_id": workdir_id, "origin": origin}
    tmp = epath.Path(step_dir) / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(epath.Path(step_dir) / MANIFEST)  # readers never see a partial manifest


def read_manifest(step_dir: str) -> dict | None:
    """A step's manifest, or None when it has none or it is unreadable."""
    try:
        record = json.loads((epath.Path(step_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("files"), dict) else None


def extra_files(step_dir: str) -> list[str]:
    """Files in a step that its manifest does not list (a user's notes, .DS_Store, .nfs*)."""
    record = read_manifest(step_dir)
    if record is None:
        return []
    return sorted(set(_files(step_dir)) - set(record["files"]))


def verify(step_dir: str) -> list[str]:
    """What is damaged in a step against its manifest (empty when intact).

    Files the manifest does not list are not damage: see `extra_files`.
    """
    path = epath.Path(step_dir) / MANIFEST
    record = read_manifest(step_dir)
    if record is None:
        return [f"{path} is missing or unreadable"]
    expected = record["files"]
    actual = _files(step_dir)
    problems = [f"missing file {rel}" for rel in sorted(set(expected) - set(actual))]
    for rel in sorted(set(expected) & set(actual)):
        size = _size(actual[rel])
        if size != expected[rel]["bytes"]:
            problems.append(f"{rel}: {size} bytes, expected {expected[rel]['bytes']}")
        elif _sha256(actual[rel]) != expected[rel]["sha256"]:
            problems.append(f"{rel}: contents changed (SHA-256 mismatch)")
    return problems


def all_finite(tree) -> bool:
    """Whether every floating-point leaf of `tree` is free of NaN and Inf."""
    leaves = [x for x in jax.tree.leaves(tree) if jax.numpy.issubdtype(x.dtype, np.inexact)]
    if not leaves:
        return True
    flags = jax.jit(lambda xs: jax.numpy.stack([jax.numpy.isfinite(x).all() for x in xs]))(leaves)
    return bool(np.all(jax.device_get(flags)))


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
        self.directory = directory if "://" in directory else os.path.abspath(directory)
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
            self.workdir_id = _workdir_id(self.directory, create=not read_only)
        except OSError as e:
            raise RunFailure(
                f"Cannot open {self.directory} for checkpoints: {e}. Check that the workdir "
                "is writable and its disk has space."
            ) from e
        self._pending: threading.Thread | None = None
        self._errors: list[str] = []
        if not read_only and jax.process_index() == 0:
            self._remove_interrupted_saves()

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
        """Deletes a directory this run owns; renamed first so a kill leaves no half step."""
        if _is_link(path):
            return
        doomed = epath.Path(path).parent / f"_deleting_{epath.Path(path).name}"
        epath.Path(path).rename(doomed)
        if "://" in path:
            doomed.rmtree()
        else:
            shutil.rmtree(str(doomed))  # unlinks symbolic links inside, never follows them

    def _remove_interrupted_saves(self) -> None:
        """Removes what killed saves of this workdir's runs left: Orbax temporary
        directories and half-deleted old steps (only the lock holder calls this)."""
        root = epath.Path(self.directory)
        for path in root.iterdir():
            name = path.name
            temporary = re.fullmatch(r"\d+" + re.escape(_TMP_SUFFIX) + r".*", name)
            half_deleted = re.fullmatch(r"_deleting_\d+", name)
            if not (temporary or half_deleted) or _is_link(str(path)):
                continue
            log.info("Removing %s, left by an interrupted save or clean-up.", path)
            if "://" in str(path):
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
        """
        self._writable()
        damaged = []
        for step in reversed(self.finalised_steps()):
            path = self.step_dir(step)
            if read_manifest(path) is None and not (epath.Path(path) / MANIFEST).exists():
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
        try:
            write_manifest(path, workdir_id=self.workdir_id, origin="saved" if ours else "adopted")
        except OSError as e:
            raise RunFailure(
                f"Could not write {MANIFEST} into {path}: {e}. Make it writable, or move the "
                f"step out of {self.directory}."
            ) from e
        log.warning(
            "Checkpoint %s had no %s; it restored intact and now has one%s.",
            path,
            MANIFEST,
            "" if ours else " (it was not saved by this workdir's runs, so it is never deleted)",
        )
        return state, meta

    def _move_aside(self, step: int) -> None:
        """Renames an unverifiable step so it is kept but no longer counts or blocks a redo."""
        path = epath.Path(self.step_dir(step))
        target = path.parent / f"{UNVERIFIED_PREFIX}{step}"
        n = 1
        while target.exists() or _is_link(str(target)):
            n += 1
            target = path.parent / f"{UNVERIFIED_PREFIX}{step}_{n}"
        path.rename(target)
        log.warning(
            "Moved damaged checkpoint step %d aside to %s; its steps will be redone. Delete "
            "it once you no longer need it.",
            step,
            target,
        )
        self._manager.reload()

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
    if "://" not in directory and not os.path.isdir(directory):
        raise RunFailure(f"{directory} does not exist; train (or resume) the run first.")
    return Checkpoints(directory, read_only=True)
