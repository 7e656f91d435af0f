"""The events process as a child of a test, and small clients of its streams: an SSE reader over a raw socket
read (requests, stream=True) and a WebSocket reader (websocket-client)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import websocket

from comfyq.processes import ManagedProcess

EVENTS_READY = r"comfyq events listening on (http://\S+)"


def start_events(log_dir: Path, env: Mapping[str, str], *, bind: str = "127.0.0.1:0") -> tuple[ManagedProcess, str]:
    """`comfyq events` on `bind` (default: a free port of loopback); returns the process and its base URL."""
    full = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    proc = ManagedProcess("comfyq-events", [sys.executable, "-m", "comfyq.cli", "events", "--bind", bind],
                          env=full, log_path=log_dir / "comfyq-events.log")
    match = proc.start(EVENTS_READY, timeout=30)
    assert match is not None
    return proc, match.group(1)


@dataclass
class SseMessage:
    event: str | None = None
    id: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    comment: str | None = None


class SseReader:
    """Reads one SSE response message by message (comments too: heartbeats)."""

    def __init__(self, url: str, headers: Mapping[str, str] | None = None, timeout: float = 30.0) -> None:
        self.response = requests.get(url, headers=dict(headers or {}), stream=True, timeout=(5, timeout))
        self._lines: Iterator[str] = self.response.iter_lines(chunk_size=1, decode_unicode=True)

    def next(self) -> SseMessage | None:
        """The next message or comment; None once the server closed the stream."""
        message = SseMessage()
        seen = False
        for line in self._lines:
            if line == "":
                if seen:
                    return message
                continue
            seen = True
            if line.startswith(":"):
                message.comment = line[1:].strip()
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    message.event = value
                elif name == "id":
                    message.id = int(value)
                elif name == "data":
                    message.data = json.loads(value)
        return None

    def events(self) -> Iterator[SseMessage]:
        """Messages with an event (no heartbeats, no retry line) until the server closes the stream."""
        while (message := self.next()) is not None:
            if message.event is not None:
                yield message

    def close(self) -> None:
        self.response.close()


class WsReader:
    def __init__(self, url: str, headers: Mapping[str, str] | None = None, timeout: float = 30.0) -> None:
        self.ws = websocket.create_connection(url.replace("http://", "ws://", 1),
                                              header=[f"{k}: {v}" for k, v in (headers or {}).items()],
                                              timeout=timeout)

    def events(self) -> Iterator[dict[str, Any]]:
        """Messages until the server closes the socket."""
        while True:
            try:
                text = self.ws.recv()
            except websocket.WebSocketConnectionClosedException:
                return
            if not text:
                return
            yield json.loads(text)

    def close(self) -> None:
        self.ws.close()
