"""In-memory fan-out of job events to the subscribers of one events process. Owned by the event loop: the feed
thread hands batches over with call_soon_threadsafe and everything here runs on the loop, so no locks.

Each subscriber has a bounded buffer. One that falls `buffer` events behind (it stopped reading, or reads more
slowly than events arrive) is dropped: its buffer is freed at once and its connection closed, so it never grows
memory nor delays the others. A dropped client reconnects with Last-Event-ID and misses nothing."""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge

from comfyq.job_events import JobEvent

log = logging.getLogger(__name__)


class SubscriberState(enum.Enum):
    LIVE = "live"  # receiving
    DROPPED = "dropped"  # fell behind: buffer freed, connection being closed
    CLOSED = "closed"  # unsubscribed by its own handler


@dataclass(frozen=True)
class Interest:
    """What a subscriber wants: one tenant, and within it one job or any job of the given statuses and
    workflows (empty: all)."""

    tenant: str
    job_id: int | None = None
    statuses: frozenset[str] = frozenset()
    workflows: frozenset[str] = frozenset()

    def matches(self, event: JobEvent) -> bool:
        if event.tenant != self.tenant:
            return False
        if self.job_id is not None:
            return event.job_id == self.job_id
        if self.statuses and event.status not in self.statuses:
            return False
        return not self.workflows or event.workflow in self.workflows


class Subscriber:
    """One stream's buffer. `start` is the feed position at subscription: every event it receives live has a
    greater id, so a resume reads (Last-Event-ID, start] from the database and nothing twice."""

    def __init__(self, interest: Interest, kind: str, buffer: int, start: int,
                 on_drop: Callable[[], None] | None) -> None:
        self.interest = interest
        self.kind = kind
        self.start = start
        self._buffer: deque[JobEvent] = deque()
        self._limit = buffer
        self._waiter: asyncio.Future[None] | None = None  # set while `next` waits on an empty buffer
        self._on_drop = on_drop
        self.state = SubscriberState.LIVE

    def offer(self, event: JobEvent) -> bool:
        """Buffer an event; False (and the subscriber dropped) when the buffer is full."""
        if len(self._buffer) >= self._limit:
            self._buffer.clear()
            self.state = SubscriberState.DROPPED
            self._wake()
            if self._on_drop is not None:
                self._on_drop()
            return False
        self._buffer.append(event)
        self._wake()
        return True

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self, timeout: float) -> JobEvent | None:
        """The next event, or None after timeout seconds without one (time for a heartbeat) or once dropped.
        A bare future and a timer, not asyncio.wait_for, which costs a task per call: a tenant-wide event wakes
        every stream of the tenant."""
        if not self._buffer and self.state is SubscriberState.LIVE:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout, self._wake)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        if self.state is not SubscriberState.LIVE or not self._buffer:
            return None
        return self._buffer.popleft()

    def drain(self) -> list[JobEvent]:
        """Every event buffered after the one `next` gave, so a stream that fell behind writes them at once."""
        if self.state is not SubscriberState.LIVE:
            return []
        events = list(self._buffer)
        self._buffer.clear()
        return events


SUBSCRIBERS = Gauge("comfyq_events_subscribers", "Open event streams and waits of this process", ["kind"])
DROPPED = Counter("comfyq_events_dropped_total", "Subscribers dropped for falling behind their buffer")
PUBLISHED = Counter("comfyq_events_published_total", "Job events read from the database and fanned out")


class Hub:
    """The subscribers of this process and the feed's position (the highest id handed out)."""

    def __init__(self, buffer: int) -> None:
        self.buffer = buffer
        self.position = 0
        # Indexed by what they watch, so an event touches only its job's streams and its tenant's wide ones.
        self._by_job: dict[int, set[Subscriber]] = {}
        self._by_tenant: dict[str, set[Subscriber]] = {}
        self._count = 0

    def _group(self, interest: Interest) -> tuple[dict[Any, set[Subscriber]], Any]:
        if interest.job_id is not None:
            return self._by_job, interest.job_id
        return self._by_tenant, interest.tenant

    def subscribe(self, interest: Interest, kind: str, on_drop: Callable[[], None] | None = None) -> Subscriber:
        subscriber = Subscriber(interest, kind, self.buffer, self.position, on_drop)
        index, key = self._group(interest)
        index.setdefault(key, set()).add(subscriber)
        self._count += 1
        SUBSCRIBERS.labels(kind).inc()
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        index, key = self._group(subscriber.interest)
        group = index.get(key)
        if group is not None and subscriber in group:
            group.discard(subscriber)
            if not group:
                del index[key]
            self._count -= 1
            SUBSCRIBERS.labels(subscriber.kind).dec()
        if subscriber.state is SubscriberState.LIVE:
            subscriber.state = SubscriberState.CLOSED

    def publish(self, events: Iterable[JobEvent], position: int) -> None:
        """Called on the loop with a batch in id order; each subscriber gets its events in that order."""
        batch = list(events)
        PUBLISHED.inc(sum(1 for event in batch if event.id is not None))
        for event in batch:
            for subscriber in (*self._by_job.get(event.job_id, ()), *self._by_tenant.get(event.tenant, ())):
                if subscriber.state is SubscriberState.LIVE and subscriber.interest.matches(event) \
                        and not subscriber.offer(event):
                    DROPPED.inc()
                    log.info("dropped a subscriber of tenant %s that fell %d events behind",
                             subscriber.interest.tenant, self.buffer, extra={"action": "events_subscriber_dropped"})
                    self.unsubscribe(subscriber)
        self.position = max(self.position, position)

    @property
    def count(self) -> int:
        return self._count

