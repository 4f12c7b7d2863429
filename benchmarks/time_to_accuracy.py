"""Wall time from launching a training command to its first evaluation at a target accuracy.

    python benchmarks/time_to_accuracy.py --target=0.975 -- \
        python -m jaxvision.main --config=configs/quickstart.py --workdir=/tmp/qs

Runs the command (which must name a fresh `--workdir=`), watches `metrics.jsonl` in that
workdir and timestamps each evaluation record as it appears, so the figure includes
start-up, compilation and dataset preparation, and works for any revision of the project
(older ones write no wall-clock field). Prints one JSON line.
"""

import argparse
import json
import os
import subprocess
import sys
import time

_POLL_S = 0.1


def _workdir(command: list[str]) -> str:
    """The value of the command's `--workdir=` flag."""
    for arg in command:
        if arg.startswith("--workdir="):
            return arg.split("=", 1)[1]
    raise SystemExit("time_to_accuracy: the command needs a --workdir=DIR argument.")


def _new_evals(path: str, seen: int) -> tuple[list[dict], int]:
    """Evaluation records in `path` after its first `seen` complete lines."""
    if not os.path.exists(path):
        return [], seen
    with open(path) as f:
        lines = f.read().split("\n")[:-1]  # the last piece may be a line still being written
    records = [json.loads(line) for line in lines[seen:] if line.strip()]
    return [r for r in records if "eval/accuracy" in r], len(lines)


def measure(command: list[str], target: float) -> dict:
    """Runs `command` to completion; the seconds at which an eval first reached `target`."""
    workdir = _workdir(command)
    metrics = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(metrics):
        raise SystemExit(f"time_to_accuracy: {workdir} already holds a run; give a new workdir.")
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    seen, evals = 0, []
    while True:
        done = process.poll() is not None
        records, seen = _new_evals(metrics, seen)
        now = time.perf_counter() - start
        evals += [
            {"step": r["step"], "accuracy": r["eval/accuracy"], "s": round(now, 1)} for r in records
        ]
        if done:
            break
        time.sleep(_POLL_S)
    reached = next((e for e in evals if e["accuracy"] >= target), None)
    return {
        "measurement": "time_to_accuracy",
        "target": target,
        "returncode": process.returncode,
        "seconds_to_target": reached["s"] if reached else None,
        "step_at_target": reached["step"] if reached else None,
        "seconds_total": round(time.perf_counter() - start, 1),
        "final_accuracy": evals[-1]["accuracy"] if evals else None,
        "evals": evals,
        "load_1min": os.getloadavg()[0],
        "command": " ".join(command),
    }


def main() -> int:
    """CLI: `--target=A -- COMMAND...`; exit status is the command's."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", type=float, required=True, help="eval accuracy, e.g. 0.975")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the training command")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the training command after --")
    result = measure(command, args.target)
    print(json.dumps(result), flush=True)
    return result["returncode"]


if __name__ == "__main__":
    sys.exit(main())
