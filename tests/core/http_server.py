"""A local HTTP server for remote-slide tests: serves a folder on 127.0.0.1 with Range support
and counts the bytes it sends.

Usage::

    with serve_folder(tmp_path) as server:
        url = server.url("slide.tiff")
        ...
        assert server.bytes_served < 0.3 * size

``ranges=False`` makes a server that ignores ``Range`` (always the whole file, as some
servers do), to test what a client does without range reads.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 64 * 2**10


@dataclass
class Served:
    """What the server has sent since it started (or since :meth:`reset`)."""

    bytes_served: int = 0
    #: One ``(method, path, range header or None, status)`` per request.
    requests: list[tuple[str, str, str | None, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, method: str, path: str, range_: str | None, status: int, sent: int) -> None:
        with self.lock:
            self.bytes_served += sent
            self.requests.append((method, path, range_, status))

    def reset(self) -> None:
        """Start counting again from zero."""
        with self.lock:
            self.bytes_served = 0
            self.requests.clear()

    @property
    def ranged_gets(self) -> int:
        """GET requests answered with 206 Partial Content."""
        with self.lock:
            return sum(1 for m, _, _, s in self.requests if m == "GET" and s == 206)


def _handler(root: Path, served: Served, ranges: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as object stores answer

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet test output

        def _file(self) -> Path | None:
            rel = unquote(urlsplit(self.path).path).lstrip("/")
            path = (root / rel).resolve()
            if root not in path.parents or not path.is_file():
                return None
            return path

        def _reply(self, method: str) -> None:
            path = self._file()
            header = self.headers.get("Range")
            if path is None:
                self.send_response(HTTPStatus.NOT_FOUND)
                self.send_header("Content-Length", "0")
                self.end_headers()
                served.add(method, self.path, header, 404, 0)
                return
            size = path.stat().st_size
            start, end, status = 0, size - 1, 200
            if ranges and header:
                match = _RANGE.match(header.strip())
                if match is None or (not match[1] and not match[2]):
                    self._unsatisfiable(method, header, size)
                    return
                if match[1]:
                    start = int(match[1])
                    end = min(int(match[2]), size - 1) if match[2] else size - 1
                else:  # bytes=-N: the last N bytes
                    start = max(size - int(match[2]), 0)
                if start >= size or end < start:
                    self._unsatisfiable(method, header, size)
                    return
                status = 206
            length = end - start + 1
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes" if ranges else "none")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            sent = 0
            if method == "GET":
                with open(path, "rb") as handle:
                    handle.seek(start)
                    while sent < length:
                        chunk = handle.read(min(_CHUNK, length - sent))
                        if not chunk:
                            break
                        self.wfile.write(chunk)
                        sent += len(chunk)
            served.add(method, self.path, header, status, sent)

        def _unsatisfiable(self, method: str, header: str, size: int) -> None:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            served.add(method, self.path, header, 416, 0)

        def do_HEAD(self) -> None:
            self._reply("HEAD")

        def do_GET(self) -> None:
            self._reply("GET")

    return Handler


class FolderServer:
    """A running server for one folder (see :func:`serve_folder`)."""

    def __init__(self, root: Path, ranges: bool = True) -> None:
        self.root = Path(root).resolve()
        self.served = Served()
        self._httpd = ThreadingHTTPServer(
            ("127.0.0.1", 0), _handler(self.root, self.served, ranges)
        )
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        """The port it listens on (chosen free by the OS)."""
        return int(self._httpd.server_address[1])

    def url(self, name: str) -> str:
        """``http://127.0.0.1:PORT/name`` for a file in the folder."""
        return f"http://127.0.0.1:{self.port}/{quote(name)}"

    @property
    def bytes_served(self) -> int:
        """Body bytes sent since start or the last :meth:`Served.reset`."""
        return self.served.bytes_served

    def start(self) -> FolderServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@contextlib.contextmanager
def serve_folder(root: str | Path, *, ranges: bool = True) -> Iterator[FolderServer]:
    """Serve ``root`` on ``http://127.0.0.1:<free port>/`` for the ``with`` block."""
    server = FolderServer(Path(root), ranges=ranges).start()
    try:
        yield server
    finally:
        server.stop()
