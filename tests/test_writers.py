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


class _DeviceReporting:
    """A device whose runtime reports `stats` (None: reports nothing, like XLA:CPU)."""

    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        return self.stats


def test_device_memory_reports_current_and_peak_bytes_in_gigabytes(monkeypatch):
    stats = {"bytes_in_use": 1_500_000_000, "peak_bytes_in_use": 2_000_000_000, "other": 7}
    monkeypatch.setattr(writers.jax, "local_devices", lambda: [_DeviceReporting(stats)])
    assert writers.device_memory() == {"train/memory_gb": 1.5, "train/peak_memory_gb": 2.0}


def test_device_memory_leaves_out_what_the_device_does_not_report(monkeypatch):
    monkeypatch.setattr(writers.jax, "local_devices", lambda: [_DeviceReporting(None)])
    assert writers.device_memory() == {}
    only_peak = {"peak_bytes_in_use": 3_000_000_000}
    monkeypatch.setattr(writers.jax, "local_devices", lambda: [_DeviceReporting(only_peak)])
    assert writers.device_memory() == {"train/peak_memory_gb": 3.0}


def test_device_memory_of_this_device_matches_what_its_runtime_reports():
    reported = writers.jax.local_devices()[0].memory_stats() or {}
    memory = writers.device_memory()
    assert ("train/memory_gb" in memory) == ("bytes_in_use" in reported)
    assert ("train/peak_memory_gb" in memory) == ("peak_bytes_in_use" in reported)
