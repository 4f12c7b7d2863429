"""python -m jaxvision.benchmark --what=export: exported models' speed beside in-process."""

import pytest

from jaxvision import benchmark
from tests.test_benchmark import _tiny_vit_config


@pytest.mark.slow  # ~20 s of CPU: two exports, TensorFlow's import and a SavedModel load
def test_export_speed_times_both_formats_reloaded_and_the_in_process_forward():
    records = list(benchmark.run(_tiny_vit_config(False), ["export"], warmup=1, steps=2))
    (record,) = [r for r in records if r["measurement"] == "export"]
    assert record["batch"] == 4
    for name in ("in_process", "stablehlo", "savedmodel"):
        assert record[f"{name}_img_per_s"] > 0 and len(record[f"{name}_ms"]) == 2
    for fmt in ("stablehlo", "savedmodel"):
        assert record[f"{fmt}_vs_in_process"] > 0 and record[f"{fmt}_export_and_load_s"] > 0
    summary = records[-1]
    assert summary["stablehlo_img_per_s"] == record["stablehlo_img_per_s"]
    assert summary["cpu"] and summary["isa"]


def test_a_cpu_tuned_resnet_exports_with_a_symbolic_batch():
    # The backend's Winograd choice depends on the batch size, which an export leaves open.
    import jax
    import jax.numpy as jnp

    from jaxvision import backend, models

    model = backend.tune_model(models.create("resnet18", num_classes=10, stem="cifar", width=0.125))
    images = jax.ShapeDtypeStruct((8, 8, 8, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), images)
    (batch,) = jax.export.symbolic_shape("batch")
    symbolic = jax.ShapeDtypeStruct((batch, 8, 8, 3), jnp.float32)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    exported = jax.export.export(apply)(variables, symbolic)
    assert exported.in_avals[-1].shape[0] == batch  # the images, after the weights
