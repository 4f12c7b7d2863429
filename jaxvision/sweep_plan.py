"""A sweep's plan: grid, zipped lists, a config's `sweep()` or a random search, times seeds.

Each point is a dict of config overrides; each run is a point at one seed, trained in
ROOT/<point name>/seed<N> by `python -m jaxvision.main`. Every point's config is built and
validated here, so a bad key, a value of the wrong type or an empty list fails before
anything runs, naming the key.
"""

import dataclasses
import importlib.util
import itertools
import os
import re
import sys
from typing import Any

import ml_collections
import numpy as np

from jaxvision import config as config_lib
from jaxvision import config_overrides
from jaxvision.exit_status import BadInputError

PLAN_FILE = "sweep.json"


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: a point's overrides at one seed, in its own workdir."""

    point: str
    seed: int
    workdir: str
    overrides: tuple[tuple[str, Any], ...]

    def command(self, config_spec: str, python: str = sys.executable) -> list[str]:
        """The `python -m jaxvision.main ...` argv that trains this run (and resumes it)."""
        args = [python, "-m", "jaxvision.main", f"--config={config_spec}"]
        args.append(f"--workdir={self.workdir}")
        args.append(f"--config.seed={self.seed}")
        args += [f"--config.{k}={format_value(v)}" for k, v in self.overrides]
        return args


def format_value(value: Any) -> str:
    """A value as `--config.KEY=` and the grid read it back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return (
            "(" + ",".join(format_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
        )
    return str(value)


def _split_values(text: str) -> list[str]:
    """ "a,b,(1,2)" -> ["a", "b", "(1,2)"]: commas inside brackets belong to a value."""
    values, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += ch
    values.append(current.strip())
    return values


def parse_axis(spec: str) -> tuple[str, list[Any]]:
    """ "model.pool=gap,map" -> ("model.pool", ["gap", "map"]); an empty list is an error."""
    key, sep, values = spec.partition("=")
    key = key.strip().removeprefix("config.")
    if not sep or not key:
        raise BadInputError(
            f"--grid/--zip {spec!r}: write KEY=V1,V2,... (e.g. model.pool=gap,map)."
        )
    parsed = [config_overrides.parse_value(v) for v in _split_values(values) if v]
    if not parsed:
        raise BadInputError(f"--grid/--zip {key!r} has an empty list of values.")
    return key, parsed


def grid_points(grids: list[str], zips: list[str]) -> list[dict[str, Any]]:
    """The product of the --grid axes with the --zip lists (which step together)."""
    axes = [parse_axis(g) for g in grids]
    zipped = [parse_axis(z) for z in zips]
    if len({len(v) for _, v in zipped}) > 1:
        lengths = ", ".join(f"{k}: {len(v)}" for k, v in zipped)
        raise BadInputError(f"--zip lists must have the same length ({lengths}).")
    keys = [k for k, _ in axes + zipped]
    repeated = {k for k in keys if keys.count(k) > 1}
    if repeated:
        raise BadInputError(f"Config key {sorted(repeated)[0]!r} is given twice in --grid/--zip.")
    if "seed" in keys:
        raise BadInputError("Config key 'seed' is set by --seeds, not --grid or --zip.")
    zip_rows = [dict(zip([k for k, _ in zipped], row)) for row in zip(*[v for _, v in zipped])]
    points = []
    for combo in itertools.product(*[v for _, v in axes]):
        for row in zip_rows or [{}]:
            points.append({**dict(zip([k for k, _ in axes], combo)), **row})
    return points


def config_sweep(config_spec: str) -> list[dict[str, Any]] | None:
    """The override dicts of the config file's `sweep(arg)` function, if it has one."""
    path, _, arg = config_spec.partition(":")
    spec = importlib.util.spec_from_file_location("jaxvision_sweep_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "sweep"):
        return None
    points = [dict(p) for p in module.sweep(arg or None)]
    if not points:
        raise BadInputError(f"{path}: sweep() returned no points.")
    return points


def random_subset(points: list[dict], search: str, seed: int) -> list[dict]:
    """--search=random:N: N points drawn without replacement, the same for the same seed."""
    kind, _, count = search.partition(":")
    if kind != "random" or not count.isdigit() or int(count) < 1:
        raise BadInputError(f"--search={search!r}: use random:N with N >= 1 (e.g. random:8).")
    n = min(int(count), len(points))
    chosen = np.random.default_rng(seed).choice(len(points), size=n, replace=False)
    return [points[i] for i in sorted(chosen)]


def _name_part(value: Any) -> str:
    text = format_value(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "none"


def point_name(point: dict[str, Any], varied: list[str]) -> str:
    """A readable, stable directory name: the varied keys' last parts and their values."""
    short = [k.rsplit(".", 1)[-1] for k in varied]
    parts = []
    for key, name in zip(varied, short):
        label = name if short.count(name) == 1 else key
        value = _name_part(point[key]) if key in point else "default"
        parts.append(f"{label}={value}")
    return ",".join(parts) or "base"


def seeds_from(spec: str, base_seed: int) -> list[int]:
    """--seeds: "3" is the config's seed and the next two; "0,5,9" lists them."""
    spec = spec.strip()
    try:
        if "," in spec:
            seeds = [int(s) for s in spec.split(",") if s.strip()]
        else:
            seeds = list(range(base_seed, base_seed + int(spec)))
    except ValueError:
        raise BadInputError(f"--seeds={spec!r}: a count (3) or a list of seeds (0,5,9).") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise BadInputError(f"--seeds={spec!r}: give at least one seed, each once.")
    return seeds


def point_config(config_spec: str, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    """The config file with a point's overrides, validated as `train.run` would."""
    config = config_lib.load(config_spec)
    config_overrides.apply(config, overrides)
    config_lib.validate(config, num_devices=1, num_processes=1)
    return config


def estimated_steps(config: ml_collections.ConfigDict) -> int | None:
    """Training steps of one run (None when they depend on a dataset that is not here)."""
    if config.num_train_steps > 0:
        return int(config.num_train_steps)
    try:
        from jaxvision import data, step_factory

        return step_factory.num_train_steps(config, data.prepare(config).num_train)
    except (ValueError, OSError):
        return None


def build(
    config_spec: str,
    root: str,
    *,
    grids: list[str],
    zips: list[str],
    seeds: str,
    search: str = "",
    search_seed: int = 0,
) -> dict[str, Any]:
    """The whole plan (what sweep.json holds), every point's config validated."""
    if not os.path.isfile(config_spec.partition(":")[0]):
        raise FileNotFoundError(f"Config file {config_spec.partition(':')[0]!r} does not exist.")
    points = grid_points(grids, zips)
    from_file = config_sweep(config_spec)
    if from_file is not None:
        points = [{**f, **p} for f in from_file for p in points]
    if search:
        points = random_subset(points, search, search_seed)
    keys = list(dict.fromkeys(k for p in points for k in p))
    varied = [k for k in keys if len({repr(p.get(k)) for p in points}) > 1]
    base = config_lib.load(config_spec)
    seed_list = seeds_from(seeds, int(base.seed))
    planned, names = [], set()
    for point in points:
        try:
            config = point_config(config_spec, point)
        except ValueError as e:
            raise BadInputError(f"Sweep point {point}: {e}") from e
        name = point_name(point, varied)
        if name in names:
            raise BadInputError(f"Two sweep points have the same overrides ({name}).")
        names.add(name)
        runs = [
            Run(name, s, os.path.join(root, name, f"seed{s}"), tuple(point.items()))
            for s in seed_list
        ]
        planned.append(
            {
                "name": name,
                "overrides": point,
                "steps": estimated_steps(config),
                "runs": [
                    {
                        "seed": r.seed,
                        "workdir": r.workdir,
                        "command": r.command(config_spec, "python"),
                    }
                    for r in runs
                ],
            }
        )
    steps = [p["steps"] for p in planned]
    return {
        "config": config_spec,
        "seeds": seed_list,
        "varied": varied,
        "points": planned,
        "num_runs": len(planned) * len(seed_list),
        "estimated_steps": None if None in steps else sum(steps) * len(seed_list),
    }


def runs(plan: dict[str, Any]) -> list[Run]:
    """Every run of the plan, point by point, seeds in order."""
    return [
        Run(p["name"], r["seed"], r["workdir"], tuple(p["overrides"].items()))
        for p in plan["points"]
        for r in p["runs"]
    ]
