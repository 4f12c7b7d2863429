"""An offline Google Cloud Storage on 127.0.0.1 for tests: the JSON API subset that
TensorStore's `gcs` kvstore (Orbax's arrays), TensorFlow's `gs://` file system (Orbax's
metadata, `tf.io.gfile`, `etils.epath`, TensorBoard) and google-cloud-storage (Orbax's
bucket check) use.

TensorStore is pointed at it with `TENSORSTORE_GCS_HTTP_URL`, google-cloud-storage with
`STORAGE_EMULATOR_HOST` (which also makes it anonymous). TensorFlow's GCS URLs are
fixed (`https://www.googleapis.com/storage/v1/`, `https://storage.googleapis.com/`), so the
server is also an HTTPS proxy: `https_proxy` sends TensorFlow's libcurl here with CONNECT,
and the tunnel is answered with a certificate for those two names from a test-only CA
(`fake_gcs_tls/`, trusted through `CURL_CA_BUNDLE`). Nothing leaves 127.0.0.1, and
`GOOGLE_AUTH_TOKEN_FOR_TESTING` keeps both clients from looking for credentials.

Objects live in memory: `objects[(bucket, name)] = (data, generation)`. Preconditions
(`ifGenerationMatch`, `ifGenerationNotMatch`), Range reads, list with prefix/delimiter/
pagination, simple and resumable uploads, delete and rewrite are implemented; any other
request is answered 501 and recorded in `unhandled`.
"""

import http.server
import itertools
import json
import os
import re
import ssl
import threading
import urllib.parse

_TLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fake_gcs_tls")
CA_BUNDLE = os.path.join(_TLS, "ca.pem")
_UPDATED = "2026-01-01T00:00:00.000Z"
_OBJECT = re.compile(r"^/storage/v1/b/([^/]+)/o/(.+?)(?:/(rewriteTo|copyTo)/b/([^/]+)/o/(.+))?$")


class PreconditionError(Exception):
    """An `ifGeneration*` condition does not hold (HTTP 412, or 304 for NotMatch on reads)."""


class NotFakedError(Exception):
    """A request this fake does not implement (HTTP 501, recorded in `unhandled`)."""


class FakeGcs:
    """The server; `env()` is what a client process needs to reach it."""

    def __init__(self):
        self.objects: dict[tuple[str, str], tuple[bytes, int]] = {}
        self.unhandled: list[str] = []
        self.deleted: list[tuple[str, str]] = []  # (bucket, name), in order
        self.requests = 0
        self._uploads: dict[str, tuple[str, str, dict]] = {}
        self._generations = itertools.count(1_000_001)
        self._lock = threading.Lock()
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(os.path.join(_TLS, "server.pem"))
        self._tls.set_alpn_protocols(["http/1.1"])
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def env(self) -> dict[str, str]:
        """Environment variables that send every GCS client here, with no credentials."""
        return {
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            # google-cloud-storage, which Orbax asks whether a bucket has folders.
            "STORAGE_EMULATOR_HOST": self.url,
            "https_proxy": self.url,
            "HTTPS_PROXY": self.url,
            "no_proxy": "127.0.0.1,localhost",
            "NO_PROXY": "127.0.0.1,localhost",
            "CURL_CA_BUNDLE": CA_BUNDLE,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-gcs-token",
            # Were any client to look for a metadata server, it would find none on loopback.
            "NO_GCE_CHECK": "true",
            "GCE_METADATA_HOST": "127.0.0.1:9",
            "GCE_METADATA_ROOT": "127.0.0.1:9",
            "GCE_METADATA_IP": "127.0.0.1:9",
            # TensorFlow allocates a read buffer of this size for every file it opens (64 MiB
            # by default); the checkpoints here are a few KiB.
            "GCS_READ_CACHE_BLOCK_SIZE_MB": "1",
        }

    def names(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object name in `bucket` under `prefix`, sorted."""
        with self._lock:
            return sorted(n for b, n in self.objects if b == bucket and n.startswith(prefix))

    def read(self, bucket: str, name: str) -> bytes:
        """One object's bytes (KeyError if absent)."""
        with self._lock:
            return self.objects[(bucket, name)][0]

    def close(self) -> None:
        """Stops serving."""
        self._httpd.shutdown()
        self._httpd.server_close()

    # -- the store -------------------------------------------------------------------------

    def _check(self, key: tuple[str, str], query: dict, *, prefix: str = "if") -> None:
        current = self.objects.get(key)
        generation = current[1] if current else 0
        match = query.get(prefix + "GenerationMatch")
        if match is not None and int(match) != generation:
            raise PreconditionError(f"generation {generation}, wanted {match}")
        not_match = query.get(prefix + "GenerationNotMatch")
        if not_match is not None and int(not_match) == generation:
            raise PreconditionError(f"generation {generation} unchanged")

    def _put(self, key: tuple[str, str], data: bytes, query: dict) -> dict:
        with self._lock:
            self._check(key, query)
            self.objects[key] = (data, next(self._generations))
            return self._metadata(key)

    def _metadata(self, key: tuple[str, str]) -> dict:
        data, generation = self.objects[key]
        return {
            "kind": "storage#object",
            "bucket": key[0],
            "name": key[1],
            "size": str(len(data)),
            "generation": str(generation),
            "metageneration": "1",
            "timeCreated": _UPDATED,
            "updated": _UPDATED,
            "contentType": "application/octet-stream",
        }

    def _list(self, bucket: str, query: dict) -> dict:
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter", "")
        start = max(query.get("pageToken", ""), query.get("startOffset", ""))
        end = query.get("endOffset")
        limit = int(query.get("maxResults", 1000))
        items, prefixes, token = [], set(), None
        for name in self.names(bucket, prefix):
            if name < start or (end is not None and name >= end):
                continue
            rest = name[len(prefix) :]
            if delimiter and delimiter in rest:
                group = prefix + rest.split(delimiter, 1)[0] + delimiter
                if group in prefixes:
                    continue
                prefixes.add(group)
                after = group + "\U0010ffff"  # past every name in the group
            else:
                with self._lock:
                    if (bucket, name) not in self.objects:
                        continue  # deleted meanwhile
                    items.append(self._metadata((bucket, name)))
                after = name + "\0"
            if len(items) + len(prefixes) >= limit:
                token = after
                break
        result: dict = {"kind": "storage#objects"}
        if items:
            result["items"] = items
        if prefixes:
            result["prefixes"] = sorted(prefixes)
        if token is not None:
            result["nextPageToken"] = token
        return result


def _layout(bucket: str) -> dict:
    """A flat (not hierarchical) regional bucket, like most."""
    return {
        "kind": "storage#storageLayout",
        "bucket": bucket,
        "location": "US-CENTRAL1",
        "locationType": "region",
        "hierarchicalNamespace": {"enabled": False},
    }


def _query(path: str) -> dict:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(path).query, keep_blank_values=True))


def _handler(server: FakeGcs):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        tunnel_host = ""
        # Headers and body leave in separate writes: without TCP_NODELAY each response
        # would wait out the client's delayed ACK (40 ms).
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        # -- transport -------------------------------------------------------------------

        def do_CONNECT(self):
            """TensorFlow's libcurl asks the proxy for a tunnel to Google; the tunnel ends
            here, in TLS with the test CA's certificate."""
            host = self.path.rsplit(":", 1)[0]
            if host not in ("www.googleapis.com", "storage.googleapis.com"):
                self.send_error(403, "only Google Cloud Storage is faked here")
                return
            self.send_response(200, "Connection established")
            self.end_headers()
            self.wfile.flush()
            tls = server._tls.wrap_socket(self.connection, server_side=True)
            self.connection = tls
            self.rfile = tls.makefile("rb")
            self.wfile = tls.makefile("wb")
            self.tunnel_host = host
            self.close_connection = False

        def handle_expect_100(self):
            # The tunnel's file is buffered: without the flush libcurl waits a second for
            # "100 Continue" before every upload.
            self.send_response_only(100)
            self.end_headers()
            self.wfile.flush()
            return True

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, code: int, body: bytes = b"", headers: dict | None = None) -> None:
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if code not in (204, 304):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if code not in (204, 304):
                self.wfile.write(body)

        def _json(self, code: int, value: dict, headers: dict | None = None) -> None:
            self._send(
                code,
                json.dumps(value).encode(),
                {"Content-Type": "application/json", **(headers or {})},
            )

        def _route(self, method: str) -> None:
            server.requests += 1
            body = self._body() if method in ("POST", "PUT") else b""
            split = urllib.parse.urlsplit(self.path)
            path, query = split.path, _query(self.path)
            try:
                if self.tunnel_host == "storage.googleapis.com":
                    bucket, _, name = path.lstrip("/").partition("/")
                    return self._media(bucket, urllib.parse.unquote(name), query)
                if method == "POST" and path.startswith("/upload/storage/v1/b/"):
                    return self._upload(path.split("/")[5], query, body)
                if method == "PUT" and path.startswith("/upload/storage/v1/b/"):
                    return self._resume(query, body)
                m = _OBJECT.match(path)
                if m:
                    return self._object(method, m, query)
                m = re.match(r"^/storage/v1/b/([^/]+)(/o|/storageLayout)?/?$", path)
                if m and method == "GET":
                    if m.group(2) == "/o":
                        return self._json(200, server._list(m.group(1), query))
                    if m.group(2):  # TensorFlow asks before renaming a directory
                        return self._json(200, _layout(m.group(1)))
                    return self._json(200, {"kind": "storage#bucket", "name": m.group(1)})
            except PreconditionError as e:
                return self._json(412, {"error": {"code": 412, "message": str(e)}})
            except NotFakedError:
                pass
            server.unhandled.append(f"{method} {self.tunnel_host}{self.path}")
            self._json(501, {"error": {"code": 501, "message": "not faked"}})

        def do_GET(self):
            self._route("GET")

        def do_POST(self):
            self._route("POST")

        def do_PUT(self):
            self._route("PUT")

        def do_DELETE(self):
            self._route("DELETE")

        # -- the JSON API ----------------------------------------------------------------

        def _object(self, method: str, m: re.Match, query: dict) -> None:
            bucket, name = m.group(1), urllib.parse.unquote(m.group(2))
            key = (bucket, name)
            if m.group(3):  # rewriteTo / copyTo
                target = (m.group(4), urllib.parse.unquote(m.group(5)))
                with server._lock:
                    source = server.objects.get(key)
                    server._check(key, query, prefix="ifSource")
                if source is None:
                    return self._json(404, {"error": {"code": 404, "message": "no such object"}})
                meta = server._put(target, source[0], query)
                size = meta["size"]
                if m.group(3) == "copyTo":
                    return self._json(200, meta)
                return self._json(
                    200,
                    {
                        "kind": "storage#rewriteResponse",
                        "totalBytesRewritten": size,
                        "objectSize": size,
                        "done": True,
                        "resource": meta,
                    },
                )
            if method == "DELETE":
                with server._lock:
                    if key not in server.objects:
                        return self._json(404, {"error": {"code": 404, "message": "not found"}})
                    server._check(key, query)
                    del server.objects[key]
                    server.deleted.append(key)
                return self._send(204)
            if method != "GET":
                raise NotFakedError(method)
            if query.get("alt") == "media":
                return self._media(bucket, name, query)
            with server._lock:
                if key not in server.objects:
                    return self._json(404, {"error": {"code": 404, "message": "not found"}})
                server._check(key, query)
                meta = server._metadata(key)
            self._json(200, meta)

        def _media(self, bucket: str, name: str, query: dict) -> None:
            key = (bucket, name)
            with server._lock:
                current = server.objects.get(key)
                if current is not None:
                    try:
                        server._check(key, query)
                    except PreconditionError:
                        if "ifGenerationNotMatch" in query:
                            return self._send(304, headers={"x-goog-generation": str(current[1])})
                        raise
            if current is None:
                return self._json(404, {"error": {"code": 404, "message": "not found"}})
            data, generation = current
            headers = {"x-goog-generation": str(generation), "x-goog-metageneration": "1"}
            headers["Content-Type"] = "application/octet-stream"
            wanted = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
            if not wanted:
                return self._send(200, data, headers)
            first, last = wanted.groups()
            if first == "":  # a suffix: the last N bytes
                start, stop = max(len(data) - int(last), 0), len(data)
            else:
                start = int(first)
                stop = min(int(last) + 1, len(data)) if last else len(data)
            if start >= len(data):
                headers["Content-Range"] = f"bytes */{len(data)}"
                return self._send(416, b"", headers)
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(data)}"
            self._send(206, data[start:stop], headers)

        def _upload(self, bucket: str, query: dict, body: bytes) -> None:
            kind = query.get("uploadType", "media")
            if kind == "media":
                return self._json(200, server._put((bucket, query["name"]), body, query))
            if kind == "resumable":
                upload_id = f"u{next(server._generations)}"
                server._uploads[upload_id] = (bucket, query["name"], query)
                host = f"https://{self.tunnel_host}" if self.tunnel_host else server.url
                location = f"{host}/upload/storage/v1/b/{bucket}/o?uploadType=resumable"
                return self._send(200, b"", {"Location": f"{location}&upload_id={upload_id}"})
            raise NotFakedError(f"uploadType={kind}")

        def _resume(self, query: dict, body: bytes) -> None:
            upload_id = query.get("upload_id", "")
            if upload_id not in server._uploads:
                return self._json(404, {"error": {"code": 404, "message": "no such upload"}})
            bucket, name, first = server._uploads[upload_id]
            total = self.headers.get("Content-Range", "").rpartition("/")[2]
            if total == "*" or (total.isdigit() and len(body) < int(total)):
                # Partial chunks are not faked: the clients here send the whole file at once.
                return self._send(308)
            del server._uploads[upload_id]
            self._json(200, server._put((bucket, name), body, first))

    return Handler
