"""One command-line convention: absl flags with shared names, --help, and exit statuses.

Every entry point answers --help with exit status 0 and lists its flags; the same thing
has the same flag everywhere; bad input exits 2 with a message (never a traceback),
runtime failures exit 1 with their own message, and a preempted run 143.
"""

import contextlib
import io
import os
import re
import subprocess
import sys

import pytest

from jaxvision import command_line, compress, evaluate, exit_status, export, predict
from jaxvision.models import __main__ as models_main
from tests.trained_runs import REPO, run_cli

# python -m MODULE for every entry point, and flags each must list in --help.
ENTRY_POINTS = {
    "jaxvision.main": {"config", "workdir"},
    "jaxvision.evaluate": {"workdir", "split", "checkpoint", "ema", "compare"},
    "jaxvision.predict": {"workdir", "checkpoint", "ema", "top_k", "explain", "overwrite"},
    "jaxvision.export": {"workdir", "checkpoint", "ema", "format", "out"},
    "jaxvision.benchmark": {"config", "what", "steps", "warmup"},
    "jaxvision.compress": {"workdir", "method", "out", "finetune_steps", "finetune_learning_rate"},
    "jaxvision.sweep": {"config", "workdir", "grid", "zip", "seeds", "launch", "dry_run", "report"},
    "jaxvision.data.benchmark": {"config", "warmup", "batches"},
    "jaxvision.models": {"image_size", "num_classes"},
}


# Tools that parse their own flags answer in-process; the others are light to start.
IN_PROCESS = {
    "jaxvision.evaluate": evaluate.main,
    "jaxvision.predict": predict.main,
    "jaxvision.export": export.main,
    "jaxvision.compress": compress.main,
    "jaxvision.models": models_main.main,
}


@pytest.fixture(scope="module")
def help_outputs() -> dict[str, subprocess.CompletedProcess]:
    """`python -m MODULE --help` of every entry point."""
    env = {**os.environ, "PYTHONPATH": REPO}
    done = {}
    for module in ENTRY_POINTS:
        if module in IN_PROCESS:
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = IN_PROCESS[module](["--help"])
            done[module] = subprocess.CompletedProcess([module], status, out.getvalue(), "")
        else:
            done[module] = subprocess.run(
                [sys.executable, "-m", module, "--help"],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
    return done


def _listed_flags(help_text: str) -> set[str]:
    return set(re.findall(r"^\s+--([A-Za-z0-9_.]+):", help_text, re.MULTILINE))


@pytest.mark.parametrize("module", list(ENTRY_POINTS))
def test_every_entry_point_answers_help_with_exit_0_and_lists_its_flags(module, help_outputs):
    # On main: absl's --help exited 1 (main, benchmark); argparse tools spelt --top-k.
    result = help_outputs[module]
    assert result.returncode == 0, result.stderr[-2000:]
    listed = _listed_flags(result.stdout)
    assert ENTRY_POINTS[module] <= listed, (module, listed)
    assert f"python -m {module}" in result.stdout  # the usage line of the docstring


def test_the_same_thing_has_the_same_flag_everywhere(help_outputs):
    names = set().union(*(_listed_flags(r.stdout) for r in help_outputs.values()))
    assert not [n for n in names if "-" in n], "absl flags use underscores"
    spellings: dict[str, set[str]] = {}
    for n in names:
        spellings.setdefault(re.sub(r"[_.]", "", n.lower()), set()).add(n)
    assert all(len(v) == 1 for v in spellings.values()), spellings
    # Tools on a workdir define these flags from one place: same name, same help.
    tools = [evaluate.FLAGS, predict.FLAGS, export.FLAGS]
    for name in ("workdir", "checkpoint", "ema"):
        assert len({tool[name].help for tool in tools}) == 1, name
        assert len({tool[name].default for tool in tools}) == 1, name


def test_old_dashed_flags_are_bad_input_that_names_the_new_one(capsys):
    assert predict.main(["--workdir=/nonexistent", "--top-k", "3", "a.png"]) == 2
    err = capsys.readouterr().err
    assert "top-k" in err and "top_k" in err
    assert models_main.main(["cnn", "--image-size=32"]) == 2
    assert "image_size" in capsys.readouterr().err


def test_in_process_calls_start_from_the_defaults(capsys):
    # Flags are parsed afresh on each call: an earlier call's --ema does not leak.
    assert evaluate.main(["--workdir=/nonexistent/a", "--ema", "--split=train"]) == 2
    assert evaluate.main(["--workdir=/nonexistent/b"]) == 2
    assert evaluate.FLAGS.ema is False and evaluate.FLAGS.split is None
    assert "does not exist" in capsys.readouterr().err


def _raises(error: BaseException):
    def body():
        raise error

    return body


@pytest.mark.parametrize(
    "error, status, says",
    [
        (exit_status.BadInputError("config key x is wrong"), 2, "config key x is wrong"),
        (ValueError("batch_size=3 is not divisible"), 2, "batch_size=3"),
        (FileNotFoundError(2, "No such file or directory", "/data/x.npz"), 2, "/data/x.npz"),
        (exit_status.RunFailure("checkpoint step 20 is damaged"), 1, "runtime failure"),
        (RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 8GB"), 1, "out of memory"),
        (MemoryError(), 1, "out of memory"),
        (exit_status.Preempted("SIGTERM", 40), 143, "saved a checkpoint at step 40"),
    ],
)
def test_each_failure_has_one_exit_status_and_its_own_message(error, status, says, capsys):
    assert command_line.call(_raises(error)) == status
    assert says in capsys.readouterr().err


def test_bugs_keep_their_traceback():
    with pytest.raises(TypeError):
        command_line.call(_raises(TypeError("a bug, not a user's mistake")))


def test_xla_runtime_error_is_a_runtime_failure(capsys):
    import jax

    error = jax.errors.JaxRuntimeError("INTERNAL: RET_CHECK failure in a fusion")
    assert command_line.call(_raises(error)) == exit_status.FAILURE
    assert "JaxRuntimeError" in capsys.readouterr().err


_MAIN = ["-m", "jaxvision.main", "--config=configs/quickstart.py:smoke"]


@pytest.mark.parametrize(
    "dataset, says",
    [
        ("folder:/nonexistent/jaxvision_images", "does not exist"),
        # Its in-process twin, for evaluate, is in the default suite (test_evaluate.py).
        pytest.param("cifar10", "not prepared", marks=pytest.mark.slow),
    ],
)
def test_main_on_a_missing_dataset_exits_2_with_a_message_not_a_traceback(dataset, says, tmp_path):
    # On main: the missing folder ended in a FileNotFoundError traceback with exit status 1,
    # and the unprepared tfds dataset in a RuntimeError traceback, also 1.
    workdir = tmp_path / "run"
    result = run_cli(
        [
            *_MAIN,
            f"--workdir={workdir}",
            f"--config.dataset.name={dataset}",
            f"--config.dataset.data_dir={tmp_path / 'tfds'}",
        ]
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert says in result.stderr and "Traceback" not in result.stderr


def test_bad_flags_exit_2_everywhere(tmp_path):
    unknown = run_cli([*_MAIN, f"--workdir={tmp_path}", "--config.no_such_key=1"])
    # On main: an AttributeError traceback from ml_collections, exit status 1.
    assert unknown.returncode == 2 and "no_such_key" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    missing = run_cli(["-m", "jaxvision.benchmark"])
    assert missing.returncode == 2 and "--config" in missing.stderr
