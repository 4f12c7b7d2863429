"""Every file a workdir holds is read and written here, local or remote (`gs://...`).

Paths are strings. A local path behaves as `os`/`open` do; a URL (`scheme://...`) goes
through `etils.epath`, the layer Orbax uses, which reaches `gs://`, `s3://` and friends
through `tf.io.gfile` (or fsspec). TensorBoard's writer takes the same URLs itself.

Object stores cannot seek, lock or rename atomically, so the helpers write whole files
from memory and never rely on a file handle's position.
"""

import importlib.util
import io
import os
from collections.abc import Iterator

from etils import epath

CHECKPOINTS = "checkpoints"
# Orbax writes arrays with TensorStore, whose drivers it picks for local paths and gs://
# only; any other scheme fails inside the first save.
_CHECKPOINT_SCHEMES = ("gs://",)


def is_remote(path: str) -> bool:
    """Whether `path` is a URL (gs://bucket/run) rather than a local path."""
    return "://" in str(path)


def _path(path: str) -> epath.Path:
    return epath.Path(path)


def join(path: str, *parts: str) -> str:
    """`path/part/...` for local paths and URLs alike."""
    return os.path.join(str(path), *parts)


def absolute(path: str) -> str:
    """A local path made absolute; a URL unchanged."""
    return str(path) if is_remote(path) else os.path.abspath(path)


def exists(path: str) -> bool:
    """Whether a file or directory exists at `path`."""
    return _path(path).exists() if is_remote(path) else os.path.exists(path)


def is_dir(path: str) -> bool:
    """Whether `path` is a directory (on an object store: a prefix with objects under it)."""
    return _path(path).is_dir() if is_remote(path) else os.path.isdir(path)


def is_file(path: str) -> bool:
    """Whether `path` is an existing file."""
    if is_remote(path):
        p = _path(path)
        return p.exists() and not p.is_dir()
    return os.path.isfile(path)


def makedirs(path: str) -> None:
    """Creates `path` and its parents (never a local `./gs:/...` tree for a URL)."""
    if not path:
        return  # a file in the current directory
    if is_remote(path):
        _path(path).mkdir(parents=True, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)


def read_text(path: str) -> str:
    """The whole file as UTF-8 text."""
    return _path(path).read_text()


def write_text(path: str, text: str) -> None:
    """Replaces the file's contents with `text` (creating its directory if needed)."""
    write_bytes(path, text.encode())


def append_text(path: str, text: str) -> None:
    """Appends `text` to the file (an object store rewrites the object)."""
    makedirs(os.path.dirname(str(path)))
    with _path(path).open("a") as f:
        f.write(text)


def read_bytes(path: str) -> bytes:
    """The whole file as bytes."""
    return _path(path).read_bytes()


def write_bytes(path: str, data: bytes) -> None:
    """Replaces the file's contents with `data` (creating its directory if needed)."""
    makedirs(os.path.dirname(str(path)))
    if is_remote(path) and not str(path).startswith(_CHECKPOINT_SCHEMES):
        # Some gfile file systems (TensorFlow's ram://) append to a file opened for writing;
        # Cloud Storage replaces the object whole, so there no reader ever finds it missing.
        remove(path)
    _path(path).write_bytes(data)


def write_with(path: str, write) -> None:
    """Calls `write(buffer)` on an in-memory file, then stores it at `path`: for writers
    that seek (savefig, np.savez), which remote file handles do not allow."""
    buffer = io.BytesIO()
    write(buffer)
    write_bytes(path, buffer.getvalue())


def lines(path: str) -> Iterator[str]:
    """The file's lines, each with its newline (the last one may lack it)."""
    yield from read_text(path).splitlines(keepends=True)


def names(path: str) -> list[str]:
    """The names of the entries of directory `path`, sorted."""
    return sorted(p.name for p in _path(path).iterdir())


def remove(path: str) -> None:
    """Deletes one file if it exists."""
    _path(path).unlink(missing_ok=True)


def checkpoints_dir(workdir: str) -> str:
    """The run's Orbax `checkpoints/` directory."""
    return join(absolute(workdir), CHECKPOINTS)


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:  # its parent package is missing
        return False


def check_checkpoint_location(directory: str) -> None:
    """Raises ValueError (bad input, before compiling) for a URL Orbax cannot use."""
    if is_remote(directory) and not str(directory).startswith(_CHECKPOINT_SCHEMES):
        scheme = str(directory).split("://", 1)[0]
        raise ValueError(
            f"Checkpoints cannot be written to {directory}: Orbax saves arrays to local paths "
            f"(or mounted file systems) and gs:// only, not {scheme}://. Use a gs:// or a "
            "local/mounted --workdir."
        )
    # Orbax lists the steps of a gs:// directory after asking the bucket, through this
    # client, whether it has a hierarchical namespace; without it every listing fails.
    if str(directory).startswith("gs://") and not _has_module("google.cloud.storage"):
        raise ValueError(
            f"Checkpoints in {directory} need the google-cloud-storage package, which Orbax "
            "uses on gs://: pip install 'jaxvision[gcs]' (or google-cloud-storage)."
        )
