"""TFLite/LiteRT export: the SavedModel export turned into a flatbuffer by TensorFlow's
converter, as float, dynamic-range int8 or full-integer int8.

`dynamic`: int8 weights (one scale per output channel), activations quantized at run time
by the interpreter's hybrid kernels. `int8`: weights and activations int8 with activation
scales calibrated on images of the training split (eval preprocessing); inputs and logits
stay float32, so every variant takes and returns what the other exports do.
"""

import importlib.util
import warnings
from collections.abc import Callable, Iterator

import numpy as np

from jaxvision import data, parallel, workdir_files
from jaxvision import workdir as workdir_lib
from jaxvision.exit_status import RunFailure

QUANTIZATIONS = ("auto", "float", "dynamic", "int8")
CALIBRATION_IMAGES = 256  # the converter's calibration: a few hundred examples suffice


def resolve(quantization: str, has_int8_kernels: bool) -> str:
    """`auto` -> `dynamic` for a workdir compressed to int8 kernels, else `float`."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"--tflite_quantization={quantization!r}: use one of {', '.join(QUANTIZATIONS)}."
        )
    if quantization == "auto":
        return "dynamic" if has_int8_kernels else "float"
    return quantization


def _lite():
    """TensorFlow's tf.lite, or a RunFailure saying what to install."""
    import tensorflow as tf

    if not hasattr(tf, "lite") or not hasattr(tf.lite, "TFLiteConverter"):
        raise RunFailure(
            f"--format=tflite needs TensorFlow's TFLite converter (tf.lite.TFLiteConverter), "
            f"which tensorflow {tf.__version__} here does not have; install a full "
            "`tensorflow` (pip install tensorflow) or export --format=savedmodel and convert "
            "it elsewhere."
        )
    return tf.lite


def calibration_images(run: workdir_lib.LoadedRun, count: int) -> list[np.ndarray]:
    """The first `count` images of the training split, eval-preprocessed: what full-integer
    conversion calibrates its activation scales on."""
    split = run.info.spec.train_split
    batches = data.eval_batches(run.config, run.info, parallel.make_mesh(), split=split)
    images: list[np.ndarray] = []
    for batch in batches:
        mask = np.asarray(batch["mask"]) > 0
        images += list(np.asarray(batch["image"])[mask])
        if len(images) >= count:
            break
    return images[:count]


def convert(savedmodel_dir: str, quantization: str, calibration: list[np.ndarray]) -> bytes:
    """The flatbuffer of a SavedModel export converted with `quantization` (not `auto`)."""
    lite = _lite()
    converter = lite.TFLiteConverter.from_saved_model(savedmodel_dir)
    if quantization in ("dynamic", "int8"):
        converter.optimizations = [lite.Optimize.DEFAULT]
    if quantization == "int8":
        if not calibration:
            raise ValueError("Full-integer TFLite conversion needs calibration images.")

        def representative() -> Iterator[list[np.ndarray]]:
            for image in calibration:
                yield [image[None].astype(np.float32)]

        converter.representative_dataset = representative
        # Every op int8 or the conversion fails, rather than a silent float fallback.
        converter.target_spec.supported_ops = [lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def interpreter(model: bytes, num_threads: int | None = None):
    """A LiteRT interpreter of a flatbuffer: ai_edge_litert's when installed, else the one
    TensorFlow still ships (deprecated there, same kernels)."""
    if importlib.util.find_spec("ai_edge_litert") is not None:
        from ai_edge_litert.interpreter import Interpreter
    else:
        Interpreter = _lite().Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tf.lite.Interpreter's deprecation
        return Interpreter(model_content=model, num_threads=num_threads)


def load_tflite(path: str, num_threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A function images [N, H, W, C] -> logits from a `tflite` export directory."""
    model = workdir_files.read_bytes(workdir_files.join(path, "model.tflite"))
    runner = interpreter(model, num_threads).get_signature_runner("serving_default")
    return lambda images: runner(images=np.asarray(images, np.float32))["logits"]
