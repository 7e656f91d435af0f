"""WebSocket fan-out: one ordered outgoing queue per connected client id, so the executor never blocks
on a slow socket and every client sees events in the order they were produced. While `is_silent()` holds,
messages are dropped (not kept for later), so tests can model a socket that stays open but goes quiet."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

logger = logging.getLogger(__name__)

PREVIEW_IMAGE = 1  # binary event: uint32 image type (1 JPEG, 2 PNG) + image bytes
PREVIEW_IMAGE_WITH_METADATA = 4  # binary event: uint32 length + JSON metadata + image bytes
PNG = 2


class _Abort:
    """Queue marker: cut the connection without a close frame once earlier messages are written."""


class _Close:
    """Queue marker: stop writing (the socket is closing normally)."""


ABORT = _Abort()
CLOSE = _Close()
Outgoing = str | bytes | _Abort | _Close


@dataclass
class Client:
    sid: str
    ws: web.WebSocketResponse
    request: web.BaseRequest
    queue: asyncio.Queue[Outgoing] = field(default_factory=asyncio.Queue)
    supports_preview_metadata: bool = False
    writer: asyncio.Task[None] | None = None


class Hub:
    def __init__(self, is_silent: Callable[[], bool] = lambda: False) -> None:
        self.clients: dict[str, Client] = {}
        self.is_silent = is_silent

    def register(self, sid: str, ws: web.WebSocketResponse, request: web.BaseRequest) -> Client:
        """Add a socket; a newer socket with the same client id takes over its events."""
        client = Client(sid, ws, request)
        client.writer = asyncio.create_task(self._write(client), name=f"ws-writer-{sid}")
        replaced = self.clients.get(sid)
        if replaced is not None:
            logger.info("client %s reconnected; events now go to the new socket", sid)
        self.clients[sid] = client
        return client

    def unregister(self, client: Client) -> None:
        if self.clients.get(client.sid) is client:
            del self.clients[client.sid]
        client.queue.put_nowait(CLOSE)

    def _targets(self, sid: str | None) -> list[Client]:
        if sid is None:
            return list(self.clients.values())
        client = self.clients.get(sid)
        return [client] if client is not None else []

    def send(self, event: str, data: Any, sid: str | None = None) -> None:
        """A JSON message to client `sid`, or to every client when sid is None."""
        if self.is_silent():
            return
        text = json.dumps({"type": event, "data": data})
        for client in self._targets(sid):
            client.queue.put_nowait(text)

    def send_preview(self, image: bytes, metadata: dict[str, Any], sid: str | None, with_metadata: bool) -> None:
        """A binary preview frame to the clients of `sid` whose feature flag matches `with_metadata`:
        event 4 (with JSON metadata) for clients that announced supports_preview_metadata, else event 1."""
        if self.is_silent():
            return
        for client in self._targets(sid):
            if client.supports_preview_metadata != with_metadata:
                continue
            if with_metadata:
                meta = json.dumps(metadata).encode("utf-8")
                frame = struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + image
            else:
                frame = struct.pack(">II", PREVIEW_IMAGE, PNG) + image
            client.queue.put_nowait(frame)

    def abort(self, sid: str) -> None:
        """Drop client `sid`'s connection abruptly (no close frame) after what is already queued."""
        client = self.clients.get(sid)
        if client is not None:
            client.queue.put_nowait(ABORT)

    async def close_all(self, timeout: float = 0.5) -> None:
        """Send every client a close frame (going away) without waiting long for the replies."""

        async def close(client: Client) -> None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.ws.close(code=1001, message=b"Server shutdown"), timeout)
            self.unregister(client)

        await asyncio.gather(*(close(client) for client in list(self.clients.values())))

    async def _write(self, client: Client) -> None:
        while True:
            item = await client.queue.get()
            if isinstance(item, _Close):
                return
            if isinstance(item, _Abort):
                transport = client.request.transport
                logger.info("dropping websocket of client %s without a close frame", client.sid)
                if transport is not None:
                    transport.abort()
                return
            if self.is_silent():  # queued before the switch: dropped as well, the socket must go quiet now
                continue
            try:
                if isinstance(item, bytes):
                    await client.ws.send_bytes(item)
                else:
                    await client.ws.send_str(item)
            except Exception as exc:  # the peer went away; the reader side unregisters it
                logger.debug("websocket %s: send failed: %r", client.sid, exc)
                return
