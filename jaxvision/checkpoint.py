"""Checkpoints of the train state with Orbax: async save, keep the last N, atomic finalize."""

import os

import jax
import orbax.checkpoint as ocp

from jaxvision.steps import TrainState


class Checkpoints:
    """The run's `checkpoints/` directory: save, restore and list finalised steps."""

    def __init__(self, directory: str, *, keep: int = 3):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            create=True,
            cleanup_tmp_directories=True,  # leftovers of a save that was killed midway
            enable_async_checkpointing=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def latest_step(self) -> int | None:
        """The newest finalised step, or None; unfinished (interrupted) saves never count."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every finalised step, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: TrainState, meta: dict) -> None:
        """Starts an asynchronous save of `state` and JSON `meta` at `step`."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )

    def restore(self, step: int, like: TrainState) -> tuple[TrainState, dict]:
        """Reads the state at `step` into the structure, dtypes and shardings of `like`."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                ),
            )
        except Exception as e:
            raise RuntimeError(
                f"Cannot restore checkpoint step {step} from {self.directory}: {e}\n"
                "The checkpoint does not match this config's model/optimizer, or is damaged. "
                "Use a fresh --workdir, or delete that step directory to fall back to an older one."
            ) from e
        return restored["state"], restored["meta"]

    def wait(self) -> None:
        """Blocks until every pending save is finalised on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finishes pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
