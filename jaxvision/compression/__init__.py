"""Model compression: magnitude pruning (unstructured and N:M) and int8 quantization.

`methods` parses the `--method` strings, `kernels` says which parameters are compressed and
along which axes, `pruning` builds masks and the mask-keeping optimizer transform,
`quantize` the per-output-channel int8 weights, `quantized_model` the qwix-quantized models
of `config.quantization` (QAT, static and dynamic int8), `storage` the compressed weight file and
`report` the accuracy, agreement, size and speed of a compressed model.
"""
