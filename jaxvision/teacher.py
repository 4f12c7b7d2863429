"""The frozen teacher of a distillation run: resolve, build, load, checksum, place on the mesh.

A teacher comes from `config.distill.teacher` through the same resolver as `pretrained`
(workdir, catalog name, hf-hub, URL or file). It is never checkpointed with the student:
config.json and the checkpoint metadata record its source and the SHA-256 of its loaded
variables, and a resume with a different teacher is refused unless `distill.force_teacher`.
"""

import dataclasses
import hashlib
import json
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from jaxvision import backend, models, parallel, workdir_files
from jaxvision.exit_status import BadInputError


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A loaded teacher: its model, host variables, input size and where they came from."""

    model: nn.Module
    variables: dict[str, Any]  # numpy arrays on the host
    image_size: int  # square input side; the student's batch is resized to it in the step
    source: str
    sha256: str  # of the loaded variables (names, dtypes, shapes, bytes)

    def record(self) -> str:
        """What config.json keeps in `distill.teacher_resolved`."""
        return f"source={self.source} sha256={self.sha256}"


def variables_sha256(variables: dict[str, Any]) -> str:
    """A checksum of a variables tree that does not depend on where it was read from."""
    digest = hashlib.sha256()
    for path, value in sorted(traverse_util.flatten_dict(variables, sep="/").items()):
        array = np.ascontiguousarray(np.asarray(value))
        digest.update(f"{path}:{array.dtype}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _model_config(d: ml_collections.ConfigDict, resolved: Any) -> tuple[str, dict[str, Any]]:
    """The teacher's model name and overrides: the config's, over the source's own."""
    name = d.teacher_model.name
    given = {k: v for k, v in d.teacher_model.items() if k != "name"}
    if resolved.workdir is not None:
        # Read here, not through `workdir` (which builds steps, and so imports this module).
        path = workdir_files.join(resolved.workdir, "config.json")
        saved = json.loads(workdir_files.read_text(path))["model"]
        retired = ("name", *backend.RETIRED_MODEL_KEYS)
        own = {k: v for k, v in saved.items() if k not in retired}
        if not name or name == saved["name"]:
            return saved["name"], {**own, **given}
    elif resolved.entry is not None and not name:
        name = resolved.entry.model
    if not name:
        raise BadInputError(
            f"distill.teacher={d.teacher!r} is a weights file: set distill.teacher_model.name "
            "to the model it holds (e.g. --config.distill.teacher_model.name=resnet50)."
        )
    return name, {**resolved.overrides(), **given}


def load(config: ml_collections.ConfigDict, num_classes: int, image_shape: tuple) -> Teacher:
    """The teacher `config.distill` names, for a student on `num_classes`, `image_shape` data."""
    from jaxvision.models import pretrained_source

    d = config.distill
    resolved = pretrained_source.resolve(d.teacher, d.teacher_model.name or None)
    name, overrides = _model_config(d, resolved)
    if config.compute_dtype == "bfloat16":
        overrides.setdefault("dtype", jnp.bfloat16)
    classes = pretrained_source.num_classes_of(resolved)
    if classes != num_classes:
        raise BadInputError(
            f"distill.teacher={d.teacher!r} predicts {classes} classes, the student's data has "
            f"{num_classes}. A teacher must be trained (or fine-tuned) on the student's classes."
        )
    model = models.create(name, num_classes=num_classes, **overrides)
    own_size = getattr(model, "image_size", None)
    size = d.teacher_image_size or (own_size if isinstance(own_size, int) else image_shape[0])
    variables = pretrained_source.load(
        resolved, model, image_shape=(size, size, image_shape[-1]), rng=jax.random.PRNGKey(0)
    )
    variables = jax.tree.map(np.asarray, jax.device_get(variables))
    return Teacher(model, variables, int(size), resolved.source, variables_sha256(variables))


def place(variables: dict[str, Any], config: ml_collections.ConfigDict, mesh: Any) -> tuple:
    """The teacher's variables as global arrays, sharded like the student's parameters
    (replicated, or FSDP); returns (arrays, shardings)."""
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
    shardings = parallel.state_shardings(
        shapes, mesh, fsdp=config.parallel.fsdp, min_size=config.parallel.fsdp_min_size
    )
    # From every process's own copy: works for one or many processes, any sharding.
    arrays = jax.tree.map(
        lambda x, sh: jax.make_array_from_callback(x.shape, sh, lambda index: x[index]),
        variables,
        shardings,
    )
    return arrays, shardings


def with_record(config: ml_collections.ConfigDict, teacher: Teacher) -> ml_collections.ConfigDict:
    """`config` with `distill.teacher_resolved` set, so config.json says which teacher taught."""
    config = config.copy_and_resolve_references()
    config.distill.teacher_resolved = teacher.record()
    return config


def _checksum(record: str) -> str:
    return dict(p.split("=", 1) for p in record.split() if "=" in p).get("sha256", "")


def resume_differences(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
    """How a checkpoint's distillation (loss, teacher checksum) differs from `config`'s."""
    old = saved.get("distill", {})
    d = config.distill
    diffs = []
    if old.get("loss", "none") != d.loss:
        diffs.append(f"distill.loss: checkpoint {old.get('loss', 'none')!r}, now {d.loss!r}")
    was, now = _checksum(old.get("teacher_resolved", "")), _checksum(d.teacher_resolved)
    if was != now:
        diffs.append(
            f"distill.teacher: checkpoint {old.get('teacher_resolved', '') or 'none'}, "
            f"now {d.teacher_resolved or 'none'}"
        )
    return diffs
