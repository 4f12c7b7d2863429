"""Compress a trained run: python -m jaxvision.compress --workdir=DIR --method=prune:0.5[,...]

Methods (applied in the order given): `prune:S` (global magnitude over conv, dense and
attention kernels, sparsity S), `prune:N:M` (N of every M consecutive inputs kept), each
followed by a fine-tune that keeps the mask (--finetune_steps, --finetune_learning_rate;
it runs in OUT/finetune/ and resumes if interrupted), then at most one of `int8-weights`
(int8 kernels with one scale per output channel, float activations), `int8` (int8 kernels
and int8 inputs to every conv and dense layer with static scales calibrated on
--calibration_batches training batches) and `int8-dynamic` (input scales computed per
example at run time); the last two through qwix's PTQ provider.

OUT (default DIR/compressed/<method>/) is a workdir that evaluate, predict and export
accept: config.json (with `quantization.mode` ptq-static or ptq-dynamic for int8 and
int8-dynamic, so every tool builds the int8 model), checkpoints/ (the compressed weights:
float32 for int8-weights, the PTQ model's int8 parameters otherwise), weights.npz (the
compressed weights as stored: int8 values, bitmasks of non-zeros, input scales) and
compression.json (top-1, agreement with the source model, parameter bytes, sparsity per
layer, img/s).
"""

import json
import os
import shutil
import sys
import tempfile
from typing import Any

import jax
import ml_collections
from absl import app, flags

from jaxvision import (
    checkpoint,
    command_line,
    data,
    matmul_peak,
    parallel,
    step_factory,
    train,
    workdir_files,
)
from jaxvision import workdir as workdir_lib
from jaxvision.compression import methods as methods_lib
from jaxvision.compression import pruning, quantize, quantized_model, report, storage


def finetune_config(
    source: ml_collections.ConfigDict,
    method: methods_lib.Method,
    source_dir: str,
    steps: int,
    learning_rate: float,
) -> ml_collections.ConfigDict:
    """The source run's config turned into a masked fine-tune starting from its weights."""
    c = source.copy_and_resolve_references()
    with c.unlocked():
        c.pretrained = os.path.abspath(source_dir)
        c.pretrained_resolved = ""
        c.pruning.sparsity = 0.0 if method.m else method.sparsity
        c.pruning.structure = method.structure
        c.pruning.start_step = c.pruning.end_step = 0
        c.num_train_steps = steps
        c.optimizer.learning_rate = learning_rate
        c.optimizer.ema_decay = 0.0  # the EMA would average unmasked weights
        c.schedule.warmup_steps, c.schedule.warmup_epochs = 0, 0.0
        c.schedule.boundaries_steps, c.schedule.boundaries_epochs = (), ()
        c.log_every_steps = min(c.log_every_steps, steps)
        c.eval_every_steps = 0
        c.checkpoint_every_steps = max(1, min(c.checkpoint_every_steps, steps // 4 or 1))
        c.evals = ()
    return c


def _source(workdir: str) -> workdir_lib.LoadedRun:
    """The source run at the checkpoint a fine-tune starts from: best eval, else latest."""
    try:
        return workdir_lib.load(workdir, checkpoint_step="best")
    except workdir_lib.WorkdirError:
        return workdir_lib.load(workdir, checkpoint_step="latest")


def _write_workdir(out: str, config, info, variables: dict, step: int, masks: Any) -> None:
    """config.json and one checkpoint holding `variables`: a workdir the other tools read."""
    built = step_factory.build(
        config,
        num_classes=info.num_classes,
        image_shape=info.image_shape,
        num_train_examples=info.num_train,
    )
    state = built.reinit_fn(built.init_fn(), variables["params"], variables.get("batch_stats", {}))
    if masks is not None:
        state = state.replace(opt_state=pruning.with_masks(state.opt_state, masks, step))
    state = state.replace(step=jax.numpy.asarray(step, jax.numpy.int32))
    workdir_files.write_text(
        os.path.join(out, "config.json"), config.to_json_best_effort(indent=2, sort_keys=True)
    )
    ckpts = checkpoint.Checkpoints(os.path.join(out, "checkpoints"), keep=1)
    try:
        meta = {"step": step, "dataset": info.spec.name, "config": train.config_record(config)}
        ckpts.save(step, state, meta)
    finally:
        ckpts.close()


def _float_bytes(params: Any, batch_stats: Any) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        return storage.write(os.path.join(tmp, "float.npz"), params, batch_stats, sparse=False)


def compress(
    workdir: str,
    spec: str,
    out: str | None = None,
    *,
    finetune_steps: int = 200,
    finetune_learning_rate: float = 3e-4,
    calibration_batches: int | None = None,
    speed_rounds: int = 5,
    speed_calls: int = 5,
) -> dict:
    """Compresses `workdir` by the methods of `spec` into `out`; returns compression.json."""
    methods = methods_lib.parse(spec)
    name = ",".join(m.name for m in methods)
    out = out or os.path.join(workdir, "compressed", name.replace(":", "_").replace(",", "+"))
    if os.path.exists(os.path.join(out, "compression.json")):
        raise workdir_lib.WorkdirError(f"{out} already holds a compressed model; pick a new --out.")
    src = _source(workdir)
    if src.config.quantization.mode in quantized_model.PTQ_MODES:
        raise workdir_lib.WorkdirError(
            f"{workdir} holds an int8 model (quantization.mode={src.config.quantization.mode!r});"
            " compress the float or QAT run it came from."
        )
    calibration_batches = calibration_batches or src.config.quantization.calibration_batches
    config, variables, step, masks = src.config, src.variables, src.step, None
    prune = next((m for m in methods if m.kind == "prune"), None)
    if prune:
        config = finetune_config(src.config, prune, workdir, finetune_steps, finetune_learning_rate)
        finetune_dir = os.path.join(out, "finetune")
        train.run(config, finetune_dir)
        tuned = workdir_lib.load(finetune_dir)
        variables, step = tuned.variables, tuned.step
        masks = pruning.masks_of(_restore_opt_state(finetune_dir, tuned))
    batch_stats = variables.get("batch_stats", {})
    quant = next((m.kind for m in methods if m.kind in methods_lib.QUANTIZE), None)
    if quant in ("int8", "int8-dynamic"):
        mode = methods_lib.QUANTIZE[quant]
        config, final = int8_model(config, src.info, variables, mode, calibration_batches)
        stored, masks = final["params"], None  # the PTQ model is not trained further
        comp_model = step_factory.create_model(config, src.info.num_classes)
        comp_fn = jax.jit(lambda v, x: comp_model.apply(v, x, train=False))
        comp_vars, dense = final, quantized_model.dequantize_params(stored)
    else:
        int8 = quant == "int8-weights"
        stored = quantize.quantize_kernels(variables["params"]) if int8 else variables["params"]
        final = {**variables, "params": quantize.dequantize_kernels(stored)}
        comp_fn, comp_vars = _weight_only_forward(src.model, final, stored, int8)
        dense = final["params"]
    shutil.rmtree(os.path.join(out, "checkpoints"), ignore_errors=True)  # a killed earlier write
    os.makedirs(out, exist_ok=True)
    _write_workdir(out, config, src.info, final, step, masks)
    bytes_compressed = storage.write(os.path.join(out, "weights.npz"), stored, batch_stats)
    result = _measure(src, comp_fn, comp_vars, speed_rounds, speed_calls)
    if quant == "int8":
        result["calibration_batches"] = calibration_batches
    result.update(
        method=name,
        source={"workdir": workdir_files.absolute(workdir), "step": src.step},
        param_bytes={
            "float32": _float_bytes(src.variables["params"], batch_stats),
            "compressed": bytes_compressed,
        },
        sparsity=pruning.overall_sparsity(dense),
        sparsity_per_layer=pruning.sparsity_per_layer(dense),
        finetune=(
            {
                "steps": finetune_steps,
                "learning_rate": finetune_learning_rate,
                "workdir": os.path.join(out, "finetune"),
            }
            if prune
            else None
        ),
    )
    result["param_bytes"]["ratio"] = bytes_compressed / result["param_bytes"]["float32"]
    workdir_files.write_text(os.path.join(out, "compression.json"), json.dumps(result, indent=2))
    return result


def _restore_opt_state(finetune_dir: str, tuned: workdir_lib.LoadedRun) -> Any:
    """The fine-tune's optimizer state (which holds the masks) at its loaded step."""
    built = step_factory.build(
        tuned.config,
        num_classes=tuned.info.num_classes,
        image_shape=tuned.info.image_shape,
        num_train_examples=tuned.info.num_train,
    )
    ckpts = checkpoint.open_read_only(os.path.join(finetune_dir, "checkpoints"))
    try:
        state, _ = ckpts.restore(tuned.step, built.abstract_state)
    finally:
        ckpts.close()
    return state.opt_state


def _weight_only_forward(model, final: dict, stored: Any, int8: bool) -> tuple[Any, dict]:
    """The forward pass of a weight-only compressed model and the variables it takes."""
    if not int8:
        return jax.jit(lambda v, x: model.apply(v, x, train=False)), final
    # As deployed: int8 kernels in memory, dequantized in the graph.
    fn = jax.jit(
        lambda v, x: model.apply(
            {**v, "params": quantize.dequantize_kernels(v["params"])}, x, train=False
        )
    )
    return fn, {**final, "params": stored}


def int8_model(
    config: ml_collections.ConfigDict, info, variables: dict, mode: str, calibration_batches: int
) -> tuple[ml_collections.ConfigDict, dict]:
    """The config and variables of the int8 PTQ model (`mode` ptq-static or ptq-dynamic) of
    `variables`; static input scales from `calibration_batches` training batches."""
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.quantization.mode = mode
        c.quantization.weight_bits = c.quantization.act_bits = 8
        c.quantization.calibration_batches = calibration_batches
        # The int8 model is not trained further: no masks in its optimizer state.
        c.pruning.sparsity, c.pruning.structure = 0.0, "unstructured"
        c.pruning.start_step = c.pruning.end_step = 0
    stats = None
    if mode == "ptq-static":
        # The training order of the run's seed: the same batches every time.
        batches = data.train_batches(config, info, parallel.make_mesh())
        images = (next(batches)["image"] for _ in range(calibration_batches))
        model = step_factory.create_model(config, info.num_classes)  # float or QAT
        stats = quantized_model.calibrate(model, variables, images, c.quantization)
    ptq_model = step_factory.create_model(c, info.num_classes)
    params = quantized_model.quantize_params(
        ptq_model, variables["params"], info.image_shape, stats
    )
    return c, {**variables, "params": params}


def _measure(src, comp_fn, comp_vars: dict, rounds: int, calls: int) -> dict:
    """Top-1, agreement and side-by-side img/s of the source and compressed models."""
    model = src.model
    float_fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
    eval_data = data.eval_batches(src.config, src.info, parallel.make_mesh())
    result = report.accuracy_and_agreement(float_fn, src.variables, comp_fn, comp_vars, eval_data)
    images = next(iter(eval_data))["image"]
    speed = report.side_by_side_speed(
        {"float": (float_fn, src.variables), "compressed": (comp_fn, comp_vars)},
        images,
        rounds=rounds,
        calls=calls,
    )
    result["eval_split"] = src.info.spec.eval_split
    result["img_per_s"] = {
        **{k: round(v, 1) for k, v in speed.items()},
        "batch_size": int(images.shape[0]),
        "cpu": matmul_peak.machine()["cpu"],
        "devices": jax.device_count(),
    }
    return result


FLAGS = flags.FlagValues()  # this tool's own, so it can be imported next to other tools
_WORKDIR = command_line.define_workdir(FLAGS)
_METHOD = flags.DEFINE_string(
    "method",
    None,
    f"Comma-separated, applied in order: {', '.join(methods_lib.METHODS)}.",
    flag_values=FLAGS,
    required=True,
)
_OUT = flags.DEFINE_string(
    "out", None, "Output workdir (default WORKDIR/compressed/<method>/).", flag_values=FLAGS
)
_STEPS = flags.DEFINE_integer(
    "finetune_steps",
    200,
    "Masked fine-tune steps after pruning.",
    lower_bound=1,
    flag_values=FLAGS,
)
_CALIBRATION = flags.DEFINE_integer(
    "calibration_batches",
    None,
    "int8: training batches (the run's seed's order) that calibrate the static input scales "
    "(default: the run's quantization.calibration_batches, 8).",
    lower_bound=1,
    flag_values=FLAGS,
)
_LR = flags.DEFINE_float(
    "finetune_learning_rate",
    3e-4,
    "Peak learning rate of the masked fine-tune.",
    flag_values=FLAGS,
)


def _compress(args: list[str]) -> None:
    if args:
        raise app.UsageError(f"Unexpected arguments: {' '.join(args)}")
    from jaxvision import console

    console.setup()
    methods_lib.parse(_METHOD.value)  # bad method strings fail before anything loads
    result = compress(
        _WORKDIR.value,
        _METHOD.value,
        _OUT.value,
        finetune_steps=_STEPS.value,
        finetune_learning_rate=_LR.value,
        calibration_batches=_CALIBRATION.value,
    )
    print(
        json.dumps(
            {
                k: result[k]
                for k in (
                    "method",
                    "compressed_top1",
                    "float_top1",
                    "agreement",
                    "param_bytes",
                    "img_per_s",
                )
            }
        )
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the command on `argv` (default: the process's); returns its exit status."""
    return command_line.run("jaxvision.compress", __doc__, FLAGS, _compress, argv)


if __name__ == "__main__":
    sys.exit(main())
