"""Job events for live streams, read from job_logs in id order: the one place the events process reaches the
database through. A JobEventFeed thread owns the LISTEN connection and hands every new event, once and in id
order, to a callback; EventLog answers a resume (Last-Event-ID), a snapshot and the progress of running jobs.

Identity values are taken in one order and committed in another: a reader that has seen id 101 may later see
100 commit. The feed therefore keeps a high-water mark (the cursor, the highest id below which every id has
been handed out or given up) and treats a missing id as a gap: the rows after it wait until the gap fills, or
for at most `gap_wait` seconds, after which the id is taken for a rolled-back insert and skipped (the approach
of Marten's async daemon). A resume reads from the database only up to the cursor and gets the rest live, so
it sees a late commit exactly once, in id order. docs/events.md says what the bound means."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import orjson
from prometheus_client import Counter

from comfyq.db import Database, Listener, Row
from comfyq.errors import DatabaseError
from comfyq.wake_pipe import WakePipe

log = logging.getLogger(__name__)

FINAL_STATUSES = frozenset({"succeeded", "failed", "canceled", "expired"})
PROGRESS_CHANNEL = "comfyq_job_progress"
READ_LIMIT = 1000
RECONNECT_SECONDS = 1.0
FOLLOW_UP_SECONDS = 0.02  # a read this long after a notification finds the claims that follow a job's end
GAPS_SKIPPED = Counter("comfyq_events_gap_ids_skipped_total",
                       "job_logs ids the event feed stopped waiting for (taken as rolled back)")


@dataclass(frozen=True)
class JobEvent:
    """One message of a stream. `id` is the job_logs id (None for progress, which is not logged and so cannot be
    resumed from); `status` the job's status after the event; `final` ends a per-job stream."""

    id: int | None
    job_id: int
    tenant: str
    workflow: str | None
    event: str
    status: str | None
    body: dict[str, Any]
    outputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    @cached_property
    def json(self) -> bytes:
        """The body as JSON, encoded once however many subscribers it goes to (a tenant-wide event reaches every
        stream of the tenant)."""
        return orjson.dumps(self.body, default=str)


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def event_from_row(row: Row) -> JobEvent:
    """A job_logs row (joined to its job) as a stream message."""
    body: dict[str, Any] = {"id": row["id"], "job_id": row["job_id"], "event": row["event"],
                            "status": row["to_status"], "from_status": row["from_status"], "attempt": row["attempt"],
                            "worker_id": row["worker_id"], "workflow": row["workflow"],
                            "created_at": _iso(row["created_at"])}
    if row["message"] is not None:
        body["message"] = row["message"]
    if row["details"] is not None:
        body["details"] = row["details"]
    if row["to_status"] in ("failed", "queued", "expired") and row["event"] != "queued" and row["error"] is not None:
        body["error"] = row["error"]  # a retry, a failure or an expiry: the job's error as it stands
    outputs = list(row["outputs"] or []) if row["to_status"] == "succeeded" else []
    return JobEvent(id=row["id"], job_id=row["job_id"], tenant=row["tenant"], workflow=row["workflow"],
                    event=row["event"], status=row["to_status"], body=body, outputs=outputs)


def progress_from_row(row: Row) -> JobEvent:
    body = {"job_id": row["job_id"], "event": "progress", "status": "running", "attempt": row["attempt"],
            "worker_id": row["worker_id"], "workflow": row["workflow"], "progress": row["progress"],
            "current_node": row["current_node"]}
    return JobEvent(id=None, job_id=row["job_id"], tenant=row["tenant"], workflow=row["workflow"],
                    event="progress", status="running", body=body)


class EventLog:
    """Reads of job_logs for the streams; each call takes a pooled connection."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def last_id(self) -> int:
        row = self.db.fetch_one("events_last_id")
        return int(row["id"]) if row else 0

    def after(self, after: int, limit: int = READ_LIMIT) -> list[Row]:
        return self.db.fetch_all("events_after", {"after": after, "limit": limit})

    def between(self, tenant: str, after: int, upto: int, job_id: int | None = None) -> list[JobEvent]:
        """One page (READ_LIMIT) of a tenant's (or one job's) events in (after, upto], in id order: the caller
        pages on from the last id, so a resume from far back never holds more than a page."""
        rows = self.db.fetch_all("events_between", {"tenant": tenant, "after": after, "upto": upto,
                                                    "job_id": job_id, "limit": READ_LIMIT})
        return [event_from_row(row) for row in rows]

    def progress(self, job_ids: Sequence[int]) -> list[JobEvent]:
        rows = self.db.fetch_all("events_job_progress", {"ids": list(job_ids)})
        return [progress_from_row(row) for row in rows]

    def snapshot(self, job_id: int, tenant: str) -> Row | None:
        """The job row (as GET /jobs/{id} reads it) plus `last_event_id`, or None for another tenant's job."""
        return self.db.fetch_one("events_job_snapshot", {"id": job_id, "tenant": tenant})

    def listener(self) -> Listener:
        return self.db.listener("events_listen")


class GapCursor:
    """The high-water mark of the feed: which fetched rows are safe to hand out. Pure bookkeeping with an
    injectable clock, so the gap rule is tested without waiting."""

    def __init__(self, start: int, gap_wait: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.position = start
        self.gap_wait = gap_wait
        self._clock = clock
        self._gap_seen: dict[int, float] = {}  # missing id -> when it was first missed

    def take(self, rows: Sequence[Row]) -> tuple[list[Row], bool]:
        """The leading run of rows that follows the cursor without a gap (a gap older than gap_wait is skipped),
        and whether a gap still holds the rest back (then read again soon)."""
        taken: list[Row] = []
        for row in rows:
            row_id = int(row["id"])
            if row_id <= self.position:
                continue
            if row_id > self.position + 1:
                missing = self.position + 1
                first = self._gap_seen.setdefault(missing, self._clock())
                if self._clock() - first < self.gap_wait:
                    return taken, True
                log.warning("job_logs ids %d..%d did not commit within %.1fs: taken as rolled back",
                            missing, row_id - 1, self.gap_wait, extra={"action": "events_gap_skipped"})
                GAPS_SKIPPED.inc(row_id - missing)
            self._gap_seen.clear()
            self.position = row_id
            taken.append(row)
        return taken, False

    @property
    def waiting(self) -> bool:
        return bool(self._gap_seen)


class JobEventFeed:
    """One per process: the LISTEN connection and its thread. publish(events) is called from this thread with
    each batch in id order (progress after); the receiver hands them to its own loop."""

    def __init__(self, log_: EventLog, publish: Callable[[list[JobEvent], int], None], *, gap_wait: float,
                 poll_seconds: float, gap_poll_seconds: float = 0.01,
                 follow_up_seconds: float = FOLLOW_UP_SECONDS) -> None:
        self.log = log_
        self.publish = publish
        self.poll_seconds = poll_seconds
        self.gap_poll_seconds = gap_poll_seconds
        self.follow_up_seconds = follow_up_seconds
        self.gap_wait = gap_wait
        self.cursor: GapCursor | None = None
        self._closing = threading.Event()
        self._wake = WakePipe()  # close() ends the wait on the LISTEN socket at once
        self._thread = threading.Thread(target=self._run, name="job-event-feed", daemon=True)
        self.ready = threading.Event()  # set once the cursor is known and the channel is listened to

    def start(self) -> JobEventFeed:
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        self._wake.wake()
        self._thread.join(timeout=self.poll_seconds + 2)
        if not self._thread.is_alive():  # never close a descriptor the thread may still be waiting on
            self._wake.close()

    def _run(self) -> None:
        listener: Listener | None = None
        follow_up = False
        while not self._closing.is_set():
            try:
                if listener is None:
                    listener = self.log.listener()
                    received = listener.notifications(0)  # connects and LISTENs before the cursor is read
                    if self.cursor is None:
                        self.cursor = GapCursor(self.log.last_id(), self.gap_wait)
                        self.publish([], self.cursor.position)  # the receiver's starting position
                    self.ready.set()
                    self._catch_up()  # anything committed while the connection was down
                else:
                    received = listener.notifications(self._next_wait(follow_up), (self._wake.read_fd,))
                    self._catch_up()
                follow_up = bool(received)
                progressed = sorted({int(payload) for channel, payload in received
                                     if channel == PROGRESS_CHANNEL and payload.isdigit()})
                if progressed:
                    self.publish(self.log.progress(progressed), self._position())
            except DatabaseError as exc:
                # Down, or refusing (a schema not migrated yet): either way the thread lives on and tries again,
                # from the cursor, so nothing is skipped.
                log.warning("job event feed: %s; reconnecting", exc, extra={"action": "events_feed_down"})
                if listener is not None:
                    listener.close()
                listener = None
                self._closing.wait(RECONNECT_SECONDS)
        if listener is not None:
            listener.close()

    def _next_wait(self, follow_up: bool) -> float:
        """How long to wait for a notification before reading anyway: briefly while a gap holds rows back; briefly
        once after a notification, because a worker that just finished a job claims the next one a few
        milliseconds later and claims send none; else the poll interval."""
        if self.cursor is not None and self.cursor.waiting:
            return self.gap_poll_seconds
        return self.follow_up_seconds if follow_up else self.poll_seconds

    def _position(self) -> int:
        return self.cursor.position if self.cursor is not None else 0

    def _catch_up(self) -> None:
        """Read and hand out everything safe past the cursor. A read runs on every wake-up, notification or not:
        claims send no notification (migration 0017), so their rows come with whatever wakes the feed next, the
        poll interval at the latest; it is also the fallback for a notification lost with a connection."""
        assert self.cursor is not None
        while True:
            rows = self.log.after(self.cursor.position)
            taken, held = self.cursor.take(rows)
            if taken:
                self.publish([event_from_row(row) for row in taken], self.cursor.position)
            if held or len(rows) < READ_LIMIT:
                return
