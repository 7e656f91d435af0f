"""Small real HTTP servers on 127.0.0.1 (port 0) for tests: an image host with one behaviour per path and a
webhook receiver with scripted answers. Each is shut down in its fixture's teardown."""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image


def image_bytes(color: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format=fmt)
    return buffer.getvalue()


RED = image_bytes((255, 0, 0))
BLUE = image_bytes((0, 0, 255))


class Images(BaseHTTPRequestHandler):
    """The image host: each path is one behaviour. HTTP/1.0, so a body without length ends at close."""

    hits: Counter[str]

    def send_body(self, status: int, content_type: str, body: bytes, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def stream(self, content_type: str, chunk: bytes, count: int, pause: float = 0.0) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.end_headers()
        try:
            for _ in range(count):
                self.wfile.write(chunk)
                self.wfile.flush()
                time.sleep(pause)
        except OSError:
            pass  # the client hung up, as it should

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        self.hits[path] += 1
        routes: dict[str, Callable[[], None]] = {
            "/red/cat.png": lambda: self.send_body(200, "image/png", RED),
            "/blue/cat.png": lambda: self.send_body(200, "image/png; charset=binary", BLUE),
            "/photo.jpg": lambda: self.send_body(200, "image/jpeg", image_bytes((0, 9, 0), "JPEG")),
            "/huge.png": lambda: self.stream("image/png", RED[:8] + b"\0" * 65528, 100_000),  # 6.5 GB
            "/declared-huge.png": lambda: self.send_body(200, "image/png", RED, length=50_000_000),
            "/slow.png": lambda: self.stream("image/png", b"\x89", 100, pause=0.05),
            "/note.txt": lambda: self.send_body(200, "text/plain", b"hello"),
            "/fake.png": lambda: self.send_body(200, "image/png", b"<html>not an image</html>"),
            "/broken.png": lambda: self.send_body(500, "text/plain", b"boom"),
        }
        if path == "/to-metadata.png":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()
        elif path in routes:
            routes[path]()
        else:
            self.send_body(404, "text/plain", b"no such image")

    def log_message(self, *args: Any) -> None:
        pass


class ThreadedServer:
    """A ThreadingHTTPServer on 127.0.0.1, port 0, served from a daemon thread; close() stops it."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.address = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def image_host() -> Iterator[tuple[str, Counter[str]]]:
    hits: Counter[str] = Counter()
    server = ThreadedServer(type("Handler", (Images,), {"hits": hits}))
    try:
        yield f"http://{server.address}", hits
    finally:
        server.close()


class Receiver:
    """A real HTTP receiver on 127.0.0.1: answers POSTs with the scripted statuses, then `default`."""

    def __init__(self, statuses: list[int], default: int, delay: float) -> None:
        self.statuses = list(statuses)
        self.default = default
        self.delay = delay
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                time.sleep(receiver.delay)
                status = receiver.statuses.pop(0) if receiver.statuses else receiver.default
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadedServer(Handler)
        self.url = f"http://{self.server.address}/hooks/comfyq"

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(statuses: list[int] | None = None, default: int = 200, delay: float = 0.0) -> Receiver:
        started.append(Receiver(statuses or [], default, delay))
        return started[-1]

    yield start
    for r in started:
        r.close()


