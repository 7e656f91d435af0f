"""Lean stream readers for the events benchmark: raw asyncio protocols that speak just enough HTTP/1.1, SSE and
WebSocket to record when each logged event (its job_logs id) arrives. A thousand of them share the two cores with
what they measure, so they parse with one regular expression per received chunk and never build a message.

A per-job reader is done when its job's final event arrives (SSE) or the server closes the socket (WS); a
tenant-wide reader when the benchmark closes it."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import time

SSE_ID = re.compile(rb"id: (\d+)\n")
SSE_FINAL = re.compile(rb"event: (?:succeeded|failed|canceled|expired)\n")
WS_ID = re.compile(rb'\{"id":(\d+),')
WS_OPS = {"text": 0x1, "close": 0x8, "ping": 0x9, "pong": 0xA}


class StreamReader(asyncio.Protocol):
    """What both kinds share: the arrivals (id, wall-clock time), `ready` once the stream is open (per-job: its
    snapshot arrived) and `done` once it ended."""

    def __init__(self, request: bytes, per_job: bool) -> None:
        self.request = request
        self.per_job = per_job
        self.arrivals: list[tuple[int, float]] = []
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        for future in (self.ready, self.done):
            if not future.done():
                future.set_result(None)

    def _set(self, future: asyncio.Future[None]) -> None:
        if not future.done():
            future.set_result(None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class SseReader(StreamReader):
    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.buffer += data
        end = self.buffer.rfind(b"\n")
        if end < 0:
            return
        text, self.buffer = self.buffer[:end + 1], self.buffer[end + 1:]
        self.arrivals.extend((int(found), now) for found in SSE_ID.findall(text))
        if not self.ready.done() and (b"event: snapshot\n" in text or (not self.per_job and b"retry:" in text)):
            self._set(self.ready)
        if self.per_job and SSE_FINAL.search(text):
            self._set(self.done)
            self.close()


class WsReader(StreamReader):
    def __init__(self, request: bytes, per_job: bool) -> None:
        super().__init__(request, per_job)
        self.upgraded = False

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.buffer += data
        if not self.upgraded:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            if b" 101 " not in self.buffer[:head_end].split(b"\r\n", 1)[0]:
                self.close()
                return
            self.upgraded = True
            self.buffer = self.buffer[head_end + 4:]
            if not self.per_job:
                self._set(self.ready)
        self._frames(now)

    def _frames(self, now: float) -> None:
        buffer, pos = self.buffer, 0
        while len(buffer) - pos >= 2:
            opcode, length, start = buffer[pos] & 0x0F, buffer[pos + 1] & 0x7F, pos + 2
            if length == 126:
                if len(buffer) - pos < 4:
                    break
                length, start = int.from_bytes(buffer[pos + 2:pos + 4], "big"), pos + 4
            elif length == 127:
                if len(buffer) - pos < 10:
                    break
                length, start = int.from_bytes(buffer[pos + 2:pos + 10], "big"), pos + 10
            if len(buffer) < start + length:
                break
            payload = buffer[start:start + length]
            pos = start + length
            if opcode == WS_OPS["text"]:
                found = WS_ID.match(payload)
                if found:
                    self.arrivals.append((int(found.group(1)), now))
                elif payload.startswith(b'{"event":"snapshot"'):
                    self._set(self.ready)
            elif opcode == WS_OPS["ping"]:
                self._send(WS_OPS["pong"], payload)
            elif opcode == WS_OPS["close"]:
                self._send(WS_OPS["close"], payload[:2])
                self._set(self.done)
                self.close()
        self.buffer = buffer[pos:]

    def _send(self, opcode: int, payload: bytes) -> None:
        """A client frame: always masked (RFC 6455); a zero mask leaves the payload as it is."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)


def sse_request(host: str, path: str, token: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
            f"Authorization: Bearer {token}\r\n\r\n").encode()


def ws_request(host: str, path: str, token: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\n\r\n").encode()


async def open_reader(host: str, port: int, token: str, *, kind: str, job_id: int | None) -> StreamReader:
    """One stream: kind 'sse' or 'ws'; a job's stream when job_id is given, else the tenant-wide one."""
    loop = asyncio.get_running_loop()
    authority = f"{host}:{port}"
    if kind == "sse":
        path = f"/jobs/{job_id}/events" if job_id is not None else "/events"
        _, reader = await loop.create_connection(
            lambda: SseReader(sse_request(authority, path, token), job_id is not None), host, port)
        return reader
    path = f"/ws/jobs/{job_id}" if job_id is not None else "/ws/events"
    _, ws = await loop.create_connection(
        lambda: WsReader(ws_request(authority, path, token), job_id is not None), host, port)
    return ws
