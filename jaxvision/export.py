"""Export a trained model for serving: python -m jaxvision.export --workdir=DIR --format=F ...

The command also takes --out=PATH (a new or empty directory).

`stablehlo`: PATH/model.stablehlo (`jax.export` serialized StableHLO, any batch size),
PATH/variables.msgpack (the weights) and PATH/signature.json; reload with
`load_stablehlo(PATH)` (needs jax and flax only, not the model code).
`savedmodel`: a TF SavedModel (via `jax.experimental.jax2tf`) with a `serving_default`
signature `images` -> `logits`; reload with `tf.saved_model.load(PATH)`.
`tflite`: PATH/model.tflite, the SavedModel converted by TensorFlow's TFLite converter
(--tflite_quantization: `float`, `dynamic` range int8, full-integer `int8` calibrated on
training images; `auto`, the default, is `dynamic` for a model compressed to int8 kernels);
reload with `export_tflite.load_tflite(PATH)`.

All take images after the run's eval preprocessing (`eval_pp` in signature.json:
float32 [N, H, W, C]) and return logits [N, num_classes]. A workdir compressed to int8
kernels (`python -m jaxvision.compress --method=int8-weights`) exports them as int8 values
and float32 scales, dequantized inside the graph: its StableHLO and SavedModel weights take
about a quarter of the float bytes (`int8_kernels` in signature.json).
"""

import json
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import serialization

from jaxvision import command_line, export_int8, export_tflite, workdir_files
from jaxvision import workdir as workdir_lib
from jaxvision.compression import quantized_model

FORMATS = ("stablehlo", "savedmodel", "tflite")


def signature(run: workdir_lib.LoadedRun, fmt: str, **extra: Any) -> dict[str, Any]:
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
        **extra,
    }


def exported_variables(
    run: workdir_lib.LoadedRun, *, int8_kernels: bool = True
) -> tuple[Any, Callable]:
    """The variables an artifact holds and the forward over them: for a workdir compressed
    to int8 kernels those stay int8 (with their scales, dequantized in the graph)."""
    if quantized_model.is_ptq(run.config):
        return _flat_ptq_variables(run)
    int8 = export_int8.int8_variables(run) if int8_kernels else None
    if int8 is None:
        return jax.device_get(run.variables), lambda v, x: run.model.apply(v, x, train=False)
    return int8, lambda v, x: run.model.apply(export_int8.dequantize(v), x, train=False)


def _flat_ptq_variables(run: workdir_lib.LoadedRun) -> tuple[dict[str, Any], Callable]:
    """An int8 PTQ model's variables as {path: array} and the forward over them.

    Its parameters are qwix's quantized arrays (int8 values, scales, calibrated input
    scales), which msgpack and TensorFlow cannot hold as such: the artifact stores their
    arrays under their tree paths, and the graph rebuilds the tree before applying the model.
    """
    variables = jax.device_get(run.variables)
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(variables)
    names = [jax.tree_util.keystr(path) for path, _ in with_paths]
    flat = {name: leaf for name, (_, leaf) in zip(names, with_paths, strict=True)}

    def apply_fn(v: dict[str, Any], x: jax.Array) -> jax.Array:
        tree = jax.tree_util.tree_unflatten(treedef, [v[name] for name in names])
        return run.model.apply(tree, x, train=False)

    return flat, apply_fn


def _weights_record(variables: Any) -> dict[str, Any]:
    """signature.json's note on int8 kernels (none for a float model)."""
    record = export_int8.summary(variables)
    return {"int8_kernels": record if record["count"] else None}


def export_stablehlo(run: workdir_lib.LoadedRun, out: str) -> list[str]:
    """Writes model.stablehlo, variables.msgpack and signature.json into `out`."""
    variables, apply_fn = exported_variables(run)
    (batch,) = jax.export.symbolic_shape("batch")
    images = jax.ShapeDtypeStruct((batch, *run.info.image_shape), jnp.float32)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
    exported = jax.export.export(jax.jit(apply_fn))(abstract, images)
    paths = [workdir_files.join(out, n) for n in ("model.stablehlo", "variables.msgpack")]
    workdir_files.write_bytes(paths[0], bytes(exported.serialize()))
    workdir_files.write_bytes(paths[1], serialization.msgpack_serialize(variables))
    return [*paths, _write_signature(run, out, "stablehlo", **_weights_record(variables))]


def load_stablehlo(path: str) -> Callable[[np.ndarray], jax.Array]:
    """A function images [N, H, W, C] -> logits from a `stablehlo` export directory."""
    model = workdir_files.read_bytes(workdir_files.join(path, "model.stablehlo"))
    exported = jax.export.deserialize(bytearray(model))
    variables = serialization.msgpack_restore(
        workdir_files.read_bytes(workdir_files.join(path, "variables.msgpack"))
    )
    return lambda images: exported.call(variables, jnp.asarray(images, jnp.float32))


def export_savedmodel(
    run: workdir_lib.LoadedRun, out: str, *, int8_kernels: bool = True
) -> list[str]:
    """Writes a TF SavedModel whose `serving_default` maps `images` to `logits` (with
    `int8_kernels`, a compressed workdir's int8 kernels stay int8)."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    h, w, c = run.info.image_shape
    variables, apply_fn = exported_variables(run, int8_kernels=int8_kernels)
    # Weights become tf.Variables (int8 ones stay int8), so the graph stays small and the
    # weights live in the SavedModel's variables/ like any TF model's.
    tf_variables = tf.nest.map_structure(tf.Variable, variables)
    converted = jax2tf.convert(
        apply_fn, polymorphic_shapes=[None, f"(b, {h}, {w}, {c})"], with_gradient=False
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
    return [out, _write_signature(run, out, "savedmodel", **_weights_record(variables))]


def load_savedmodel(path: str) -> Callable[[np.ndarray], np.ndarray]:
    """A function images [N, H, W, C] -> logits from a `savedmodel` export."""
    import tensorflow as tf

    serve = tf.saved_model.load(path).signatures["serving_default"]
    return lambda images: serve(images=tf.constant(images, tf.float32))["logits"].numpy()


def export_tflite_model(
    run: workdir_lib.LoadedRun,
    out: str,
    quantization: str = "auto",
    calibration_images: int = export_tflite.CALIBRATION_IMAGES,
) -> list[str]:
    """Writes model.tflite (the SavedModel export converted with `quantization`) and
    signature.json into `out`."""
    if quantized_model.is_ptq(run.config):
        # TensorFlow's converter cannot lower qwix's int8 graph; it quantizes float models
        # itself, to its own int8 kernels.
        raise workdir_lib.WorkdirError(
            f"{run.workdir} is an int8 PTQ model (quantization.mode="
            f"{run.config.quantization.mode!r}), which the TFLite converter cannot convert. "
            "Export its float source run instead with --format=tflite "
            "--tflite_quantization=int8 (full integer, calibrated by the converter) or dynamic."
        )
    has_int8 = bool(export_int8.stored_int8_kernels(run.workdir))
    quantization = export_tflite.resolve(quantization, has_int8)
    calibration = (
        export_tflite.calibration_images(run, calibration_images) if quantization == "int8" else []
    )
    with tempfile.TemporaryDirectory() as tmp:
        savedmodel = os.path.join(tmp, "savedmodel")
        # Float weights in: the converter quantizes them itself for its own int8 kernels
        # (int8 constants dequantized in the graph would run as float ops).
        export_savedmodel(run, savedmodel, int8_kernels=False)
        flatbuffer = export_tflite.convert(savedmodel, quantization, calibration)
    path = workdir_files.join(out, "model.tflite")
    workdir_files.write_bytes(path, flatbuffer)
    extra: dict[str, Any] = {"tflite_quantization": quantization}
    if calibration:
        extra["calibration"] = {"split": run.info.spec.train_split, "images": len(calibration)}
    return [path, _write_signature(run, out, "tflite", **extra)]


def _write_signature(run: workdir_lib.LoadedRun, out: str, fmt: str, **extra: Any) -> str:
    path = workdir_files.join(out, "signature.json")
    workdir_files.write_text(path, json.dumps(signature(run, fmt, **extra), indent=2) + "\n")
    return path


def export(
    run: workdir_lib.LoadedRun, fmt: str, out: str, *, tflite_quantization: str = "auto"
) -> list[str]:
    """Exports `run` in `fmt` to `out`; returns the written paths."""
    if fmt == "stablehlo":
        return export_stablehlo(run, out)
    if fmt == "savedmodel":
        return export_savedmodel(run, out)
    if fmt == "tflite":
        return export_tflite_model(run, out, tflite_quantization)
    raise ValueError(f"--format={fmt!r}: use one of {', '.join(FORMATS)}.")


FLAGS = flags.FlagValues()  # this tool's own, so it can be imported next to other tools
_WORKDIR = command_line.define_workdir(FLAGS)
_CHECKPOINT = command_line.define_checkpoint(FLAGS)
_EMA = command_line.define_ema(FLAGS)
_FORMAT = flags.DEFINE_enum("format", None, FORMATS, "Export format.", flag_values=FLAGS)
_OUT = flags.DEFINE_string(
    "out", None, "Output directory (must not exist, or be empty).", flag_values=FLAGS
)
_TFLITE_QUANTIZATION = flags.DEFINE_enum(
    "tflite_quantization",
    "auto",
    export_tflite.QUANTIZATIONS,
    "With --format=tflite: float, dynamic (int8 weights, activations quantized at run time), "
    "int8 (full integer, calibrated on training images); auto = dynamic for a model "
    "compressed to int8 kernels, else float.",
    flag_values=FLAGS,
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
    for path in export(run, _FORMAT.value, out, tflite_quantization=_TFLITE_QUANTIZATION.value):
        print(path)


def main(argv: list[str] | None = None) -> int:
    """Runs the command on `argv` (default: the process's); returns its exit status."""
    return command_line.run("jaxvision.export", __doc__, FLAGS, _export, argv)


if __name__ == "__main__":
    sys.exit(main())
