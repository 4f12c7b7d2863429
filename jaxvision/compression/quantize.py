"""Weight-only int8 with per-output-channel scales, through qwix's array API.

qwix's model interception (`quantize_model` with `PtqProvider`) refuses weight-only int8 for
convolutions (it requires act_qtype == weight_qtype for conv_general_dilated), so kernels
are quantized with `qwix.quantize` (absmax, symmetric) and the model runs on
`qwix.dequantize`d weights: int8 in memory and on disk, float activations.
"""

from typing import Any

import jax
import jax.numpy as jnp
import qwix

from jaxvision.compression import kernels


def quantize_kernel(path: tuple, kernel: jax.Array) -> qwix.QArray:
    """A kernel as int8 values and one float32 scale per output channel."""
    axes = kernels.output_axes(path, kernel.shape)
    return qwix.quantize(jnp.asarray(kernel, jnp.float32), jnp.int8, channelwise_axes=axes)


def quantize_kernels(params: Any) -> Any:
    """`params` with every compressible kernel replaced by its int8 `qwix.QArray`."""
    return kernels.map_kernels(quantize_kernel, params)


def is_quantized(leaf: Any) -> bool:
    """Whether a leaf is a quantized kernel."""
    return isinstance(leaf, qwix.QArray)


def dequantize_kernels(qparams: Any) -> Any:
    """Float32 parameters from a tree holding int8 kernels (other leaves pass through)."""
    return jax.tree.map(
        lambda x: qwix.dequantize(x) if is_quantized(x) else x, qparams, is_leaf=is_quantized
    )


def error_bound(qkernel: qwix.QArray) -> jax.Array:
    """Half a quantization step per output channel: the most |w - dequantized w| can be."""
    return qkernel.scale / 2
