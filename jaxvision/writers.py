"""The one metric writer: metrics.jsonl, TensorBoard event files and a console line."""

import json
import math
import sys
import time

import jax

from jaxvision import workdir_files
from jaxvision.console import log


def _format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class MetricWriter:
    """Writes scalars from process 0 only; other processes' calls are no-ops."""

    def __init__(self, workdir: str, *, resume_step: int = 0):
        self.enabled = jax.process_index() == 0
        self.path = workdir_files.join(workdir, "metrics.jsonl")
        self._tb = None
        if not self.enabled:
            return
        if resume_step and workdir_files.exists(self.path):
            self._truncate_after(resume_step)
        import tensorflow as tf

        # tf.summary writes through tf.io.gfile, which takes the same URLs as workdir_files.
        self._tb = tf.summary.create_file_writer(workdir_files.join(workdir, "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        """Drops lines a killed run logged after its last checkpoint; they will be redone."""
        lines = []
        for line in workdir_files.lines(self.path):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by the kill
            if record.get("step", 0) <= step:
                lines.append(line if line.endswith("\n") else line + "\n")
        workdir_files.write_text(self.path, "".join(lines))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        """Appends one JSON line and TensorBoard scalars for `step`."""
        if not self.enabled:
            return
        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        workdir_files.append_text(self.path, json.dumps(record) + "\n")
        import tensorflow as tf

        with self._tb.as_default(step=int(step)):
            for k, v in scalars.items():
                tf.summary.scalar(k, float(v))
        self._tb.flush()

    def close(self) -> None:
        """Flushes TensorBoard files."""
        if self._tb is not None:
            self._tb.close()


class Progress:
    """Console progress from process 0: a bar with ETA on a terminal, log lines otherwise."""

    def __init__(self, total_steps: int, start_step: int, batch_size: int, *, tty=None):
        self.total = total_steps
        self.batch_size = batch_size
        self.enabled = jax.process_index() == 0
        self.tty = sys.stderr.isatty() if tty is None else tty
        self._last_step = start_step
        self._last_time = time.perf_counter()

    def rate(self, step: int) -> tuple[float, float]:
        """(img/s, seconds per step) since the last call."""
        now = time.perf_counter()
        steps = max(step - self._last_step, 1)
        dt = now - self._last_time
        self._last_step, self._last_time = step, now
        return steps * self.batch_size / dt, dt / steps

    def line(self, step: int, scalars: dict[str, float], img_per_s: float) -> None:
        """Shows `step`: redraws the bar on a terminal, else logs one line."""
        if not self.enabled:
            return
        eta = (self.total - step) * self.batch_size / max(img_per_s, 1e-9)
        parts = [f"step {step}/{self.total}"]
        parts += [f"{k.split('/')[-1]} {v:.4g}" for k, v in scalars.items()]
        parts += [f"{img_per_s:.0f} img/s", f"ETA {_format_eta(eta)}"]
        if self.tty:
            done = int(30 * step / max(self.total, 1))
            bar = "#" * done + "." * (30 - done)
            end = "\n" if step >= self.total else ""
            sys.stderr.write(f"\r[{bar}] " + " | ".join(parts) + "\033[K" + end)
            sys.stderr.flush()
        else:
            log.info(" | ".join(parts))

    def clear(self) -> None:
        """Ends the bar's line so the next log line starts on its own."""
        if self.enabled and self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def device_memory() -> dict[str, float]:
    """Peak and current bytes in use on this process's first device, where reported."""
    stats = jax.local_devices()[0].memory_stats() or {}
    out = {}
    for key, name in (("bytes_in_use", "memory_gb"), ("peak_bytes_in_use", "peak_memory_gb")):
        if key in stats:
            out[f"train/{name}"] = stats[key] / 1e9
    return out
