"""Checks that jaxvision's dependencies resolve on every platform and Python it claims.

Run:    python tools/check_install.py [--platforms=...] [--pythons=3.11,3.12]
Needs:  `uv` (`pip install uv`) and the package registry. uv resolves for a platform other
        than the one it runs on (pip's --platform cannot: tensorflow-datasets needs the
        source-only `promise`). Prints one line per (platform, Python): the resolved
        tensorflow and jax versions, or why it failed. Exit status 0 when all resolve, 1
        when one does not, 75 when uv or the registry cannot be reached.
"""

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where JAX runs that users develop on: x86-64 Linux, ARM Linux (Graviton, Grace), Macs.
PLATFORMS = ("x86_64-manylinux_2_28", "aarch64-manylinux_2_28", "aarch64-apple-darwin")
UNREACHABLE = 75  # EX_TEMPFAIL: nothing was checked
_NETWORK_ERRORS = ("Failed to fetch", "dns error", "Could not connect", "timed out", "offline")
_SHOWN = ("tensorflow", "jax", "jaxlib")


def claimed_pythons(pyproject: str) -> list[str]:
    """The Python versions the project's classifiers claim, e.g. ["3.11", "3.12"]."""
    with open(pyproject, "rb") as f:
        classifiers = tomllib.load(f)["project"].get("classifiers", [])
    found = [re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", c) for c in classifiers]
    return [m.group(1) for m in found if m]


def uv_command() -> list[str] | None:
    """How to start uv: the `uv` on PATH, else the one installed in this Python."""
    if shutil.which("uv"):
        return ["uv"]
    if importlib.util.find_spec("uv"):
        return [sys.executable, "-m", "uv"]
    return None


def resolve(uv: list[str], pyproject: str, platform: str, python: str) -> tuple[bool, str]:
    """(resolved?, the pinned versions of _SHOWN or uv's reason) for one target."""
    command = [
        *uv,
        "pip",
        "compile",
        pyproject,
        "--python-platform",
        platform,
        "--python-version",
        python,
        "--prerelease",
        "disallow",  # a release candidate is not an install that works
        "--no-header",
        "--quiet",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        return False, " ".join(lines[:3]) or f"uv exited with {done.returncode}"
    pins = dict(
        line.split("==", 1) for line in done.stdout.splitlines() if re.match(r"^[\w.-]+==", line)
    )
    return True, " ".join(f"{name}=={pins[name]}" for name in _SHOWN if name in pins)


def main(argv: list[str] | None = None) -> int:
    """Resolves every (platform, Python) pair and prints one line for each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", default=os.path.join(REPO, "pyproject.toml"))
    parser.add_argument("--platforms", default=",".join(PLATFORMS))
    parser.add_argument("--pythons", default="", help="default: the classifiers' versions")
    args = parser.parse_args(argv)
    uv = uv_command()
    if uv is None:
        print("uv is not installed (pip install uv); nothing checked.")
        return UNREACHABLE
    pythons = args.pythons.split(",") if args.pythons else claimed_pythons(args.pyproject)
    if not pythons:
        print(f"{args.pyproject} claims no Python version in its classifiers.")
        return 1
    failures = 0
    for platform in args.platforms.split(","):
        for python in pythons:
            ok, detail = resolve(uv, args.pyproject, platform, python)
            if not ok and any(e in detail for e in _NETWORK_ERRORS):
                print(f"the registry cannot be reached: {detail}")
                return UNREACHABLE
            failures += not ok
            print(f"{platform:24} python {python:5} {'ok    ' if ok else 'FAILED'} {detail}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
