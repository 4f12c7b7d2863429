"""Load a trained run from its workdir for inference: config, dataset info, model, weights.

The one loader behind `evaluate`, `predict` and `export`: it rebuilds the model from
`config.json`, restores one checkpoint (latest, best or a step) and hands back the
variables `model.apply` needs. Every failure names the path and what to do.
"""

import dataclasses
import json
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from jaxvision import backend, checkpoint, data, parallel, step_factory, steps, workdir_files
from jaxvision import config as config_lib

# WorkdirError and metrics_records are part of this module's API for evaluate, predict and export.
from jaxvision.checkpoint_choice import WorkdirError as WorkdirError
from jaxvision.checkpoint_choice import choose_step
from jaxvision.checkpoint_choice import metrics_records as metrics_records


@dataclasses.dataclass
class LoadedRun:
    """A restored run: everything needed to run its model on new images."""

    workdir: str
    config: ml_collections.ConfigDict
    info: data.DataInfo
    model: nn.Module
    variables: dict[str, Any]
    step: int
    ema: bool

    @property
    def class_names(self) -> list[str]:
        """Label names, or the class indices as strings when the dataset has none."""
        names = self.info.class_names
        return list(names) if names else [str(i) for i in range(self.info.num_classes)]


def _upgrade_older_run(saved: dict) -> None:
    """Reads a config.json of an earlier version as that version trained it."""
    for key in backend.RETIRED_MODEL_KEYS:
        saved.get("model", {}).pop(key, None)
    dataset = saved.get("dataset", {})
    if str(dataset.get("name", "")).startswith("folder:") and "channels" not in dataset:
        # Folder runs used to train in RGB at 224 px unless told otherwise.
        dataset["channels"] = 3
        if not dataset.get("image_size"):
            dataset["image_size"] = 224


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The run's `config.json` on top of today's defaults, locked like a config file."""
    if not workdir_files.is_dir(workdir):
        raise WorkdirError(
            f"Workdir {workdir!r} does not exist. Pass the --workdir a training run wrote."
        )
    path = workdir_files.join(workdir, "config.json")
    if not workdir_files.is_file(path):
        raise WorkdirError(
            f"{path} not found: {workdir!r} is not a jaxvision training workdir. "
            "Train first with python -m jaxvision.main --config=... --workdir=DIR."
        )
    try:
        saved = json.loads(workdir_files.read_text(path))
    except json.JSONDecodeError as e:
        raise WorkdirError(f"{path} is not valid JSON ({e}); the run's config is damaged.") from e
    _upgrade_older_run(saved)
    config = config_lib.base()
    # Keys added to the schema after this run was trained keep their defaults.
    for key, value in saved.items():
        if isinstance(value, dict) and key != "model" and key in config:
            for sub, v in value.items():
                config[key][sub] = v
        else:
            config[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
    config_lib.check_keys(config)
    config.lock()
    return config


def _abstract_state(built: step_factory.Steps) -> steps.TrainState:
    """The checkpoint's structure and shapes, replicated: what a restore for inference reads."""
    sharding = parallel.replicated(built.mesh)
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), built.abstract_state
    )


def inference_variables(state: steps.TrainState, *, ema: bool = False) -> dict[str, Any]:
    """The `variables` for `model.apply` from a train state (EMA weights if asked)."""
    params = state.params
    if ema:
        params = getattr(state, "ema_params", None)
        if params is None or not jax.tree.leaves(params):
            raise WorkdirError(
                "--ema: this run has no EMA parameters (it was trained without an exponential "
                "moving average of the weights). Drop --ema to use the trained weights."
            )
    return steps.variables(params, state.batch_stats)


def load(
    workdir: str, *, checkpoint_step: str = "latest", ema: bool = False, mesh: Any = None
) -> LoadedRun:
    """Restores `workdir`'s chosen checkpoint; raises WorkdirError with the reason otherwise."""
    config = load_config(workdir)
    ckpt_dir = workdir_files.checkpoints_dir(workdir)
    workdir_files.check_checkpoint_location(ckpt_dir)
    if not workdir_files.is_dir(ckpt_dir):
        # Checked before Orbax sees the path: its manager would create the directory.
        raise WorkdirError(
            f"{workdir!r} holds no checkpoints/ directory; train (or resume) the run first."
        )
    info = data.prepare(config)
    built = step_factory.build(
        config,
        num_classes=info.num_classes,
        image_shape=info.image_shape,
        num_train_examples=info.num_train,
        mesh=mesh,
    )
    # Read-only: a run that is still training keeps its in-flight save and its old steps.
    ckpts = checkpoint.open_read_only(ckpt_dir)
    try:
        step = choose_step(workdir, ckpts, str(checkpoint_step))
        state, _ = ckpts.restore(step, _abstract_state(built))
    finally:
        ckpts.close()
    return LoadedRun(
        workdir=workdir_files.absolute(workdir),
        config=config,
        info=info,
        model=built.model,
        variables=inference_variables(state, ema=ema),
        step=step,
        ema=ema,
    )
