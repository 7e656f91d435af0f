"""Follows one job's Server-Sent Events stream (GET /jobs/{id}/events of `comfyq events`) to its final state for
the CLI, across dropped connections: a restart of the events process, nginx closing a long stream, a network
blip. Each reconnect sends the last id seen as Last-Event-ID, so the events process replays what was missed
(docs/events.md, "Resuming without gaps"); reconnects back off up to a bound, and the follower gives up only
after `give_up_seconds` without contact.

The parsing is sseclient-py's (a maintained parser over any byte iterator); requests does the HTTP with
stream=True, and this module owns the reconnect rule, which no SSE client library offers with a give-up time."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

import requests
import sseclient

from comfyq.backoff import retry_delay
from comfyq.client import ApiCallFailed

FINAL_STATUSES = frozenset({"succeeded", "failed", "canceled", "expired"})
RECONNECT_FIRST_SECONDS = 0.2
RECONNECT_MAX_SECONDS = 5.0


class FollowState(Enum):
    CONNECTING = "connecting"
    STREAMING = "streaming"
    FINAL = "final"  # the job's final event (or a 204: the stream already ended after our last id)
    OUT_OF_TIME = "out_of_time"  # the caller's deadline passed first


class LostContact(ApiCallFailed):
    """No answer from the events process for the give-up time; the job's fate is unknown."""


@dataclass(frozen=True)
class JobEvent:
    event: str
    id: int | None
    data: dict[str, Any]

    @property
    def status(self) -> str | None:
        status = self.data.get("status")
        return str(status) if status is not None else None

    @property
    def final(self) -> bool:
        return self.event != "progress" and self.status in FINAL_STATUSES


class JobEventFollower:
    """Yields the events of one job until its final one. `on_reconnect(error)` is told about each drop."""

    def __init__(self, events_url: str, token: str | None, job_id: int, *, give_up_seconds: float,
                 read_timeout: float = 45.0, deadline: float | None = None,
                 on_reconnect: Callable[[str], None] | None = None) -> None:
        self.url = f"{events_url.rstrip('/')}/jobs/{job_id}/events"
        self.job_id = job_id
        self.give_up_seconds = give_up_seconds
        self.read_timeout = read_timeout  # three missed heartbeats at the default 15 s: a dead connection
        self.deadline = deadline  # time.monotonic() at which to stop following, final or not
        self.on_reconnect = on_reconnect or (lambda _error: None)
        self.http = requests.Session()
        self.http.headers["Accept"] = "text/event-stream"
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"
        self.last_id: int | None = None
        self.state = FollowState.CONNECTING
        self.last_status: str | None = None
        self.received = 0  # events read on the current connection

    def events(self) -> Iterator[JobEvent]:
        last_contact = time.monotonic()
        failures = 0
        while self.state is FollowState.CONNECTING:
            error: str
            self.received = 0
            try:
                yield from self._one_connection()
                if not self._streaming():
                    return
                error = "the events process closed the stream"
                last_contact = time.monotonic()
            except requests.ReadTimeout:
                error = f"nothing received for {self.read_timeout:.0f} s"
                last_contact = time.monotonic() - self.read_timeout
            except requests.RequestException as exc:
                error = f"cannot reach {self.url}: {exc.__class__.__name__}"
                if self._streaming():
                    last_contact = time.monotonic()
            if self.received:
                failures = 0  # events came through: start the backoff over (a stream that opens and closes
                # at once, with nothing in it, keeps backing off)
            self.state = FollowState.CONNECTING
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self.state = FollowState.OUT_OF_TIME
                return
            silent = time.monotonic() - last_contact
            if silent >= self.give_up_seconds:
                raise LostContact(0, "no_contact", f"no contact with the events process at {self.url} for "
                                  f"{silent:.0f} s (last: {error})")
            self.on_reconnect(error)
            failures += 1
            time.sleep(min(retry_delay(failures, RECONNECT_FIRST_SECONDS, RECONNECT_MAX_SECONDS),
                           max(0.0, self.give_up_seconds - silent)))

    def _streaming(self) -> bool:
        """Read through a method: the state changes inside the generator, which mypy's narrowing cannot see."""
        return self.state is FollowState.STREAMING

    def _one_connection(self) -> Iterator[JobEvent]:
        headers = {"Last-Event-ID": str(self.last_id)} if self.last_id is not None else {}
        with self.http.get(self.url, headers=headers, stream=True, timeout=(5, self.read_timeout)) as response:
            if response.status_code == 204:  # resumed after the final event: nothing more will come
                self.state = FollowState.FINAL
                return
            if response.status_code >= 500:
                raise requests.ConnectionError(f"{response.status_code} from the events process")
            if response.status_code >= 400:
                raise _refusal(response)
            self.state = FollowState.STREAMING
            for raw in sseclient.SSEClient(self._until_deadline(response)).events():
                event = JobEvent(raw.event, int(raw.id) if raw.id else None, json.loads(raw.data))
                self.received += 1
                if event.id is not None:
                    self.last_id = event.id
                if event.status is not None:
                    self.last_status = event.status
                yield event
                if event.final:
                    self.state = FollowState.FINAL
                    return

    def _until_deadline(self, response: requests.Response) -> Iterator[bytes]:
        """The response's bytes as they arrive (heartbeats too), ending once the deadline has passed."""
        for chunk in response.iter_content(chunk_size=None):
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self.state = FollowState.OUT_OF_TIME
                return
            yield chunk


def _refusal(response: requests.Response) -> ApiCallFailed:
    """The events process's own refusal (401, 404 for a job), or a URL where no events process answers."""
    try:
        error = response.json().get("error", {})
    except ValueError:
        error = {}
    # The events process says "no job N" (comfyq/events/app.py); any other 404 is a server without the route,
    # typically the API itself when no front door sends the streams on.
    if response.status_code == 404 and not str(error.get("message", "")).startswith("no job "):
        return ApiCallFailed(0, "no_events_route", f"no job stream at {response.url} (404 from a server without "
                             "the events process's routes)")
    return ApiCallFailed(response.status_code, error.get("code", "http_error"),
                         error.get("message", response.text[:200]))
