"""Transparent huge pages for XLA:CPU's step buffers, through glibc's `hugetlb` tunable.

XLA:CPU allocates a step's temporaries as one large buffer per execution, which glibc maps
and unmaps every step, so the kernel faults it in 4 KiB at a time; with
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` glibc asks for transparent huge pages on those
mappings and the faults become 2 MiB ones (docs/performance.md, "Why each CPU option").

glibc reads its tunables only when a process starts, so the command-line entry points
re-execute themselves once with the tunable added. A `glibc.malloc.hugetlb` value the
user already set (0 turns it off) is kept; without glibc 2.35+ or with THP "always" or
"never" nothing changes. In-process use (notebooks, tests) never re-executes.
"""

import os
import platform
import sys

_TUNABLE = "glibc.malloc.hugetlb"
_THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _thp_mode(path: str = _THP_MODE_FILE) -> str:
    """The kernel's THP mode ("always", "madvise" or "never"), or "" if unknown."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ""
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else ""


def huge_page_environment(
    environ: dict[str, str], libc: tuple[str, str], thp_mode: str
) -> dict[str, str] | None:
    """`environ` with the hugetlb tunable added, or None when it is set or would not help."""
    name, version = libc
    if name != "glibc" or thp_mode != "madvise":
        return None
    try:
        if tuple(int(p) for p in version.split(".")[:2]) < (2, 35):
            return None
    except ValueError:
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if _TUNABLE in tunables:
        return None
    changed = dict(environ)
    changed["GLIBC_TUNABLES"] = ":".join(filter(None, (tunables, f"{_TUNABLE}=1")))
    return changed


def reexec_with_huge_pages() -> None:
    """Re-executes this command with glibc's hugetlb tunable if it is missing and helps.

    Call first in a command-line entry point's `__main__` block, before JAX starts: the
    process image is replaced (same PID, arguments and environment plus the tunable).
    """
    if sys.platform != "linux":
        return
    env = huge_page_environment(dict(os.environ), platform.libc_ver(), _thp_mode())
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    except OSError:  # e.g. no executable to re-run: keep going with glibc's defaults
        return
