"""python -m jaxvision.benchmark: every measurement runs and prints every field (no timings)."""

import json
import os
import platform
import subprocess
import sys

import pytest

from jaxvision import benchmark
from jaxvision.backend import host_memory
from tests.trained_runs import REPO, run_cli


def test_command_line_prints_every_measurement_and_field():
    result = run_cli(
        [
            "-m", "jaxvision.benchmark", "--config=configs/quickstart.py:smoke",
            "--config.dataset.name=digits", "--config.batch_size=16",
            "--config.parallel.batch_branches=0",  # auto (smoke configs pin 1)
            "--what=peak,compile,train,infer,pipeline", "--steps=2", "--warmup=1",
            "--peak_size=64", "--peak_cache=", "--label=test",
        ]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in result.stdout.strip().splitlines()]
    kinds = [r["measurement"] for r in records]
    assert kinds == [
        "matmul_peak", "matmul_peak", "compile", "train", "infer", "memory", "pipeline", "summary"
    ]  # fmt: skip
    assert [r["dtype"] for r in records[:2]] == ["float32", "bfloat16"]
    for rec in records:
        assert rec["label"] == "test" and rec["model"] == "cnn" and rec["batch_size"] == 16
        assert rec["platform"] == "cpu" and "xla_flags" in rec
        assert rec["cpu"] and rec["isa"] in ("amx", "avx512f", "avx2", "avx", "unknown")
    for rec in records[:2]:
        assert rec["gflops_min"] <= rec["gflops_median"] <= rec["gflops"]
        assert rec["sizes"] == [32, 48, 64] and len(rec["trials_gflops"]) == rec["trials"]
    for rec in records[3:5]:
        assert {"median_ms", "mean_ms", "min_ms", "max_ms", "n"} <= set(rec)
        assert rec["min_ms"] <= rec["median_ms"] <= rec["max_ms"]
    assert records[3]["n"] == 2
    assert records[3]["batch_branches"] == 2  # auto: a BatchNorm-free model on one CPU device
    summary = records[-1]
    missing = [k for k in benchmark.SUMMARY_FIELDS if summary.get(k) is None]
    assert not missing, f"summary fields without a value: {missing}"
    assert summary["gflops_per_img"] > 0 and 0 < summary["mfu"] <= 1
    assert summary["peak_suspect"] is False
    memory = records[5]
    assert memory["temp_gb"] is not None and memory["peak_rss_gb"] > 0
    # The command re-executed itself with glibc's hugetlb tunable where that helps.
    wanted = host_memory.huge_page_environment(
        dict(os.environ), platform.libc_ver(), host_memory._thp_mode()
    )
    if wanted is not None:
        assert summary["glibc_tunables"] == wanted["GLIBC_TUNABLES"]


@pytest.mark.slow
def test_flops_per_image_do_not_depend_on_the_device_count():
    # A compiled two-device step is one device's half; the count must be the whole step's.
    gflops, devices = [], []
    for cpu_devices in (0, 2):
        result = run_cli(
            [
                "-m", "jaxvision.benchmark", "--config=configs/quickstart.py:smoke",
                "--config.dataset.name=digits", "--config.batch_size=16", "--what=compile",
                f"--config.parallel.cpu_devices={cpu_devices}",
            ]
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        gflops.append(summary["gflops_per_img"])
        devices.append(summary["devices"])
    assert devices == [1, 2]
    assert gflops[0] > 0 and gflops[1] == pytest.approx(gflops[0], rel=1e-3)


def _peer_config(name: str):
    """An unlocked config of benchmarks/peer_configs.py."""
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import peer_configs
    finally:
        sys.path.pop(0)
    config = peer_configs.get_config(name)
    config.unlock()
    return config


def _tiny_vit_config(scan: bool):
    config = _peer_config("vit_ti4_cifar")
    config.model.update(depth=2, hidden_size=32, num_heads=2, mlp_dim=64, scan=scan)
    config.batch_size = 4
    return config


# Unrolled is the default layout every other ViT test runs; the slow suite runs it here too.
@pytest.mark.parametrize("scan", [pytest.param(False, marks=pytest.mark.slow), True])
def test_peer_vit_config_runs_unrolled_and_scanned(scan):
    records = list(
        benchmark.run(_tiny_vit_config(scan), ["compile", "train", "infer"], warmup=0, steps=1)
    )
    summary = records[-1]
    assert summary["measurement"] == "summary" and summary["model"] == "vit_ti4"
    assert summary["train_img_per_s"] > 0 and summary["infer_img_per_s"] > 0
    # No peak was measured, so there is nothing to compute MFU against.
    assert summary["mfu"] is None and summary["peak_gflops_fp32"] is None


def test_compile_alone_initialises_no_parameters(monkeypatch):
    # Compile time of a model too large to initialise on the machine is still measurable.
    def no_values(*args, **kwargs):
        raise AssertionError("compile-only benchmark materialised a batch")

    monkeypatch.setattr(benchmark, "_random_batches", no_values)
    records = list(benchmark.run(_tiny_vit_config(True), ["compile"]))
    compiled = next(r for r in records if r["measurement"] == "compile")
    assert compiled["compile_s"] > 0 and compiled["gflops_per_img"] > 0
    assert records[-1]["train_img_per_s"] is None


def test_flops_per_image_are_the_models_with_winograd_convolutions():
    # XLA counts a Winograd conv's 4x fewer products; MFU is against the model's FLOPs.
    from jaxvision import backend
    from jaxvision.models.summary import xla_flops

    gflops = {}
    for name in ("cpu", "tpu"):  # the backend uses Winograd on CPU only
        config = _peer_config("resnet18_cifar")
        config.batch_size = 16  # stage 2's convs: 16x16x128, 256 tiles (Winograd)
        with backend.forced(name):
            bench = benchmark.Bench(config, materialize=False)
            gflops[name] = bench.compile()["gflops_per_img"]
        if name == "cpu":
            assert bench.tuned
            lowered = bench.train_fn.lower(bench.abstract_state, bench.abstract_batch)
            counted = xla_flops(lowered) / 1e9 / config.batch_size
    assert gflops["cpu"] == pytest.approx(gflops["tpu"], rel=1e-6)
    assert counted < 0.95 * gflops["tpu"]  # the Winograd step itself counts fewer


def test_unknown_measurement_is_an_error():
    with pytest.raises(ValueError, match="Unknown --what"):
        list(benchmark.run(_tiny_vit_config(False), ["train", "tarin"]))


def test_compare_table_headlines_the_fastest_pytorch_setup():
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import compare_table
    finally:
        sys.path.pop(0)
    lines = [
        '{"measurement": "machine", "cpu": "x", "isa": "avx2", "cores": 2, "load_1min": 0.5,'
        ' "when": "t"}'
    ]
    # Three repetitions; the machine is slower in the second, on every side. torch.compile
    # is the fastest PyTorch setup for train, eager for inference.
    rows = [(1000.0, 5.0, 10.0), (2500.0, 4.0, 5.0), (1666.7, 2.0, 3.0)]
    for rep, (jax_ms, eager_img_s, compiled_img_s) in enumerate(rows):
        lines += [
            f'{{"rep": {rep}, "bench": "m", "measurement": "train", "mean_ms": {jax_ms},'
            ' "batch_size": 10}',
            f'{{"rep": {rep}, "bench": "m", "measurement": "infer", "mean_ms": 100.0,'
            ' "batch_size": 10}',
            f'{{"rep": {rep}, "bench": "m", "measurement": "summary", "mfu": 0.5,'
            ' "batch_size": 10}',
            f'{{"rep": {rep}, "bench": "m", "peer": "pytorch-eager",'
            f' "train_img_per_s": {eager_img_s}, "infer_img_per_s": 200.0}}',
            f'{{"rep": {rep}, "bench": "m", "peer": "pytorch-compile",'
            f' "train_img_per_s": {compiled_img_s}, "infer_img_per_s": 50.0}}',
        ]
    values, machines = compare_table.collect(lines)
    assert len(machines) == 1 and machines[0]["isa"] == "avx2"
    rows = compare_table.table(values)
    # jaxvision's train medians 6.0 vs compile's 5.0; per repetition 1.0, 0.8 and 2.0.
    assert any(
        "| m | 10 | train | 6.0 [4.0-10.0] | pytorch-compile | 5.0 [3.0-10.0] | **1.20x** "
        "| 1.00x [0.80-2.00] | 3 |" in r
        for r in rows
    ), rows
    assert any("| m | 10 | infer | 100.0 [100.0-100.0] | pytorch-eager |" in r for r in rows)
    # Every setup has its own row with the ratio to it.
    assert any("| m | train | pytorch-eager | 4.0 [2.0-5.0] | 1.50x | 2.00x [1.00-3.00] |" in r
               for r in rows)  # fmt: skip
    assert any("| m | infer | pytorch-compile | 50.0 [50.0-50.0] | 2.00x |" in r for r in rows)
    assert any("50.0%" in r and "0 repetitions with peak_suspect" in r for r in rows)


def test_compiler_options_keep_a_choice_made_in_xla_flags(monkeypatch):
    from jaxvision.backend import xla_options

    monkeypatch.setenv("XLA_FLAGS", "")
    options = xla_options.compiler_options()
    assert options == {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=individual_dot")
    assert xla_options.compiler_options() is None


def test_time_to_accuracy_timestamps_the_first_eval_at_the_target(tmp_path):
    """A stand-in training command writes three evals; the script finds the second."""
    workdir = tmp_path / "run"
    fake_training = (
        "import json, os, sys, time\n"
        "d = sys.argv[1].split('=', 1)[1]; os.makedirs(d)\n"
        "with open(os.path.join(d, 'metrics.jsonl'), 'w') as f:\n"
        "    for step, acc in ((1, 0.5), (2, 0.98), (3, 0.99)):\n"
        "        f.write(json.dumps({'step': step, 'train/loss': 1.0}) + '\\n')\n"
        "        f.write(json.dumps({'step': step, 'eval/accuracy': acc}) + '\\n')\n"
        "        f.flush(); time.sleep(0.3)\n"
    )
    script = os.path.join(REPO, "benchmarks", "time_to_accuracy.py")
    command = [sys.executable, script, "--target=0.975", "--", sys.executable, "-c"]
    command += [fake_training, f"--workdir={workdir}"]
    out = subprocess.run(command, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["step_at_target"] == 2 and result["final_accuracy"] == 0.99
    assert [e["step"] for e in result["evals"]] == [1, 2, 3]
    assert 0.2 < result["seconds_to_target"] < result["seconds_total"]
    again = subprocess.run(command, capture_output=True, text=True)
    assert again.returncode != 0 and "already holds a run" in again.stderr


@pytest.mark.slow
def test_kernels_vs_torch_prints_every_kernel_and_field():
    """The kernel-level comparison runs at a tiny batch and prints each kernel once."""
    pytest.importorskip("torch")
    script = os.path.join(REPO, "benchmarks", "kernels_vs_torch.py")
    out = subprocess.run(
        [sys.executable, script, "--batch=2", "--repeats=1"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["kernel"].split()[0] for line in lines] == ["matmul"] * 6 + ["attention"] * 2
    for line in lines:
        assert line["jax_ms"] > 0 and line["torch_ms"] > 0 and line["ratio"] > 0
    assert all(line["jax_gflops"] > 0 for line in lines[:6])


def test_overridden_compiler_options_apply_only_inside_the_block(monkeypatch):
    from jaxvision.backend import xla_options

    monkeypatch.setenv("XLA_FLAGS", "")
    before = xla_options.compiler_options()
    with xla_options.overridden({"xla_cpu_experimental_ynn_fusion_type": "", "a_flag": "x"}):
        assert xla_options.compiler_options() == {"a_flag": "x"}
    assert xla_options.compiler_options() == before


@pytest.mark.slow
def test_interleaved_ab_times_every_variant_and_names_a_bad_key():
    """Two variants of the quickstart CNN, one with other XLA options, one step each."""
    script = os.path.join(REPO, "benchmarks", "interleaved_ab.py")
    base = [sys.executable, script, "--config=configs/quickstart.py", "--common=batch_size=8"]
    variant = "xla:xla_cpu_experimental_ynn_fusion_type=;model.name=cnn"
    command = [*base, "--steps=1", "", variant]
    out = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["variant"] for line in lines] == ["(as configured)", variant]
    assert lines[0]["ratio_to_first"] == 1.0
    assert all(line["img_per_s"] > 0 and line["steps"] == 1 for line in lines)
    bad = subprocess.run([*base, "model.no_such_key=1"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode != 0 and "'model.no_such_key'" in bad.stderr


def test_kernel_compile_cost_counts_shared_kernels_once():
    """Same-shape ops compile to one kernel; each new shape is another (the script's count)."""
    import jax
    import jax.numpy as jnp

    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import kernel_compile_cost
    finally:
        sys.path.pop(0)

    def fn(*xs):
        return [jnp.tanh(x) * 3.0 for x in xs]

    same = [jax.ShapeDtypeStruct((5, 7), jnp.float32)] * 3
    other = [jax.ShapeDtypeStruct((5 + i, 7), jnp.float32) for i in range(3)]
    for args, distinct in ((same, 1), (other, 3)):
        hlo = jax.jit(fn).lower(*args).compile().as_text()
        assert kernel_compile_cost.distinct_kernels(hlo) == (3, distinct)


@pytest.mark.slow  # ~14 s: a measurement script's output format
def test_kernel_compile_cost_prints_every_field():
    script = os.path.join(REPO, "benchmarks", "kernel_compile_cost.py")
    out = subprocess.run(
        [sys.executable, script, "--kernels=2,3"], capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["kernels"] for line in lines] == [2, 3]
    for line in lines:
        assert line["compile_s"] > 0 and line["cpu_ms_per_kernel"] > 0
    step = subprocess.run(
        [sys.executable, script, "--config=configs/quickstart.py:smoke",
         "--set=dataset.name=digits;batch_size=8"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert step.returncode == 0, step.stderr[-2000:]
    (record,) = [json.loads(line) for line in step.stdout.splitlines()]
    assert record["model"] == "cnn" and record["scan"] is False
    assert 0 < record["distinct_kernels"] <= record["fusions"]
    assert record["trace_s"] > 0 and record["compile_cpu_s"] > 0
