"""The matmul peak MFU divides by: cached per machine, re-measured when a step beats it."""

import json

import pytest

from jaxvision import benchmark, matmul_peak


def test_isa_names_the_best_matmul_extension():
    assert matmul_peak.isa_of({"sse2", "avx", "avx2", "fma"}) == "avx2"
    assert matmul_peak.isa_of({"avx2", "avx512f", "amx_tile", "amx_bf16"}) == "amx"
    assert matmul_peak.isa_of({"avx2", "avx512f"}) == "avx512f"
    assert matmul_peak.isa_of({"neon"}) == "unknown"
    machine = matmul_peak.machine()
    assert machine["cpu"] and machine["cores"] >= 1


def _fake_measure(figures: list[float]):
    """A stand-in for timing: each call returns the next figure as the best trial."""
    calls = []

    def measure(dtype, sizes, trials=3, calls_per_trial=3):
        g = figures[len(calls)]
        calls.append(dtype)
        return {"dtype": dtype, "gflops": g, "gflops_median": g, "gflops_min": g,
                "best_size": sizes[-1], "sizes": list(sizes), "trials": 1,
                "trials_gflops": [g]}  # fmt: skip

    return measure, calls


def test_peak_is_cached_per_process_and_per_machine_and_keeps_the_best(tmp_path, monkeypatch):
    cache = str(tmp_path / "peak.json")
    measure, calls = _fake_measure([50.0, 40.0, 60.0, 30.0])
    monkeypatch.setattr(matmul_peak, "measure", measure)
    monkeypatch.setattr(matmul_peak, "_process_cache", {})
    first = matmul_peak.peak("float32", 64, cache=cache)
    assert first["source"] == "measured" and first["gflops"] == 50.0
    assert matmul_peak.peak("float32", 64, cache=cache)["source"] == "process"
    monkeypatch.setattr(matmul_peak, "_process_cache", {})  # a new process reads the file
    again = matmul_peak.peak("float32", 64, cache=cache)
    assert again["source"] == "file" and again["gflops"] == 50.0
    (key,) = json.loads((tmp_path / "peak.json").read_text())
    assert "float32" in key and matmul_peak.machine()["isa"] in key
    # A re-measurement that comes out lower keeps the higher figure; a higher one replaces it.
    assert matmul_peak.remeasure("float32", 64, cache=cache)["gflops"] == 50.0
    assert matmul_peak.remeasure("float32", 64, cache=cache)["gflops"] == 60.0
    # --peak_refresh takes the new figure whatever it is.
    assert matmul_peak.peak("float32", 64, cache=cache, refresh=True)["gflops"] == 30.0
    assert len(calls) == 4


def test_a_step_faster_than_the_peak_remeasures_it_once():
    remeasured = []

    def remeasure():
        remeasured.append(1)
        return 120.0

    used = benchmark.utilization(achieved=100.0, peak=80.0, remeasure=remeasure)
    assert used == {"peak_gflops": 120.0, "peak_suspect": False, "peak_warning": None,
                    "mfu": pytest.approx(100 / 120, abs=1e-4)}  # fmt: skip
    assert len(remeasured) == 1
    held = benchmark.utilization(achieved=50.0, peak=80.0, remeasure=lambda: 1 / 0)
    assert held["mfu"] == 0.625 and not held["peak_suspect"]


def _fake_records(config, what, warmup, steps, peak):
    """A step measured at 10 img/s x 6 GFLOP/img = 60 GFLOP/s; no real timing."""
    for dtype in ("float32", "bfloat16"):
        yield benchmark._peak_record(dtype, matmul_peak.peak(dtype, **peak))
    yield {"measurement": "compile", "gflops_per_img": 6.0}
    yield {"measurement": "train", "train_img_per_s": 10.0, "step_ms": 100.0}


def test_benchmark_flags_a_peak_below_the_steps_rate_and_prints_no_mfu_above_one(
    monkeypatch, caplog
):
    from jaxvision import console
    from tests.test_benchmark import _tiny_vit_config

    monkeypatch.setattr(console.log, "propagate", True)  # console.setup() may have cleared it
    # The peak comes out at 40 GFLOP/s, and 45 when measured again: both below the step's 60.
    measure, calls = _fake_measure([40.0, 200.0, 45.0])
    monkeypatch.setattr(matmul_peak, "measure", measure)
    monkeypatch.setattr(matmul_peak, "_process_cache", {})
    monkeypatch.setattr(benchmark, "_measure", _fake_records)
    records = list(benchmark.run(_tiny_vit_config(False), ["peak", "train"], peak_cache=None))
    summary = records[-1]
    assert calls == ["float32", "bfloat16", "float32"]  # the fp32 peak re-measured once
    assert summary["mfu"] is None and summary["peak_suspect"] is True
    assert summary["achieved_gflops"] == 60.0 and summary["peak_gflops_fp32"] == 45.0
    assert "60.0 GFLOP/s" in summary["peak_warning"] and "45.0 GFLOP/s" in summary["peak_warning"]
    assert "60.0 GFLOP/s" in caplog.text
    for rec in records:
        assert rec.get("mfu") is None or rec["mfu"] <= 1
        assert rec["cpu"] and rec["isa"]
