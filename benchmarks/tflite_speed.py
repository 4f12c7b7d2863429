"""What the exported TFLite model does with its int8 kernels on this CPU, next to JAX.

    python benchmarks/tflite_speed.py --workdir=runs/quickstart/compressed/int8-weights

WORKDIR is a workdir compressed to int8 kernels (`python -m jaxvision.compress
--method=int8-weights`); its compression.json names the float source run. The script
exports TFLite models (the float source as `float`, the compressed one as `dynamic` range
and full-integer `int8`), reloads each through the LiteRT interpreter, and times on one
eval batch, alternating model by model each round in this one process: the JAX float
forward, the JAX compressed forward (int8 kernels dequantized in the graph) and the three
TFLite models. It also reports each TFLite model's file size and its top-1 agreement with
the in-process compressed model over the eval split. Prints one JSON object and appends it
to benchmarks/results/tflite_speed.jsonl.
"""

import argparse
import json
import os
import tempfile


def main() -> None:
    """Exports, reloads, checks agreement and times the five forwards side by side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="A workdir compressed to int8.")
    parser.add_argument("--rounds", type=int, default=7, help="Alternating timing rounds.")
    parser.add_argument("--calls", type=int, default=5, help="Timed calls per model per round.")
    parser.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="LiteRT threads."
    )
    parser.add_argument("--results", default=os.path.join("benchmarks", "results"))
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import jax
    import numpy as np

    from jaxvision import data, export, export_int8, export_tflite, matmul_peak, parallel
    from jaxvision import workdir as workdir_lib
    from jaxvision.compression import report

    run = workdir_lib.load(args.workdir)
    with open(os.path.join(args.workdir, "compression.json")) as f:
        source = json.load(f)["source"]
    float_run = workdir_lib.load(source["workdir"], checkpoint_step=str(source["step"]))
    apply = jax.jit(lambda v, x: run.model.apply(v, x, train=False))
    int8_vars = export_int8.int8_variables(run)
    if int8_vars is None:
        raise SystemExit(f"{args.workdir} holds no int8 kernels (weights.npz).")
    int8_apply = jax.jit(lambda v, x: run.model.apply(export_int8.dequantize(v), x, train=False))
    models = {
        "jax_float": (apply, float_run.variables),
        "jax_int8_kernels": (int8_apply, int8_vars),
    }
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, source_run, quantization in (
            ("tflite_float", float_run, "float"),
            ("tflite_dynamic", run, "dynamic"),
            ("tflite_int8", run, "int8"),
        ):
            out = os.path.join(tmp, name)
            export.export(source_run, "tflite", out, tflite_quantization=quantization)
            sizes[name] = os.path.getsize(os.path.join(out, "model.tflite"))
            tflite = export_tflite.load_tflite(out, num_threads=args.threads)
            models[name] = (lambda _, x, fn=tflite: fn(np.asarray(x)), None)

    eval_data = data.eval_batches(run.config, run.info, parallel.make_mesh())
    ref_preds, labels = report.predictions(int8_apply, int8_vars, eval_data)
    quality = {}
    for name, (fn, variables) in models.items():
        preds = ref_preds if name == "jax_int8_kernels" else None
        if preds is None:
            preds, _ = report.predictions(fn, variables, eval_data)
        quality[name] = {
            "top1": round(float(np.mean(preds == labels)), 4),
            "agreement_with_jax_int8": round(float(np.mean(preds == ref_preds)), 4),
        }
    images = next(iter(eval_data))["image"]
    speed = report.side_by_side_speed(models, images, rounds=args.rounds, calls=args.calls)
    result = {
        "workdir": os.path.abspath(args.workdir),
        "model": run.config.model.name,
        "dataset": run.info.spec.name,
        "batch_size": int(images.shape[0]),
        "cpu": matmul_peak.machine()["cpu"],
        "tflite_threads": args.threads,
        "img_per_s": {k: round(v, 1) for k, v in speed.items()},
        "tflite_bytes": sizes,
        "quality": quality,
    }
    print(json.dumps(result, indent=2))
    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, "tflite_speed.jsonl"), "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
