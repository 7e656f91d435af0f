"""The worker's one WebSocket to ComfyUI, owned by one thread: only that thread connects, reads and reconnects,
so there is never a second socket whose events nobody reads. Events that name a prompt go into a queue the
main loop drains; the socket's state is only a hint (whether progress will arrive). How an attempt ends never
depends on it: the pipeline falls back to /history and /queue whenever a prompt has been quiet for a while."""

from __future__ import annotations

import enum
import json
import logging
import queue
import random
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any

import websocket

log = logging.getLogger(__name__)

Event = tuple[str, dict[str, Any]]
Connector = Callable[[str, float], websocket.WebSocket]
READ_SLICE_SECONDS = 0.5


class SocketState(enum.Enum):
    CONNECTING = "connecting"    # not connected; the owner is connecting or backing off
    CONNECTED = "connected"
    CLOSED = "closed"            # close() was called; the thread has ended or is ending


def ws_url(base_url: str, client_id: str) -> str:
    scheme = "wss" if base_url.startswith("https") else "ws"
    return f"{scheme}{base_url[base_url.index(':'):]}/ws?clientId={urllib.parse.quote(client_id)}"


def _connect(url: str, timeout: float) -> websocket.WebSocket:
    return websocket.create_connection(url, timeout=timeout)


class ComfySocket:
    """Per-prompt events only reach the socket of our client id, so it is opened at start and kept open."""

    def __init__(self, base_url: str, client_id: str, *, connect_timeout: float,
                 on_event: Callable[[], None] = lambda: None,
                 on_reachable: Callable[[bool, str], None] = lambda ok, error: None,
                 connector: Connector = _connect, backoff: tuple[float, float] = (0.25, 5.0)) -> None:
        self.url = ws_url(base_url.rstrip("/"), client_id)
        self.connect_timeout = connect_timeout
        self.on_event = on_event
        self.on_reachable = on_reachable
        self.connector = connector
        self.backoff = backoff
        self.events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.state = SocketState.CONNECTING
        self.generation = 0  # increments with every new connection
        self._connected = threading.Event()
        self._closing = threading.Event()
        self._sock: websocket.WebSocket | None = None
        self._sock_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # Used by other threads --------------------------------------------------------------------------
    def start(self) -> ComfySocket:
        if self._thread is None:
            self._thread = threading.Thread(target=self._own, name="comfy-socket", daemon=True)
            self._thread.start()
        return self

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def drain(self) -> list[Event]:
        """Every event received since the last drain, in order (main thread)."""
        drained: list[Event] = []
        while True:
            try:
                drained.append(self.events.get_nowait())
            except queue.Empty:
                return drained

    def close(self, timeout: float = 2.0) -> None:
        """Stop the owner; closing the socket ends a blocked read at once."""
        self._closing.set()
        with self._sock_lock:
            sock = self._sock
        if sock is not None:
            try:
                sock.close(timeout=0.2)
            except Exception:  # closing a dead socket: nothing left to release
                log.debug("closing the ComfyUI socket raised", exc_info=True)
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        self.state = SocketState.CLOSED

    # The owner thread -------------------------------------------------------------------------------
    def _own(self) -> None:
        failures = 0
        while not self._closing.is_set():
            sock = self._open()
            if sock is None:
                failures += 1
                low, high = self.backoff
                ceiling = min(high, low * 2 ** min(failures - 1, 10))
                self._closing.wait(ceiling / 2 + random.random() * ceiling / 2)
                continue
            failures = 0
            self._read(sock)
        self.state = SocketState.CLOSED

    def _open(self) -> websocket.WebSocket | None:
        try:
            sock = self.connector(self.url, self.connect_timeout)
            sock.settimeout(READ_SLICE_SECONDS)
        except (OSError, websocket.WebSocketException) as exc:
            self.on_reachable(False, f"WebSocket {self.url}: {exc.__class__.__name__}: {exc}")
            return None
        with self._sock_lock:
            self._sock = sock
        self.generation += 1
        self.state = SocketState.CONNECTED
        self._connected.set()
        if self.generation > 1:
            log.info("ComfyUI WebSocket connected again", extra={"action": "ws_reconnect"})
        self.on_reachable(True, "")
        self.on_event()  # wake the loop: it may have been waiting for the socket
        return sock

    def _read(self, sock: websocket.WebSocket) -> None:
        try:
            while not self._closing.is_set():
                try:
                    frame = sock.recv()
                except websocket.WebSocketTimeoutException:
                    continue
                if isinstance(frame, str) and frame:
                    self._route(frame)
                elif frame in ("", b"") and not sock.connected:
                    raise websocket.WebSocketConnectionClosedException("closed by ComfyUI")
        except (OSError, websocket.WebSocketException) as exc:
            if not self._closing.is_set():
                log.warning("ComfyUI WebSocket dropped (%s); prompts in flight are followed through /history",
                            exc.__class__.__name__, extra={"action": "ws_drop"})
        finally:
            self._connected.clear()
            self.state = SocketState.CONNECTING
            with self._sock_lock:
                self._sock = None
            try:
                sock.close(timeout=0.2)
            except Exception:  # the socket is already gone
                log.debug("closing a dropped socket raised", exc_info=True)
            self.on_event()

    def _route(self, frame: str) -> None:
        try:
            message = json.loads(frame)
        except ValueError:
            return
        data = message.get("data") if isinstance(message, dict) else None
        if not isinstance(data, dict) or not data.get("prompt_id"):
            return  # status broadcasts, and the reconnect replay of `executing` that carries no prompt id
        self.events.put((str(message.get("type")), data))
        self.on_event()
