"""The worker's one WebSocket to ComfyUI: a reader thread routes each event to the attempt whose prompt id it
carries, reconnects after a drop, and tells the pipeline when the socket was lost (so it polls history)."""

from __future__ import annotations

import json
import logging
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any, Protocol

import websocket

from comfyq.errors import ComfyUnavailable

log = logging.getLogger(__name__)


class EventSink(Protocol):
    def on_event(self, kind: str, data: dict[str, Any]) -> None: ...


def ws_url(base_url: str, client_id: str) -> str:
    scheme = "wss" if base_url.startswith("https") else "ws"
    return f"{scheme}{base_url[base_url.index(':'):]}/ws?clientId={urllib.parse.quote(client_id)}"


class EventStream:
    """Per-prompt events only reach the socket of our client id, so it is connected before any POST."""

    def __init__(self, base_url: str, client_id: str, *, connect_timeout: float,
                 on_drop: Callable[[], None]) -> None:
        self.url = ws_url(base_url.rstrip("/"), client_id)
        self.connect_timeout = connect_timeout
        self.on_drop = on_drop
        self._sinks: dict[str, EventSink] = {}
        self._lock = threading.Lock()
        self._sock: websocket.WebSocket | None = None
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self.drops = 0

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def ensure_connected(self) -> None:
        """Connect now if needed (raises ComfyUnavailable) and make sure the reader runs."""
        with self._lock:
            if self._sock is None:
                try:
                    sock = websocket.create_connection(self.url, timeout=self.connect_timeout)
                except (OSError, websocket.WebSocketException) as exc:
                    raise ComfyUnavailable(f"ComfyUI WebSocket {self.url} refused: {exc.__class__.__name__}") from exc
                sock.settimeout(0.5)
                self._sock = sock
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._read_forever, name="comfy-events", daemon=True)
                self._thread.start()

    def register(self, prompt_id: str, sink: EventSink) -> None:
        with self._lock:
            self._sinks[prompt_id] = sink

    def unregister(self, prompt_id: str) -> None:
        with self._lock:
            self._sinks.pop(prompt_id, None)

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _read_forever(self) -> None:
        while not self._closing.is_set():
            sock = self._sock
            if sock is None:
                if not self._reconnect():
                    return
                continue
            try:
                frame = sock.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except (OSError, websocket.WebSocketException):
                self._dropped(sock)
                continue
            if isinstance(frame, str) and frame:
                self._dispatch(frame)

    def _dispatch(self, frame: str) -> None:
        try:
            message = json.loads(frame)
        except ValueError:
            return
        data = message.get("data") if isinstance(message, dict) else None
        if not isinstance(data, dict) or not data.get("prompt_id"):
            return  # status broadcasts, and the reconnect replay of `executing` that carries no prompt id
        with self._lock:
            sink = self._sinks.get(str(data["prompt_id"]))
        if sink is not None:
            sink.on_event(str(message.get("type")), data)

    def _dropped(self, sock: websocket.WebSocket) -> None:
        with self._lock:
            if self._sock is sock:
                self._sock = None
        if self._closing.is_set():
            return
        self.drops += 1
        log.warning("ComfyUI WebSocket dropped; polling history until it is back", extra={"action": "ws_drop"})
        self.on_drop()

    def _reconnect(self) -> bool:
        """Back off and retry until connected or closing; False when closing."""
        delay = 0.25
        while not self._closing.is_set():
            try:
                sock = websocket.create_connection(self.url, timeout=self.connect_timeout)
                sock.settimeout(0.5)
            except (OSError, websocket.WebSocketException):
                self._closing.wait(delay)
                delay = min(5.0, delay * 2)
                continue
            with self._lock:
                self._sock = sock
            log.info("ComfyUI WebSocket reconnected", extra={"action": "ws_reconnect"})
            return True
        return False
