"""`config.quantization` applied to a model through qwix: QAT, static and dynamic int8 PTQ.

The model builder (`step_factory.create_model`) calls `apply`, so training, evaluate,
predict and benchmark all run the same quantized model:

- `qat`: qwix's `QtProvider`; conv, dense and attention-projection kernels (and, with
  `act_bits`, their input activations, scaled per example and batch) are fake-quantized in
  the forward pass and the gradients pass straight through; parameters stay float32.
- `ptq-dynamic`: qwix's `PtqProvider`; kernels are int8 parameters with one scale per
  output channel, and each layer's input is quantized to int8 at run time from its own
  absmax (one scale per example), so int8 x int8 products with int32 accumulation.
- `ptq-static`: the same, but each layer's input scale is a parameter calibrated ahead of
  time on training batches (`calibrate`, then `quantize_params`).

The patch embedding stays float (as in `kernels`), and so do the attention products of two
activations (q.k and probabilities.v): only ops with a weight are quantized.
"""

from collections.abc import Iterable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import qwix

MODES = ("none", "qat", "ptq-static", "ptq-dynamic")
PTQ_MODES = ("ptq-static", "ptq-dynamic")
_QTYPES = {4: jnp.int4, 8: jnp.int8}
# Ops that carry a weight; the attention einsums of two activations stay float.
_WEIGHT_OPS = ("dot_general", "conv_general_dilated")
_FLOAT_MODULES = r".*embedding.*"  # the patch embedding stays float (see kernels.py)


def enabled(quantization: ml_collections.ConfigDict) -> bool:
    """Whether a `config.quantization` section changes the model."""
    return quantization.mode != "none"


def is_ptq(config: ml_collections.ConfigDict) -> bool:
    """Whether `config`'s model is an int8 PTQ model (its parameters are qwix arrays)."""
    quantization = config.get("quantization")
    return quantization is not None and quantization.mode in PTQ_MODES


def check_config(quantization: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the `quantization.*` key that is out of range."""
    q = quantization
    if q.mode not in MODES:
        raise ValueError(f"Unknown quantization.mode {q.mode!r}. Known: {', '.join(MODES)}.")
    if q.weight_bits not in _QTYPES:
        raise ValueError(f"quantization.weight_bits must be 4 or 8, got {q.weight_bits!r}.")
    if q.act_bits not in (0, *_QTYPES):
        raise ValueError(f"quantization.act_bits must be 0 (float), 4 or 8, got {q.act_bits!r}.")
    if q.mode in PTQ_MODES and q.act_bits != q.weight_bits:
        # qwix's PTQ convolution needs int x int operands of one type.
        raise ValueError(
            f"quantization.mode={q.mode!r} needs act_bits == weight_bits ({q.weight_bits}), got "
            f"act_bits={q.act_bits}; for float activations compress with --method=int8-weights."
        )
    if not (isinstance(q.calibration_batches, int) and q.calibration_batches >= 1):
        raise ValueError(
            f"quantization.calibration_batches must be an integer >= 1, got "
            f"{q.calibration_batches!r}."
        )


def check_trainable(quantization: ml_collections.ConfigDict) -> None:
    """PTQ models hold int8 parameters: they are written by compress, not trained."""
    if quantization.mode in PTQ_MODES:
        raise ValueError(
            f"quantization.mode={quantization.mode!r} is an inference model written by "
            "python -m jaxvision.compress; train with quantization.mode='qat' (or 'none')."
        )


def rules(quantization: ml_collections.ConfigDict, *, static: bool) -> list[qwix.QuantizationRule]:
    """qwix rules: the patch embedding float, then every weighted op at the configured bits."""
    act = _QTYPES.get(quantization.act_bits)
    return [
        qwix.QuantizationRule(module_path=_FLOAT_MODULES),
        qwix.QuantizationRule(
            op_names=_WEIGHT_OPS,
            weight_qtype=_QTYPES[quantization.weight_bits],
            act_qtype=act,
            act_static_scale=static if act is not None else None,
        ),
    ]


def apply(model: nn.Module, quantization: ml_collections.ConfigDict) -> nn.Module:
    """`model` as `quantization.mode` asks: itself, fake-quantized (QAT) or int8 (PTQ)."""
    if quantization.mode == "none":
        return model
    key = (type(model), quantization.mode, quantization.weight_bits, quantization.act_bits)
    if key not in _CLASSES:
        _CLASSES[key] = type(qwix.quantize_model(model, _provider(quantization)))
        # qwix quantizes each kernel as its op runs: a BatchNorm folded into the kernel
        # first would give another quantized model than the one trained or calibrated.
        _CLASSES[key].fold_batch_norm = False
    # qwix quantizes a Linen model by giving a copy an intercepting subclass; one subclass
    # per setting keeps two builds of one config equal (benchmark compares them).
    quantized = model.copy()
    quantized.__class__ = _CLASSES[key]
    return quantized


_CLASSES: dict[tuple, type] = {}


def _provider(quantization: ml_collections.ConfigDict) -> qwix.QuantizationProvider:
    """qwix's training provider for QAT, its PTQ provider for the int8 models."""
    if quantization.mode == "qat":
        return qwix.QtProvider(rules(quantization, static=False))
    return qwix.PtqProvider(rules(quantization, static=quantization.mode == "ptq-static"))


def calibrate(
    model: nn.Module,
    variables: dict,
    batches: Iterable[jax.Array],
    quantization: ml_collections.ConfigDict,
) -> dict:
    """Static activation statistics (qwix `quant_stats`): the mean over `batches` of each
    quantized layer's per-example input absmax, from the float (or QAT) weights."""
    qt_model = qwix.quantize_model(model, qwix.QtProvider(rules(quantization, static=True)))

    # Not jitted: qwix 0.1.8 updates the statistics inside the custom_vjp of its QT conv, which
    # leaks a tracer under jit (UnexpectedTracerError); op by op it runs as intended.
    def update(stats, images):
        _, updates = qt_model.apply(
            {**variables, "quant_stats": stats}, images, train=False, mutable=["quant_stats"]
        )
        return updates["quant_stats"]

    stats, count = None, 0
    for images in batches:
        if stats is None:
            init = qt_model.init(jax.random.PRNGKey(0), images[:1], train=False)
            stats = init["quant_stats"]  # zero sums and counts
        stats = update(stats, images)
        count += 1
    if not count:
        raise ValueError("Calibration needs at least one batch.")
    return stats


def quantize_params(
    ptq_model: nn.Module,
    params: Any,
    image_shape: tuple[int, ...],
    quant_stats: dict | None = None,
) -> Any:
    """Float parameters as the PTQ model's: int8 kernels with per-output-channel scales and,
    with `quant_stats`, the static input scales."""
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    abstract = jax.eval_shape(lambda: ptq_model.init(jax.random.PRNGKey(0), dummy, train=False))
    return qwix.quantize_params(params, abstract["params"], quant_stats or {})


def is_quantized_param(leaf: Any) -> bool:
    """Whether a leaf of a PTQ parameter tree is qwix's wrapped (quantized) parameter."""
    from qwix._src.providers import ptq  # WithAux is not exported by qwix 0.1.8

    return isinstance(leaf, ptq.WithAux)


def dequantize_params(params: Any) -> Any:
    """A PTQ parameter tree as float32 kernels, dropping the static input scales."""

    def visit(tree):
        out = {}
        for key, value in tree.items():
            if is_quantized_param(value):
                if isinstance(value.array, qwix.QArray):
                    out[key] = qwix.dequantize(value.array)
            else:
                out[key] = visit(value) if isinstance(value, dict) else value
        return out

    return visit(dict(params))


def activation_scales(params: Any) -> dict[str, np.ndarray]:
    """The static input scales of a PTQ parameter tree, by "/"-joined parameter path."""
    found = {}

    def visit(tree, prefix):
        for key, value in tree.items():
            path = f"{prefix}/{key}" if prefix else key
            if is_quantized_param(value) and not isinstance(value.array, qwix.QArray):
                found[path] = np.asarray(value.array)
            elif isinstance(value, dict):
                visit(value, path)

    visit(dict(params), "")
    return found


def _qtype_name(qtype: Any) -> str:
    return qtype if isinstance(qtype, str) else np.dtype(qtype).name


def _qtype(name: str) -> Any:
    return getattr(jnp, name, name)  # jnp.int8 as qwix holds it; "nf4"-like names stay strings


def _how_to_json(how: Any) -> dict:
    if how.noise_fn is not None:
        raise ValueError("A quantized parameter with stochastic rounding cannot be exported.")
    return {
        "qtype": _qtype_name(how.qtype),
        "channelwise_axes": list(how.channelwise_axes),
        "tiled_axes": sorted(how.tiled_axes.items()),
        "calibration_method": how.calibration_method,
    }


def _how_from_json(d: dict) -> Any:
    from qwix._src.core import qarray

    return qarray.HowToQuantize(
        qtype=_qtype(d["qtype"]),
        channelwise_axes=list(d["channelwise_axes"]),
        tiled_axes={int(a): int(t) for a, t in d["tiled_axes"]},
        calibration_method=d["calibration_method"],
        noise_fn=None,
    )


def _register_export_serialization() -> None:
    """Lets `jax.export` serialize a PTQ model's parameter tree (export of int8 workdirs)."""
    import json

    from qwix._src.providers import ptq

    jax.export.register_pytree_node_serialization(
        qwix.QArray,
        serialized_name="qwix.QArray",
        serialize_auxdata=lambda aux: json.dumps([_qtype_name(q) for q in aux]).encode(),
        deserialize_auxdata=lambda data: tuple(_qtype(q) for q in json.loads(data)),
    )
    jax.export.register_pytree_node_serialization(
        ptq.WithAux,
        serialized_name="qwix.WithAux",
        serialize_auxdata=lambda aux: json.dumps([_how_to_json(h) for h in aux]).encode(),
        deserialize_auxdata=lambda data: tuple(_how_from_json(h) for h in json.loads(data)),
    )


_register_export_serialization()
