"""Export a trained model for serving: python -m jaxvision.export --workdir=DIR --format=F ...

The command also takes --out=PATH (a new or empty directory).

`stablehlo`: PATH/model.stablehlo (`jax.export` serialized StableHLO, any batch size),
PATH/variables.msgpack (the weights) and PATH/signature.json; reload with
`load_stablehlo(PATH)` (needs jax and flax only, not the model code).
`savedmodel`: a TF SavedModel (via `jax.experimental.jax2tf`) with a `serving_default`
signature `images` -> `logits`; reload with `tf.saved_model.load(PATH)`.

Both take images after the run's eval preprocessing (`eval_pp` in signature.json:
float32 [N, H, W, C]) and return logits [N, num_classes].
"""

import json
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import serialization

from jaxvision import command_line, workdir_files
from jaxvision import workdir as workdir_lib

FORMATS = ("stablehlo", "savedmodel")


def signature(run: workdir_lib.LoadedRun, fmt: str) -> dict[str, Any]:
    """What a server needs to know besides the graph: input shape, preprocessing, labels."""
    return {
        "format": fmt,
        "model": run.config.model.name,
        "dataset": run.info.spec.name,
        "step": run.step,
        "ema": run.ema,
        "input_shape": ["N", *run.info.image_shape],
        "input_dtype": "float32",
        "eval_pp": run.info.spec.eval_pp,
        "class_names": run.class_names,
    }


def _apply_fn(run: workdir_lib.LoadedRun) -> Callable:
    return lambda variables, images: run.model.apply(variables, images, train=False)


def export_stablehlo(run: workdir_lib.LoadedRun, out: str) -> list[str]:
    """Writes model.stablehlo, variables.msgpack and signature.json into `out`."""
    variables = jax.device_get(run.variables)
    (batch,) = jax.export.symbolic_shape("batch")
    images = jax.ShapeDtypeStruct((batch, *run.info.image_shape), jnp.float32)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
    exported = jax.export.export(jax.jit(_apply_fn(run)))(abstract, images)
    paths = [workdir_files.join(out, n) for n in ("model.stablehlo", "variables.msgpack")]
    workdir_files.write_bytes(paths[0], bytes(exported.serialize()))
    workdir_files.write_bytes(paths[1], serialization.msgpack_serialize(variables))
    return [*paths, _write_signature(run, out, "stablehlo")]


def load_stablehlo(path: str) -> Callable[[np.ndarray], jax.Array]:
    """A function images [N, H, W, C] -> logits from a `stablehlo` export directory."""
    model = workdir_files.read_bytes(workdir_files.join(path, "model.stablehlo"))
    exported = jax.export.deserialize(bytearray(model))
    variables = serialization.msgpack_restore(
        workdir_files.read_bytes(workdir_files.join(path, "variables.msgpack"))
    )
    return lambda images: exported.call(variables, jnp.asarray(images, jnp.float32))


def export_savedmodel(run: workdir_lib.LoadedRun, out: str) -> list[str]:
    """Writes a TF SavedModel whose `serving_default` maps `images` to `logits`."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    h, w, c = run.info.image_shape
    # Weights become tf.Variables, so the graph stays small and the weights live in
    # the SavedModel's variables/ like any TF model's.
    tf_variables = tf.nest.map_structure(tf.Variable, jax.device_get(run.variables))
    converted = jax2tf.convert(
        _apply_fn(run), polymorphic_shapes=[None, f"(b, {h}, {w}, {c})"], with_gradient=False
    )
    module = tf.Module()
    module.variables_list = tf.nest.flatten(tf_variables)

    @tf.function(
        autograph=False, input_signature=[tf.TensorSpec([None, h, w, c], tf.float32, "images")]
    )
    def serve(images):
        return {"logits": converted(tf_variables, images)}

    module.serve = serve
    tf.saved_model.save(module, out, signatures={"serving_default": serve})
    return [out, _write_signature(run, out, "savedmodel")]


def load_savedmodel(path: str) -> Callable[[np.ndarray], np.ndarray]:
    """A function images [N, H, W, C] -> logits from a `savedmodel` export."""
    import tensorflow as tf

    serve = tf.saved_model.load(path).signatures["serving_default"]
    return lambda images: serve(images=tf.constant(images, tf.float32))["logits"].numpy()


def _write_signature(run: workdir_lib.LoadedRun, out: str, fmt: str) -> str:
    path = workdir_files.join(out, "signature.json")
    workdir_files.write_text(path, json.dumps(signature(run, fmt), indent=2) + "\n")
    return path


def export(run: workdir_lib.LoadedRun, fmt: str, out: str) -> list[str]:
    """Exports `run` in `fmt` to `out`; returns the written paths."""
    if fmt == "stablehlo":
        return export_stablehlo(run, out)
    if fmt == "savedmodel":
        return export_savedmodel(run, out)
    raise ValueError(f"--format={fmt!r}: use one of {', '.join(FORMATS)}.")


FLAGS = flags.FlagValues()  # this tool's own, so it can be imported next to other tools
_WORKDIR = command_line.define_workdir(FLAGS)
_CHECKPOINT = command_line.define_checkpoint(FLAGS)
_EMA = command_line.define_ema(FLAGS)
_FORMAT = flags.DEFINE_enum("format", None, FORMATS, "Export format.", flag_values=FLAGS)
_OUT = flags.DEFINE_string(
    "out", None, "Output directory (must not exist, or be empty).", flag_values=FLAGS
)
flags.mark_flags_as_required(["format", "out"], flag_values=FLAGS)


def _export(args: list[str]) -> None:
    if args:
        raise app.UsageError(f"Unexpected arguments: {' '.join(args)}")
    from jaxvision import console

    console.setup()
    out = _OUT.value
    if workdir_files.exists(out) and (not workdir_files.is_dir(out) or workdir_files.names(out)):
        raise workdir_lib.WorkdirError(
            f"--out={out!r} exists and is not an empty directory; choose a new path."
        )
    run = workdir_lib.load(_WORKDIR.value, checkpoint_step=_CHECKPOINT.value, ema=_EMA.value)
    for path in export(run, _FORMAT.value, out):
        print(path)


def main(argv: list[str] | None = None) -> int:
    """Runs the command on `argv` (default: the process's); returns its exit status."""
    return command_line.run("jaxvision.export", __doc__, FLAGS, _export, argv)


if __name__ == "__main__":
    sys.exit(main())
