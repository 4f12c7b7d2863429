"""Ablation sweeps: model overrides, the plan, launch scripts, the table, and a real sweep."""

import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import distill as distill_configs
from configs import quickstart
from jaxvision import config_overrides, sweep, sweep_plan, sweep_report
from tests.trained_runs import REPO, run_cli

SMOKE = "configs/quickstart.py:smoke"
GRID = ["--grid", "optimizer.learning_rate=1e-3,3e-3", "--grid", "model.dropout=0.0,0.25"]
NAMES = [
    "learning_rate=0.001,dropout=0.0",
    "learning_rate=0.001,dropout=0.25",
    "learning_rate=0.003,dropout=0.0",
    "learning_rate=0.003,dropout=0.25",
]


def _sweep(capsys, *args):
    status = sweep.main(list(args))
    out = capsys.readouterr()
    return status, out.out, out.err


def test_a_model_argument_the_config_file_does_not_list_is_added_at_its_default():
    config = quickstart.get_config("smoke")
    assert "features" not in config.model
    config_overrides.prepare_for_overrides(config, ["x", "--config.model.features=(8,16)"])
    assert config.model.features == (32, 64)  # the constructor's default, typed for the flag
    config_overrides.apply(config, {"model.features": (8, 16), "model.name": "cnn"})
    assert config.model.features == (8, 16)


def test_a_teacher_model_takes_the_arguments_of_its_own_model():
    config = distill_configs.get_config("soft,smoke")
    config_overrides.apply(
        config, {"distill.teacher_model.name": "cnn", "distill.teacher_model.hidden": (32,)}
    )
    assert config.distill.teacher_model.hidden == (32,)
    with pytest.raises(ValueError, match=r"'distill\.teacher_model\.hiden'.*Did you mean 'hidden'"):
        config_overrides.check_key(config, "distill.teacher_model.hiden")
    config = distill_configs.get_config("soft,smoke")  # teacher_model.name "": its workdir's
    with pytest.raises(ValueError, match=r"set distill\.teacher_model\.name"):
        config_overrides.check_key(config, "distill.teacher_model.hidden")


@pytest.mark.parametrize(
    "key, expected",
    [
        ("model.dropuot", "Did you mean 'dropout'"),
        ("optimizer.learing_rate", "Did you mean 'learning_rate'"),
        ("optimiser.name", "Did you mean 'optimizer'"),
    ],
)
def test_an_unknown_key_gets_the_schemas_message_with_a_suggestion(key, expected):
    config = quickstart.get_config("smoke")
    with pytest.raises(ValueError, match=f"Unknown config key '{key}'.*{expected}"):
        config_overrides.check_key(config, key)


def test_main_takes_a_model_override_the_config_lacks_and_rejects_a_misspelt_one(tmp_path):
    bad = run_cli(
        ["-m", "jaxvision.main", "--config=configs/vit_ti4_cifar10.py:shapes",
         f"--workdir={tmp_path / 'run'}", "--config.model.poll=map"]
    )  # fmt: skip
    assert bad.returncode == 2, bad.stderr
    assert "Unknown config key 'model.poll'" in bad.stderr and "Did you mean 'pool'" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "run").exists()


def test_plan_names_each_point_by_its_overrides_and_counts_runs_and_steps(capsys, tmp_path):
    root = str(tmp_path / "sweep")
    status, out, _ = _sweep(
        capsys, f"--config={SMOKE}", f"--workdir={root}", *GRID, "--seeds=2", "--dry-run"
    )
    assert status == 0
    assert "4 points x 2 seeds [0, 1] = 8 runs, 160 training steps in all." in out
    assert not os.path.exists(root)  # a dry run writes nothing
    status, out, _ = _sweep(
        capsys, f"--config={SMOKE}", f"--workdir={root}", *GRID, "--seeds=2", "--launch=print"
    )
    assert status == 0
    with open(os.path.join(root, "sweep.json")) as f:
        plan = json.load(f)
    assert [p["name"] for p in plan["points"]] == NAMES
    assert plan["num_runs"] == 8 and plan["seeds"] == [0, 1] and plan["estimated_steps"] == 160
    first = plan["points"][0]
    assert first["overrides"] == {"optimizer.learning_rate": 0.001, "model.dropout": 0.0}
    assert [r["workdir"] for r in first["runs"]] == [
        os.path.join(root, NAMES[0], "seed0"),
        os.path.join(root, NAMES[0], "seed1"),
    ]
    printed = [shlex.split(line) for line in out.splitlines() if line.startswith("python ")]
    assert printed == [r["command"] for p in plan["points"] for r in p["runs"]]
    assert printed[1][-3:] == [
        "--config.seed=1",
        "--config.optimizer.learning_rate=0.001",
        "--config.model.dropout=0.0",
    ]
    # The same command again finds the same plan; another plan is refused, not mixed in.
    assert _sweep(capsys, f"--config={SMOKE}", f"--workdir={root}", *GRID, "--seeds=2",
                  "--launch=print")[0] == 0  # fmt: skip
    status, _, err = _sweep(capsys, f"--config={SMOKE}", f"--workdir={root}", *GRID, "--seeds=3")
    assert status == 2 and "holds another sweep" in err


def test_slurm_script_has_one_array_task_per_run_with_its_command(capsys, tmp_path):
    root = str(tmp_path / "sweep")
    status, out, _ = _sweep(
        capsys, f"--config={SMOKE}", f"--workdir={root}", *GRID, "--seeds=2", "--launch=slurm",
        "--sbatch=--time=00:30:00",
    )  # fmt: skip
    assert status == 0 and "sbatch" in out
    with open(os.path.join(root, "sweep.json")) as f:
        plan = json.load(f)
    with open(os.path.join(root, "sweep.sbatch")) as f:
        script = f.read()
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert "#SBATCH --array=0-7" in lines and "#SBATCH --time=00:30:00" in lines
    tasks = {}
    for line in lines:
        head, sep, rest = line.strip().partition(") exec ")
        if sep and head.isdigit():
            tasks[int(head)] = shlex.split(rest.removesuffix(" ;;"))
    expected = [r["command"] for p in plan["points"] for r in p["runs"]]
    assert [tasks[i] for i in range(8)] == expected
    assert subprocess.run(["bash", "-n", os.path.join(root, "sweep.sbatch")]).returncode == 0


@pytest.mark.parametrize(
    "grid, named",
    [
        ("model.poll=gap,map", "model.poll"),
        ("optimizer.learing_rate=1e-3,1e-2", "optimizer.learing_rate"),
        ("optimizer.learning_rate=fast,slow", "optimizer.learning_rate"),
        ("model.dropout=", "model.dropout"),
    ],
)
def test_a_bad_grid_fails_before_anything_runs_naming_the_key(capsys, tmp_path, grid, named):
    root = str(tmp_path / "sweep")
    status, _, err = _sweep(capsys, f"--config={SMOKE}", f"--workdir={root}", "--grid", grid)
    assert status == 2
    assert named in err
    assert not os.path.exists(root)


def test_zipped_lists_step_together_and_random_search_is_fixed_by_its_seed():
    points = sweep_plan.grid_points(
        ["model.dropout=0.0,0.5"], ["optimizer.learning_rate=1e-3,1e-2", "batch_size=32,64"]
    )
    assert points == [
        {"model.dropout": 0.0, "optimizer.learning_rate": 1e-3, "batch_size": 32},
        {"model.dropout": 0.0, "optimizer.learning_rate": 1e-2, "batch_size": 64},
        {"model.dropout": 0.5, "optimizer.learning_rate": 1e-3, "batch_size": 32},
        {"model.dropout": 0.5, "optimizer.learning_rate": 1e-2, "batch_size": 64},
    ]
    with pytest.raises(ValueError, match="same length"):
        sweep_plan.grid_points([], ["batch_size=32,64", "model.dropout=0.1"])
    grid = sweep_plan.grid_points(["model.dropout=0.0,0.1,0.2,0.3,0.4", "batch_size=16,32"], [])
    drawn = sweep_plan.random_subset(grid, "random:4", seed=0)
    assert len(drawn) == 4 and drawn == sweep_plan.random_subset(grid, "random:4", seed=0)
    assert drawn != sweep_plan.random_subset(grid, "random:4", seed=1)
    assert sweep_plan.random_subset(grid, "random:99", seed=0) == grid


def test_a_config_files_sweep_function_gives_the_points(tmp_path):
    path = tmp_path / "swept.py"
    path.write_text(
        "from configs import quickstart\n"
        "def get_config(arg=None):\n    return quickstart.get_config(arg)\n"
        "def sweep(arg=None):\n"
        "    return [{'model.dropout': 0.0}, {'model.dropout': 0.5, 'batch_size': 64}]\n"
    )
    plan = sweep_plan.build(f"{path}:smoke", "root", grids=[], zips=[], seeds="1")
    assert [p["name"] for p in plan["points"]] == [
        "dropout=0.0,batch_size=default",
        "dropout=0.5,batch_size=64",
    ]


def _fake_run(workdir, accuracies, steps=20, exit_status=0):
    os.makedirs(workdir)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for i, acc in enumerate(accuracies, 1):
            step = steps * i // len(accuracies)
            f.write(json.dumps({"step": step, "train/loss": 2.0 - acc}) + "\n")
            f.write(json.dumps({"step": step, "eval/accuracy": acc, "eval/loss": 1 - acc}) + "\n")
    with open(os.path.join(workdir, sweep_report.RUN_RECORD), "w") as f:
        json.dump({"exit_status": exit_status, "wall_seconds": 10.0, "attempts": 1}, f)


def test_table_marks_the_best_notes_a_tie_and_never_averages_over_missing_seeds(tmp_path):
    root = str(tmp_path)
    runs = {
        "a": [[0.5, 0.9], [0.6, 0.8]],  # final 0.9, 0.8
        "b": [[0.7, 0.84], [0.7, 0.9]],  # final 0.84, 0.9: within one std of a
        "c": [[0.95, 0.99], None],  # seed 1 missing
    }
    points = []
    for name, per_seed in runs.items():
        entries = []
        for seed, accs in enumerate(per_seed):
            workdir = os.path.join(root, name, f"seed{seed}")
            if accs is not None:
                _fake_run(workdir, accs)
            entries.append({"seed": seed, "workdir": workdir, "command": []})
        points.append({"name": name, "overrides": {"x": name}, "steps": 20, "runs": entries})
    plan = {"config": "c.py", "seeds": [0, 1], "points": points}
    result = sweep_report.write(root, plan)
    with open(os.path.join(root, "ablation.md")) as f:
        table = f.read()
    assert "| **`b`** (best) | 2/2 |" in table
    assert "| `c` | 1/2 (seed 1 missing) | — |" in table
    assert "within one standard deviation" in result["note"]
    with open(os.path.join(root, "ablation.csv")) as f:
        rows = {r["point"]: r for r in csv.DictReader(f)}
    a = np.array([0.9, 0.8])
    assert float(rows["a"]["final eval/accuracy mean"]) == pytest.approx(a.mean(), abs=1e-12)
    assert float(rows["a"]["final eval/accuracy std"]) == pytest.approx(a.std(ddof=1), abs=1e-12)
    assert float(rows["a"]["best eval/loss mean"]) == pytest.approx(np.mean([0.1, 0.2]))
    assert rows["c"]["final eval/accuracy mean"] == "" and rows["c"]["seeds_finished"] == "1"
    assert os.path.getsize(os.path.join(root, "ablation.png")) > 0


# The real sweep: a 2x2 grid x 2 seeds, shared by the slow tests below (in file order).


def _holder_pid(workdir):
    path = os.path.join(workdir, "checkpoints", "jaxvision_lock_holder.json")
    with open(path) as f:
        return json.load(f)["pid"]


def _sweep_cli(root, *extra):
    args = ["-m", "jaxvision.sweep", f"--config={SMOKE}", f"--workdir={root}", *GRID]
    return [*args, "--grid", "dataset.name=digits", "--grid", "num_train_steps=40", "--seeds=2",
            *extra]  # fmt: skip


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory):
    """A sweep killed (-9) in its first run after a checkpoint, then rerun to the end."""
    root = str(tmp_path_factory.mktemp("sweep") / "root")
    first = os.path.join(root, NAMES[0], "seed0")
    started = subprocess.Popen(
        [sys.executable, *_sweep_cli(root)], cwd=REPO, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 600
    while not os.path.isdir(os.path.join(first, "checkpoints", "10")):
        assert started.poll() is None and time.time() < deadline
        time.sleep(0.05)
    started.kill()  # the sweep, then its run (which has a session of its own)
    started.wait()
    os.kill(_holder_pid(first), signal.SIGKILL)
    killed_at = max(r["step"] for r in sweep_report.metrics_records(first))
    rerun = run_cli(_sweep_cli(root), timeout=1800)
    return {"root": root, "first": first, "killed_at": killed_at, "rerun": rerun}


@pytest.mark.slow
def test_real_sweep_resumes_the_killed_run_and_finishes_every_point(real_sweep):
    rerun = real_sweep["rerun"]
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"[1/8] {NAMES[0]}/seed0: resuming..." in rerun.stdout
    with open(os.path.join(real_sweep["first"], "sweep.log")) as f:
        log = f.read()
    resumed = [int(s) for s in re.findall(r"Resumed from \S+ at step (\d+)", log)]
    assert len(resumed) == 1 and 10 <= resumed[0] < 40, log[-2000:]
    records = sweep_report.metrics_records(real_sweep["first"])
    steps = [r["step"] for r in records if "train/loss" in r]
    assert steps == list(range(5, 45, 5))  # each logged once: resumed, not restarted
    assert sorted(os.listdir(real_sweep["root"])) == sorted(
        [*NAMES, "ablation.csv", "ablation.md", "ablation.png", "sweep.json"]
    )


@pytest.mark.slow
def test_real_sweep_table_equals_numpy_over_each_points_metrics(real_sweep):
    root = real_sweep["root"]
    with open(os.path.join(root, "ablation.csv")) as f:
        rows = {r["point"]: r for r in csv.DictReader(f)}
    for name in NAMES:
        finals, losses = [], []
        for seed in (0, 1):
            records = sweep_report.metrics_records(os.path.join(root, name, f"seed{seed}"))
            evals = [r for r in records if "eval/accuracy" in r]
            finals.append(evals[-1]["eval/accuracy"])
            losses.append(evals[-1]["eval/loss"])
        row = rows[name]
        assert row["seeds_finished"] == "2"
        assert float(row["final eval/accuracy mean"]) == pytest.approx(np.mean(finals), abs=1e-12)
        assert float(row["final eval/accuracy std"]) == pytest.approx(
            np.std(finals, ddof=1), abs=1e-12
        )
        assert float(row["final eval/loss mean"]) == pytest.approx(np.mean(losses), abs=1e-12)
    assert sum(r["best"] == "True" for r in rows.values()) == 1


@pytest.mark.slow
def test_rerunning_a_finished_sweep_skips_every_run(real_sweep):
    again = run_cli(_sweep_cli(real_sweep["root"]))
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("finished before, skipped.") == 8
    assert "training..." not in again.stdout and "resuming..." not in again.stdout


@pytest.mark.slow
def test_printed_commands_run_as_printed(real_sweep):
    printed = run_cli(_sweep_cli(real_sweep["root"], "--launch=print"))
    assert printed.returncode == 0, printed.stderr
    commands = [line for line in printed.stdout.splitlines() if line.startswith("python ")]
    assert len(commands) == 8
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    # The last run, trained by the sweep: the printed command resumes it at its final step.
    ran = subprocess.run(
        commands[-1], shell=True, cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert ran.returncode == 0, ran.stderr
    assert "at step 40" in ran.stderr
