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
