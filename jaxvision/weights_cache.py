"""Downloads weights files into one cache and verifies them: the hub, HTTP(S) and gs:// URLs.

The cache is `$JAXVISION_CACHE` or `~/.cache/jaxvision/weights`:
- `hub/`: Hugging Face Hub files, through `huggingface_hub` (its own cache layout,
  revisions and offline mode). A hub LFS file's cache blob is named by its SHA-256 (the
  hub's metadata), and the file is hashed against that name after download and on every
  cache hit.
- `url/<host>/<path>`: everything else, read over HTTP(S) into `<file>.part` and renamed
  when complete, so an interrupted download resumes with a Range request. `gs://B/P`
  is read as `$JAXVISION_GCS_URL/B/P` (default https://storage.googleapis.com, where the
  public buckets are served). Each file gets a `<file>.json` record of its size and
  SHA-256, checked on every cache hit; the bucket's own MD5 (`x-goog-hash`) is checked
  when the server sends one.

Offline (`JAXVISION_OFFLINE=1` or `HF_HUB_OFFLINE=1`): only the cache is read, and a
missing file is an error naming where to put it by hand.
"""

import base64
import contextlib
import dataclasses
import hashlib
import http.client
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from jaxvision.console import log
from jaxvision.exit_status import BadInputError, RunFailure

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20
_ATTEMPTS = 4  # resumed requests per download before giving up


class WeightsFileError(RunFailure):
    """A download failed or a file does not match its checksum; the file was removed."""


class NotCachedError(BadInputError):
    """Offline and the file is not in the cache: the message says where to put it."""


@dataclasses.dataclass(frozen=True)
class CachedFile:
    """A verified local weights file and where it came from."""

    path: Path
    source: str  # hf-hub:ORG/REPO/FILE@REV or the URL
    sha256: str
    size: int


def cache_dir() -> Path:
    """The weights cache: `$JAXVISION_CACHE` or `~/.cache/jaxvision/weights`."""
    root = os.environ.get("JAXVISION_CACHE") or os.path.join("~", ".cache", "jaxvision", "weights")
    return Path(root).expanduser()


def offline() -> bool:
    """Whether only the cache may be read (`JAXVISION_OFFLINE` or `HF_HUB_OFFLINE`), read
    at each call so that setting it after import works."""
    flags = (os.environ.get("JAXVISION_OFFLINE", ""), os.environ.get("HF_HUB_OFFLINE", ""))
    return any(v.strip().lower() in ("1", "true", "yes", "on") for v in flags)


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _reject(path: Path, what: str, expected: str, actual: str, source: str) -> None:
    """Removes a file that failed verification and raises, naming it."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    raise WeightsFileError(
        f"{path} (from {source}) failed verification and was removed: {what} {actual}, "
        f"expected {expected}. Run the same command again to download it afresh."
    )


def _verify(path: Path, source: str, sha256: str | None, size: int | None) -> str:
    """Checks size then SHA-256 where known; returns the file's SHA-256."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        _reject(path, "size", f"{size} bytes", f"{actual_size} bytes", source)
    digest = sha256_of(path)
    if sha256 and digest != sha256.lower():
        _reject(path, "SHA-256", sha256.lower(), digest, source)
    return digest


# ---------------------------------------------------------------------------------------
# Hugging Face Hub


def hub_url(repo: str, filename: str, revision: str = "main") -> str:
    """The file's download address on the hub (or `$HF_ENDPOINT`)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    return f"{endpoint}/{repo}/resolve/{revision}/{filename}"


def fetch_hub(
    repo: str,
    filename: str,
    *,
    revision: str = "main",
    sha256: str | None = None,
    size: int | None = None,
) -> CachedFile:
    """A hub file from the cache or downloaded into it, checked against the hub's LFS
    SHA-256 (and `sha256`/`size` when the catalog records them)."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    source = f"hf-hub:{repo}/{filename}@{revision}"
    hub_cache = cache_dir() / "hub"
    try:
        pointer = huggingface_hub.hf_hub_download(
            repo,
            filename,
            revision=revision,
            cache_dir=hub_cache,
            local_files_only=offline(),
            # Read now, not when huggingface_hub was imported, so tests and users can set it.
            endpoint=os.environ.get("HF_ENDPOINT") or None,
        )
    except LocalEntryNotFoundError as e:
        if not offline():
            raise WeightsFileError(f"Cannot download {source}: {e}") from e
        raise NotCachedError(
            f"{filename} of {repo} (revision {revision}) is not in the weights cache "
            f"{hub_cache} and downloads are off (JAXVISION_OFFLINE/HF_HUB_OFFLINE). On a "
            f"machine with a network, download {hub_url(repo, filename, revision)} and pass "
            "the file's path as `pretrained`, or run once with the network on to fill the cache."
        ) from None
    except OSError as e:  # network and HTTP errors from the hub client
        raise WeightsFileError(f"Cannot download {source}: {e}") from e
    pointer = Path(pointer)
    blob = pointer.resolve()
    # The hub names an LFS file's blob by its SHA-256; a small git file's by its git hash.
    lfs = blob.name if _HEX64.match(blob.name) else None
    if lfs and sha256 and lfs != sha256.lower():
        raise WeightsFileError(
            f"The hub serves {source} with SHA-256 {lfs}, but the catalog expects {sha256}: "
            "the file was changed upstream. Pin a revision, or use the hub's file by path."
        )
    try:
        digest = _verify(blob, source, sha256 or lfs, size)
    except WeightsFileError:
        with contextlib.suppress(FileNotFoundError):
            pointer.unlink()  # the snapshot's link to the removed blob
        raise
    return CachedFile(pointer, source, digest, blob.stat().st_size)


# ---------------------------------------------------------------------------------------
# HTTP(S) and gs://


def http_url(url: str) -> str:
    """`gs://B/P` as its public HTTPS address (`$JAXVISION_GCS_URL`); others unchanged."""
    if url.startswith("gs://"):
        base = os.environ.get("JAXVISION_GCS_URL", "https://storage.googleapis.com").rstrip("/")
        return f"{base}/{url[len('gs://') :]}"
    return url


def url_cache_path(url: str) -> Path:
    """Where a URL's file lives in the cache: `url/<host>/<path>` (of the original URL)."""
    parsed = urllib.parse.urlparse(url)
    parts = [p for p in parsed.path.split("/") if p and p not in (".", "..")]
    host = parsed.netloc.replace(":", "_") or "local"
    return cache_dir() / "url" / parsed.scheme / host / Path(*parts)


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def fetch_url(url: str, *, sha256: str | None = None, size: int | None = None) -> CachedFile:
    """A file at an HTTP(S) or gs:// URL from the cache or downloaded (resumably) into it."""
    target = url_cache_path(url)
    record = _record_path(target)
    if target.is_file():
        saved = json.loads(record.read_text()) if record.is_file() else {}
        # A file put there by hand has no record: the catalog's checksum (if any) decides.
        digest = _verify(target, url, sha256 or saved.get("sha256"), size or saved.get("size"))
        if not saved:
            _write_record(record, url, digest, target.stat().st_size, "placed by hand")
        return CachedFile(target, url, digest, target.stat().st_size)
    if offline():
        raise NotCachedError(
            f"{target.name} is not in the weights cache and downloads are off "
            f"(JAXVISION_OFFLINE/HF_HUB_OFFLINE). Download {http_url(url)} on a machine with "
            f"a network and put it at {target}, or pass its path as `pretrained`."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    md5 = _download(http_url(url), target.with_name(target.name + ".part"), size)
    part = target.with_name(target.name + ".part")
    if md5 is not None:
        actual = base64.b64encode(_md5_of(part)).decode()
        if actual != md5:
            _reject(part, "MD5 (the server's x-goog-hash)", md5, actual, url)
    digest = _verify(part, url, sha256, size)
    os.replace(part, target)
    _write_record(record, url, digest, target.stat().st_size, "downloaded")
    return CachedFile(target, url, digest, target.stat().st_size)


def _write_record(record: Path, url: str, digest: str, size: int, how: str) -> None:
    data = {"source": url, "sha256": digest, "size": size, "how": how}
    record.write_text(json.dumps(data, indent=2) + "\n")


def _md5_of(path: Path) -> bytes:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.digest()


def _download(url: str, part: Path, size: int | None) -> str | None:
    """Appends the rest of `url` to `part`, resuming after dropped connections; returns
    the server's base64 MD5 (GCS `x-goog-hash`) when it sends one."""
    md5 = None
    for attempt in range(_ATTEMPTS):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                md5 = _goog_md5(response.headers.get_all("x-goog-hash") or []) or md5
                if have and response.status != 206:
                    have = 0  # the server ignored the Range: start over
                total = _total_size(response, have) or size
                _copy(response, part, have, total, url)
            return md5
        except urllib.error.HTTPError as e:
            if e.code == 416 and size is not None and have == size:
                return md5  # already complete
            raise WeightsFileError(f"Cannot download {url}: HTTP {e.code} {e.reason}.") from e
        except (http.client.IncompleteRead, ConnectionError, TimeoutError, OSError) as e:
            if attempt == _ATTEMPTS - 1:
                raise WeightsFileError(
                    f"Cannot download {url}: {e}. The partial file {part} is kept; run the "
                    "same command again to resume."
                ) from e
            log.warning("Download of %s interrupted (%s); resuming.", url, e)
            time.sleep(0.5 * (attempt + 1))
    return md5


def _goog_md5(values: list[str]) -> str | None:
    for value in values:
        for item in value.split(","):
            key, _, digest = item.strip().partition("=")
            if key == "md5":
                return digest
    return None


def _total_size(response, have: int) -> int | None:
    length = response.headers.get("Content-Length")
    return have + int(length) if length and length.isdigit() else None


def _copy(response, part: Path, have: int, total: int | None, url: str) -> None:
    """Streams the response into `part` from byte `have`, with a progress bar."""
    from tqdm.auto import tqdm

    name = url.rsplit("/", 1)[-1]
    with (
        open(part, "r+b" if have else "wb") as f,
        tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=name, leave=False) as bar,
    ):
        f.seek(have)
        f.truncate()
        while chunk := response.read(_CHUNK):
            f.write(chunk)
            bar.update(len(chunk))
            have += len(chunk)
    if total is not None and have < total:
        # urllib returns a short body without an error when the connection drops.
        raise ConnectionError(f"connection closed after {have} of {total} bytes")
