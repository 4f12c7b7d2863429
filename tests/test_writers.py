"""Console reporting: a progress bar with ETA on a terminal, log lines otherwise."""

import logging

import pytest

from jaxvision import writers


@pytest.fixture(autouse=True)
def _jaxvision_log_reaches_caplog(monkeypatch):
    # console.setup() (run in-process by other CLIs' tests) stops propagation to the root.
    monkeypatch.setattr(logging.getLogger("jaxvision"), "propagate", True)


def test_progress_draws_a_bar_on_a_terminal(capsys):
    progress = writers.Progress(100, 0, 32, tty=True)
    progress.line(50, {"train/loss": 0.5}, img_per_s=320.0)
    err = capsys.readouterr().err
    assert err.startswith("\r[" + "#" * 15 + "." * 15 + "] step 50/100")
    assert "loss 0.5" in err and "320 img/s" in err and "ETA 0:00:05" in err
    assert not err.endswith("\n")  # the bar is redrawn in place
    progress.line(100, {"train/loss": 0.1}, img_per_s=320.0)
    assert capsys.readouterr().err.endswith("\n")


def test_progress_logs_lines_when_not_a_terminal(capsys, caplog):
    progress = writers.Progress(100, 0, 32, tty=False)
    with caplog.at_level(logging.INFO, logger="jaxvision"):
        progress.line(50, {"train/loss": 0.5}, img_per_s=320.0)
    assert "step 50/100 | loss 0.5 | 320 img/s | ETA 0:00:05" in caplog.text
    assert "\r" not in capsys.readouterr().err


def test_device_memory_reports_gigabytes_where_available():
    memory = writers.device_memory()
    assert set(memory) <= {"train/memory_gb", "train/peak_memory_gb"}
    assert all(v >= 0 for v in memory.values())
