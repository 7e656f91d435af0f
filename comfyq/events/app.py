"""The routes of the events process (aiohttp): live streams of job events as Server-Sent Events and WebSocket,
and bounded waits for a job's end. Long-lived connections live here, on one event loop, so they never hold a
sync gunicorn worker of the API. Every database read runs in a thread (the pool is the core's psycopg2 one).

Messages are JSON objects, the same over SSE (the `data:` line, with `id:` and `event:` lines) and WS (one text
frame each): first a `snapshot` of the job (per-job streams), then one message per job_logs row (`id` is its
id, the stream's Last-Event-ID), and `progress` messages (no id) while a job runs. A per-job stream closes after
the job's final state."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from aiohttp import ClientError, ClientSession, WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from comfyq.db import Database
from comfyq.errors import DatabaseUnavailable
from comfyq.events.auth import TokenCache, bearer_token
from comfyq.events.hub import Hub, Interest, Subscriber, SubscriberState
from comfyq.job_events import FINAL_STATUSES, READ_LIMIT, EventLog, JobEvent
from comfyq.job_view import present_job, present_outputs
from comfyq.settings import Settings
from comfyq.storage import Storage
from comfyq.stream_tokens import InvalidStreamToken, StreamCaller, StreamTokens

log = logging.getLogger(__name__)
MAX_ID = 2**63 - 1
T = TypeVar("T")
STATUSES = frozenset({"queued", "running", "succeeded", "failed", "canceled", "expired"})


class RenderedSuccesses:
    """Success messages with their outputs' download URLs, by (event id, host). A tenant-wide success reaches
    every stream of the tenant; signing its URLs once per stream would cost a presign each. Bounded (oldest out);
    owned by the loop."""

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._items: dict[tuple[int, str], bytes] = {}

    def get(self, key: tuple[int, str], render: Callable[[], bytes]) -> bytes:
        found = self._items.get(key)
        if found is None:
            found = self._items[key] = render()
            if len(self._items) > self._size:
                del self._items[next(iter(self._items))]
        return found


@dataclass
class EventsServices:
    """What the handlers share; built once per process by comfyq.events.main."""

    settings: Settings
    db: Database
    events: EventLog
    hub: Hub
    tokens: TokenCache
    stream_tokens: StreamTokens
    storage: Storage
    api: ClientSession  # to the API (COMFYQ_EVENTS_API_URL), for POST /jobs?wait=
    successes: RenderedSuccesses = field(default_factory=RenderedSuccesses)


SERVICES = web.AppKey("services", EventsServices)


_ERRORS: dict[int, type[web.HTTPException]] = {400: web.HTTPBadRequest, 401: web.HTTPUnauthorized,
                                               404: web.HTTPNotFound, 503: web.HTTPServiceUnavailable}


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.HTTPException:
    """The API's error shape: {"error": {"code", "message", "details"}}."""
    body = json.dumps({"error": {"code": code, "message": message, "details": {}}})
    return _ERRORS[status](text=body, content_type="application/json", headers=headers)


def _services(request: web.Request) -> EventsServices:
    return request.app[SERVICES]


async def _blocking(call: Callable[[], T]) -> T:
    """A database read off the loop; a database that is down answers 503 like the API."""
    try:
        return await asyncio.get_running_loop().run_in_executor(None, call)
    except DatabaseUnavailable as exc:
        raise _error(503, "database_unavailable", "the database is not available; try again shortly",
                     {"Retry-After": "5"}) from exc


async def _caller(request: web.Request) -> StreamCaller:
    """A bearer token in the Authorization header, or a stream token in `?stream_token=` (never a bearer token
    in the URL)."""
    services = _services(request)
    header = request.headers.get("Authorization")
    challenge = {"WWW-Authenticate": 'Bearer realm="comfyq"'}
    if header is not None:
        token = bearer_token(header)
        if token is None:
            raise _error(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required", challenge)
        known, caller = services.tokens.cached(token)
        if not known:
            caller = await _blocking(lambda: services.tokens.resolve(token))
        if caller is None:
            raise _error(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required", challenge)
        return caller
    stream_token = request.query.get("stream_token")
    if stream_token:
        try:
            return services.stream_tokens.redeem(stream_token)
        except InvalidStreamToken as exc:
            raise _error(401, "unauthorized", str(exc), challenge) from exc
    raise _error(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header (or a stream token from "
                 "POST /events/token) is required", challenge)


def _job_id(request: web.Request) -> int:
    text = request.match_info["job_id"]
    if not text.isdigit() or int(text) > MAX_ID:
        raise _error(404, "not_found", f"no job {text}")
    return int(text)


def _last_event_id(request: web.Request) -> int | None:
    value = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if value is None or value == "":
        return None
    if not value.isdigit() or int(value) > MAX_ID:
        raise _error(400, "invalid_last_event_id", "Last-Event-ID must be an event id from this stream")
    return int(value)


def _set_of(request: web.Request, name: str, allowed: frozenset[str] | None = None) -> frozenset[str]:
    values = frozenset(v.strip() for part in request.query.getall(name, []) for v in part.split(",") if v.strip())
    if allowed is not None and not values <= allowed:
        raise _error(400, "invalid_filter", f"{name} must be among {', '.join(sorted(allowed))}")
    return values


def _base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


class Stream:
    """One subscriber's messages, whatever carries them: the snapshot, the resume, then live events. Subclasses
    say how a message is written (SSE, WS)."""

    def __init__(self, request: web.Request, interest: Interest, kind: str) -> None:
        self.request = request
        self.services = _services(request)
        self.interest = interest
        self.kind = kind
        self.subscriber: Subscriber | None = None
        self.skip_upto = 0  # live events of the job at or below this are in the snapshot already

    def encode(self, event: JobEvent) -> bytes:
        """The message's JSON: the event's own, encoded once for every stream, or for a success the same with its
        outputs' download URLs for this request's host."""
        if event.status != "succeeded":
            return event.json
        base_url = _base_url(self.request)
        services = self.services

        def render() -> bytes:
            outputs = present_outputs(event.job_id, event.outputs, services.storage,
                                      services.settings.s3_presign_seconds, base_url)
            return orjson.dumps({**event.body, "outputs": outputs}, default=str)

        if event.id is None:
            return render()
        return services.successes.get((event.id, base_url), render)

    async def send(self, message: dict[str, Any], event_id: int | None) -> None:
        """One message built here (the snapshot)."""
        raise NotImplementedError

    async def send_events(self, events: list[JobEvent]) -> None:
        """Events in order; a stream that fell behind gets all it missed in one write where the transport
        allows."""
        raise NotImplementedError

    async def heartbeat(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Close the connection under a subscriber that fell behind; its pending write fails and ends the
        handler."""
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    async def run(self) -> None:
        services = self.services
        after = _last_event_id(self.request)
        subscriber = None
        try:
            if after is not None:
                subscriber = await self._replay(after)
            else:
                subscriber = self._subscribe()
                if await self._snapshot(subscriber):
                    return
            if subscriber is None:
                return
            heartbeat = services.settings.events_heartbeat_seconds
            while True:
                event = await subscriber.next(heartbeat)
                if subscriber.state is not SubscriberState.LIVE:
                    return
                if event is None:
                    await self.heartbeat()
                    continue
                batch = []
                for pending in (event, *subscriber.drain()):
                    if pending.id is not None and pending.id <= self.skip_upto:
                        continue
                    batch.append(pending)
                    if self.interest.job_id is not None and pending.final:
                        break
                if batch:
                    await self.send_events(batch)
                if self.interest.job_id is not None and batch and batch[-1].final:
                    return
        finally:
            if subscriber is not None:
                services.hub.unsubscribe(subscriber)

    def _subscribe(self) -> Subscriber:
        self.subscriber = self.services.hub.subscribe(self.interest, self.kind, self.abort)
        return self.subscriber

    async def _replay(self, after: int) -> Subscriber | None:
        """A resume: the events after `after` from the database, page by page, up to the feed's position, and a
        subscription made in the same step of the loop that finds the replay caught up, so the live events
        start exactly where the database pages end. Until then nothing is buffered for this stream, however
        long the replay takes. None when a per-job replay reached the job's end."""
        services, interest = self.services, self.interest
        position = after
        while True:
            upto = services.hub.position
            if position >= upto:
                return self._subscribe()
            missed = await _blocking(functools.partial(services.events.between, interest.tenant, position, upto,
                                                       interest.job_id))
            for event in missed:
                if interest.matches(event):
                    await self.send_events([event])
                    if interest.job_id is not None and event.final:
                        return None
            position = int(missed[-1].id or upto) if len(missed) >= READ_LIMIT else upto

    async def _snapshot(self, subscriber: Subscriber) -> bool:
        """A per-job stream's first message; True when the job is already over (or gone)."""
        services, interest = self.services, self.interest
        job_id = interest.job_id
        if job_id is None:
            return False
        row = await _blocking(lambda: services.events.snapshot(job_id, interest.tenant))
        if row is None:
            return True  # checked before the response started; gone since (retention)
        self.skip_upto = int(row["last_event_id"] or 0)
        job = present_job(row, services.storage, services.settings.s3_presign_seconds, _base_url(self.request))
        await self.send({"event": "snapshot", "job_id": job_id, "status": row["status"], "job": job},
                        max(subscriber.start, self.skip_upto))
        return bool(row["status"] in FINAL_STATUSES)


class SseStream(Stream):
    def __init__(self, request: web.Request, interest: Interest) -> None:
        super().__init__(request, interest, "sse")
        self.response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no"})  # nginx: pass each event on at once

    async def start(self) -> web.StreamResponse:
        await self.response.prepare(self.request)
        # Tell EventSource how long to wait before reconnecting, and open the stream at once.
        await self.response.write(b"retry: 2000\n\n")
        with contextlib.suppress(ConnectionError):
            await self.run()
        return self.response

    async def send(self, message: dict[str, Any], event_id: int | None) -> None:
        head = f"id: {event_id}\n" if event_id is not None else ""
        data = json.dumps(message, separators=(",", ":"), default=str)
        await self.response.write(f"{head}event: {message['event']}\ndata: {data}\n\n".encode())

    async def send_events(self, events: list[JobEvent]) -> None:
        await self.response.write(b"".join(
            (b"id: %d\n" % event.id if event.id is not None else b"")
            + b"event: " + event.event.encode() + b"\ndata: " + self.encode(event) + b"\n\n"
            for event in events))

    async def heartbeat(self) -> None:
        await self.response.write(b": heartbeat\n\n")


class WsStream(Stream):
    def __init__(self, request: web.Request, interest: Interest) -> None:
        super().__init__(request, interest, "ws")
        self.ws = web.WebSocketResponse(heartbeat=_services(request).settings.events_heartbeat_seconds)

    async def start(self) -> web.WebSocketResponse:
        await self.ws.prepare(self.request)
        reader = asyncio.create_task(self._read_until_closed())
        try:
            with contextlib.suppress(ConnectionError):
                await self.run()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await self.ws.close()
        return self.ws

    async def _read_until_closed(self) -> None:
        """Read (and ignore) what the client sends, so its close frame and pings are answered."""
        async for msg in self.ws:
            if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break
        if self.subscriber is not None:
            self.services.hub.unsubscribe(self.subscriber)

    async def send(self, message: dict[str, Any], event_id: int | None) -> None:
        await self.ws.send_str(json.dumps(message, separators=(",", ":"), default=str))

    async def send_events(self, events: list[JobEvent]) -> None:
        for event in events:
            await self.ws.send_frame(self.encode(event), WSMsgType.TEXT)

    async def heartbeat(self) -> None:
        return  # the WebSocket's own ping frames (heartbeat=) keep it open


async def _job_interest(request: web.Request) -> Interest:
    """The caller's interest in one of its jobs. A reconnect after the job's final event is answered 204, which
    tells EventSource to stop reconnecting (a closed stream alone makes it come back)."""
    caller = await _caller(request)
    job_id = _job_id(request)
    after = _last_event_id(request)
    services = _services(request)
    row = await _blocking(lambda: services.events.snapshot(job_id, caller.tenant))
    if row is None:
        raise _error(404, "not_found", f"no job {job_id}")
    if after is not None and row["status"] in FINAL_STATUSES and (row["last_event_id"] or 0) <= after:
        raise web.HTTPNoContent()
    return Interest(caller.tenant, job_id=job_id)


async def _tenant_interest(request: web.Request) -> Interest:
    caller = await _caller(request)
    _last_event_id(request)  # a bad one is a 400 before the stream starts, not a stream cut after its 200
    return Interest(caller.tenant, statuses=_set_of(request, "status", STATUSES),
                    workflows=_set_of(request, "workflow"))


async def job_events_sse(request: web.Request) -> web.StreamResponse:
    return await SseStream(request, await _job_interest(request)).start()


async def tenant_events_sse(request: web.Request) -> web.StreamResponse:
    return await SseStream(request, await _tenant_interest(request)).start()


async def job_events_ws(request: web.Request) -> web.StreamResponse:
    return await WsStream(request, await _job_interest(request)).start()


async def tenant_events_ws(request: web.Request) -> web.StreamResponse:
    return await WsStream(request, await _tenant_interest(request)).start()


def _wait_seconds(request: web.Request) -> float:
    text = request.query.get("wait", "0")
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise _error(400, "invalid_wait", "wait must be a number of seconds, 0 or more")
    return min(seconds, _services(request).settings.events_wait_max_seconds)


async def get_job(request: web.Request) -> web.Response:
    """GET /jobs/{id}?wait=SECONDS: 200 with the job (as the API's GET /jobs/{id}) as soon as it is final, or 202
    with its current state when the wait ends. Woken by the feed, never by polling."""
    caller = await _caller(request)
    return await _wait_for(request, caller, _job_id(request), _wait_seconds(request))


FORWARDED_REQUEST_HEADERS = ("Authorization", "Idempotency-Key", "Content-Type")
FORWARDED_ANSWER_HEADERS = ("Content-Type", "Retry-After", "WWW-Authenticate", "Allow", "Location")


async def submit_and_wait(request: web.Request) -> web.Response:
    """POST /jobs?wait=SECONDS: the submission goes to the API as it came (body, Authorization, Idempotency-Key);
    a refusal comes back unchanged, an accepted job is then waited for as GET /jobs/{id}?wait= does."""
    seconds = _wait_seconds(request)
    services = _services(request)
    body = await request.read()
    headers = {name: request.headers[name] for name in FORWARDED_REQUEST_HEADERS if name in request.headers}
    try:
        async with services.api.post(f"{services.settings.events_api_url.rstrip('/')}/jobs", data=body,
                                     headers=headers) as answer:
            payload = await answer.read()
            status = answer.status
            kept = {name: answer.headers[name] for name in FORWARDED_ANSWER_HEADERS if name in answer.headers}
    except (ClientError, TimeoutError) as exc:
        log.warning("POST /jobs?wait: the API did not answer: %s", exc, extra={"action": "events_api_unreachable"})
        raise _error(503, "api_unavailable", "the API is not answering; retry later", {"Retry-After": "5"}) from exc
    if status not in (200, 201, 202):
        return web.Response(body=payload, status=status, headers=kept)
    job_id = int(json.loads(payload)["id"])
    caller = await _caller(request)  # the API accepted the token; a cached answer here costs nothing
    return await _wait_for(request, caller, job_id, seconds)


async def _wait_for(request: web.Request, caller: StreamCaller, job_id: int, seconds: float) -> web.Response:
    services = _services(request)
    subscriber = services.hub.subscribe(Interest(caller.tenant, job_id=job_id), "wait")
    try:
        row = await _blocking(lambda: services.events.snapshot(job_id, caller.tenant))
        if row is None:
            raise _error(404, "not_found", f"no job {job_id}")
        deadline = asyncio.get_running_loop().time() + seconds
        while row["status"] not in FINAL_STATUSES:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            event = await subscriber.next(left)
            if subscriber.state is not SubscriberState.LIVE:
                break
            if event is not None and event.final:
                row = await _blocking(lambda: services.events.snapshot(job_id, caller.tenant))
                if row is None:
                    raise _error(404, "not_found", f"no job {job_id}")
    finally:
        services.hub.unsubscribe(subscriber)
    job = present_job(row, services.storage, services.settings.s3_presign_seconds, _base_url(request))
    return web.json_response(job, status=200 if row["status"] in FINAL_STATUSES else 202,
                             headers={"Location": f"/jobs/{job_id}"},
                             dumps=lambda value: json.dumps(value, default=str))


async def stream_token(request: web.Request) -> web.Response:
    """POST /events/token: a short-lived token for one stream, for clients (browsers) that cannot send headers.
    Needs the bearer token itself: a stream token does not buy another."""
    if request.headers.get("Authorization") is None:
        raise _error(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required",
                     {"WWW-Authenticate": 'Bearer realm="comfyq"'})
    caller = await _caller(request)
    token, expires = _services(request).stream_tokens.issue(caller)
    return web.json_response({"stream_token": token, "expires_at": expires,
                              "expires_in": _services(request).stream_tokens.lifetime})


async def metrics(request: web.Request) -> web.Response:
    secret = _services(request).settings.metrics_token
    presented = bearer_token(request.headers.get("Authorization", ""))
    if secret and (presented is None or not hmac.compare_digest(presented.encode(), secret.encode())):
        raise _error(401, "unauthorized", "this needs the metrics token")
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "subscribers": _services(request).hub.count})


# Every route of the events process: (method, path, handler). docs/events.md documents each.
ROUTES: tuple[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]], ...] = (
    ("GET", "/jobs/{job_id}/events", job_events_sse),
    ("GET", "/events", tenant_events_sse),
    ("GET", "/ws/jobs/{job_id}", job_events_ws),
    ("GET", "/ws/events", tenant_events_ws),
    ("GET", "/jobs/{job_id}", get_job),
    ("POST", "/jobs", submit_and_wait),
    ("POST", "/events/token", stream_token),
    ("GET", "/metrics", metrics),
    ("GET", "/healthz", healthz),
)


def build_app(services: EventsServices) -> web.Application:
    app = web.Application()
    app[SERVICES] = services
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    return app
