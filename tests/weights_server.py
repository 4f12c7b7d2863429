"""A local HTTP server on 127.0.0.1 that plays the Hugging Face Hub and a public bucket.

Hub files answer `/{repo}/resolve/{revision}/{file}` with the headers `huggingface_hub`
reads (X-Repo-Commit, X-Linked-Etag = the LFS SHA-256, X-Linked-Size); bucket files answer
`/{bucket}/{path}` with an `x-goog-hash` MD5 like Cloud Storage. Both honour Range
requests, and a path in `cut_once` sends only half its bytes on its first GET and then
drops the connection, like an interrupted transfer (`cut_once[path]` bytes, default half).

`served_weights` is the fixture the weights tests share; a test module takes it under its
own name with `server = weights_server.served_weights`.
"""

import base64
import hashlib
import http.server
import threading

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class WeightsServer:
    """Serves `files` (URL path -> bytes); `advertise` overrides a hub file's SHA-256."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.advertise: dict[str, str] = {}
        self.cut_once: dict[str, int] = {}  # path -> bytes sent before dropping
        self.requests: list[tuple[str, str, str]] = []  # (method, path, Range header)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                server._answer(self, head=True)

            def do_GET(self):
                server._answer(self, head=False)

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def add_hub_file(self, repo: str, filename: str, data: bytes, revision: str = "main") -> str:
        """Adds a hub LFS file; returns its URL path."""
        path = f"/{repo}/resolve/{revision}/{filename}"
        self.files[path] = data
        return path

    def add_bucket_file(self, bucket_path: str, data: bytes) -> str:
        """Adds `bucket/path` as a bucket file; returns its URL path."""
        path = "/" + bucket_path.lstrip("/")
        self.files[path] = data
        return path

    def close(self) -> None:
        """Stops serving."""
        self._httpd.shutdown()
        self._httpd.server_close()

    def _answer(self, h: http.server.BaseHTTPRequestHandler, head: bool) -> None:
        rng = h.headers.get("Range", "")
        self.requests.append(("HEAD" if head else "GET", h.path, rng))
        data = self.files.get(h.path)
        if data is None:
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.send_header("X-Error-Code", "EntryNotFound")
            h.end_headers()
            return
        start = int(rng.split("=")[1].split("-")[0]) if rng.startswith("bytes=") else 0
        body = data[start:]
        h.send_response(206 if start else 200)
        if "/resolve/" in h.path:
            sha = self.advertise.get(h.path, hashlib.sha256(data).hexdigest())
            h.send_header("X-Repo-Commit", COMMIT)
            h.send_header("X-Linked-Etag", f'"{sha}"')
            h.send_header("X-Linked-Size", str(len(data)))
            h.send_header("ETag", f'"{sha}"')
        else:
            md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
            h.send_header("x-goog-hash", f"crc32c=AAAAAA==,md5={md5}")
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Accept-Ranges", "bytes")
        h.end_headers()
        if head:
            return
        if h.path in self.cut_once:
            cut = self.cut_once.pop(h.path) or len(body) // 2
            h.wfile.write(body[:cut])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)  # drop the connection mid-transfer
            return
        h.wfile.write(body)


@pytest.fixture
def served_weights(tmp_path, monkeypatch):
    """A WeightsServer that the hub client and the bucket reader ask, online, with an empty
    weights cache of the test's own."""
    import huggingface_hub.constants

    srv = WeightsServer()
    monkeypatch.setenv("JAXVISION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_ENDPOINT", srv.url)
    monkeypatch.setenv("JAXVISION_GCS_URL", srv.url)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for var in ("JAXVISION_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    # huggingface_hub reads HF_HUB_OFFLINE once, at import.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    yield srv
    srv.close()
