"""A checkpoint step's integrity manifest: the size and SHA-256 of every file it holds.

Written into a step once Orbax finalised it (`jaxvision_manifest.json`), checked before
any restore. Files go through etils.epath, so gs:// steps are hashed like local ones.
"""

import hashlib
import json
import os
import re

from etils import epath

MANIFEST = "jaxvision_manifest.json"
# Files other programs leave in directories; reported, never counted as damage.
STRAY = re.compile(r"(^\.nfs.*|^\.DS_Store$|^Thumbs\.db$|^\._.*)")


def _sha256(path: epath.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def step_files(step_dir: str) -> dict[str, epath.Path]:
    """Relative path -> path of every file of a step, except the manifest."""
    root = epath.Path(step_dir)
    found = {}
    for directory, _, names in root.walk():
        for name in names:
            path = epath.Path(directory) / name
            rel = str(path.relative_to(root))
            if rel not in (MANIFEST, MANIFEST + ".tmp"):
                found[rel] = path
    return found


def _size(path: epath.Path) -> int:
    return int(path.stat().length)


def write_manifest(step_dir: str, *, workdir_id: str = "", origin: str = "saved") -> None:
    """Records size and SHA-256 of every file of a finalised step, then publishes it.

    `origin` is "saved" for a step this workdir's run wrote, "adopted" for one found
    without a manifest and verified by reading it. Raises OSError when it cannot be written.
    """
    entries = {
        rel: {"bytes": _size(p), "sha256": _sha256(p)}
        for rel, p in sorted(step_files(step_dir).items())
        if not STRAY.match(os.path.basename(rel))
    }
    record = {"files": entries, "workdir_id": workdir_id, "origin": origin}
    tmp = epath.Path(step_dir) / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(epath.Path(step_dir) / MANIFEST)  # readers never see a partial manifest


def read_manifest(step_dir: str) -> dict | None:
    """A step's manifest, or None when it has none or it is unreadable."""
    try:
        record = json.loads((epath.Path(step_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("files"), dict) else None


def extra_files(step_dir: str) -> list[str]:
    """Files in a step that its manifest does not list (a user's notes, .DS_Store, .nfs*)."""
    record = read_manifest(step_dir)
    if record is None:
        return []
    return sorted(set(step_files(step_dir)) - set(record["files"]))


def verify(step_dir: str) -> list[str]:
    """What is damaged in a step against its manifest (empty when intact).

    Files the manifest does not list are not damage: see `extra_files`.
    """
    path = epath.Path(step_dir) / MANIFEST
    record = read_manifest(step_dir)
    if record is None:
        return [f"{path} is missing or unreadable"]
    expected = record["files"]
    actual = step_files(step_dir)
    problems = [f"missing file {rel}" for rel in sorted(set(expected) - set(actual))]
    for rel in sorted(set(expected) & set(actual)):
        size = _size(actual[rel])
        if size != expected[rel]["bytes"]:
            problems.append(f"{rel}: {size} bytes, expected {expected[rel]['bytes']}")
        elif _sha256(actual[rel]) != expected[rel]["sha256"]:
            problems.append(f"{rel}: contents changed (SHA-256 mismatch)")
    return problems
