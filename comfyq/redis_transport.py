"""QUEUE_BACKEND=redis: job ids travel through RQ queues, one per priority band; Postgres stays the system of record.

Publishing: after a job's row is committed (submit, retry, rescue, release, API retry) its id is enqueued with
RQ under the message id "<prefix>-<job id>-<attempts>"; a job due later goes to RQ's scheduled registry and the
workers run RQ's scheduler to move it when it is due.

Consuming: a worker pops ids like RQ's `Queue.dequeue_any` (highest band first, FIFO inside a band; an idle
worker blocks in dequeue_any itself) without running the RQ function, and offers its id: JobQueue claims that one
row with claim_job_by_id, the same conditional update as claim_job. A duplicate message, or one for a job that was
canceled, claimed elsewhere or is not due, claims nothing.

Safety nets: the reconciler (a worker tick, one worker at a time) re-enqueues queued, due rows that have no
message (Redis flushed, restarted without persistence, a publish that failed). While Redis cannot be reached the
worker claims from Postgres (SKIP LOCKED) and sleeps on LISTEN, exactly as QUEUE_BACKEND=postgres; it also polls
Postgres once per poll interval when idle, so jobs queued under the other backend are found at once.

A hung Redis (stopped, swapping, a dead network path) counts as unreachable: every call gives up after
dependency_timeout_seconds (connect and read, no client-side retries), and after a failure the process leaves
Redis alone for redis_retry_seconds, then lets one caller (one thread) probe it. So a hang costs at most one
timeout per retry period per process instead of stalling every call.
"""

from __future__ import annotations

import logging
import math
import select
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from rq import Queue
from rq.exceptions import DequeueTimeout, NoSuchJobError
from rq.job import Job
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer

from comfyq.db import Database, Listener
from comfyq.errors import DatabaseUnavailable
from comfyq.transport import ASK_POSTGRES, Message, Offers, Tick, Transport

if TYPE_CHECKING:
    from comfyq.settings import Settings

log = logging.getLogger(__name__)

DELIVER = "comfyq.redis_transport.deliver"
WAIT_SLICE_SECONDS = 1.0  # an idle BLPOP is cut in slices so a signal is noticed within this time
HEALTH_CHECK_SECONDS = 15  # a pooled connection idle this long is PINGed before use (within the same timeout)
MAX_MESSAGES_PER_CLAIM = 100  # stale messages dropped in one claim call before giving the loop back
RECONCILE_BATCH = 1000
SCHEDULER_LOCK_REFRESH_SECONDS = 15.0
# RQ's non-blocking Queue.lpop (the first non-empty key, in order) in one round trip.
LPOP_FIRST = """
for _, key in ipairs(KEYS) do
    local id = redis.call('LPOP', key)
    if id then return {key, id} end
end
return false
"""


def deliver(job_id: int) -> None:
    """The function every comfyq message names, so RQ's own tools (rq info, dashboards) show what a message is.
    comfyq workers never run it: they pop the id and claim the job in Postgres. An `rq worker` pointed at these
    queues by mistake runs this no-op; the row stays queued and the reconciler publishes it again."""
    log.warning("job %s: an rq worker consumed a comfyq message; comfyq workers run the jobs", job_id)


class Bands:
    """Priority bands from their floors, highest first: floors (100, 0) give >=100, 0..99 and <0."""

    def __init__(self, prefix: str, floors: Sequence[int]) -> None:
        if not floors:
            raise ValueError("at least one band floor is needed")
        self.floors = tuple(floors)
        self.names = [f"{prefix}.ge{floor}" for floor in self.floors] + [f"{prefix}.lt{self.floors[-1]}"]

    def rank(self, priority: int) -> int:
        """0 for the highest band."""
        for index, floor in enumerate(self.floors):
            if priority >= floor:
                return index
        return len(self.floors)

    def name_for(self, priority: int) -> str:
        return self.names[self.rank(priority)]


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def connect(url: str, timeout: float) -> redis.Redis:
    """A client whose every call gives up after `timeout`, connecting and reading alike. redis-py's own retries are
    off: they would turn one hung call into a dozen (about 14 s at a 1 s timeout); the transport's retry period is
    the only retry."""
    return redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout,
                                retry=Retry(NoBackoff(), 0), health_check_interval=HEALTH_CHECK_SECONDS)


def wait_slice(socket_timeout: float | None) -> float:
    """How long one idle BLPOP may block: shorter than the socket timeout with room to spare, or a quiet queue
    would look like a hung Redis."""
    if not socket_timeout:
        return WAIT_SLICE_SECONDS
    return min(WAIT_SLICE_SECONDS, socket_timeout / 2)


class RedisTransport(Transport):
    name = "redis"
    publishes = True

    def __init__(self, connection: redis.Redis, *, prefix: str = "comfyq", floors: Sequence[int] = (100, 10, 1, 0,
                 -9, -99), retry_seconds: float = 5.0, reconcile_seconds: float = 5.0,
                 reconcile_grace_seconds: float = 5.0, scheduler_seconds: float = 0.5,
                 owner: str | None = None) -> None:
        self.redis = connection
        self.prefix = prefix
        self.bands = Bands(prefix, floors)
        self.queues = [Queue(name, connection=connection, serializer=JSONSerializer) for name in self.bands.names]
        self._by_name = {queue.name: queue for queue in self.queues}
        self._by_key = {queue.key: queue for queue in self.queues}
        self._lpop_first = connection.register_script(LPOP_FIRST)
        self.retry_seconds = retry_seconds
        self.reconcile_seconds = reconcile_seconds
        self.reconcile_grace_seconds = reconcile_grace_seconds
        self.scheduler_seconds = scheduler_seconds
        self.owner = owner or uuid.uuid4().hex
        self.counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        self._pending: list[tuple[Job, Queue]] = []  # popped by an idle wait, claimed by the next claim()
        self.wait_slice = wait_slice(connection.connection_pool.connection_kwargs.get("socket_timeout"))
        self._health_lock = threading.Lock()
        self._health_listeners: list[Callable[[bool], None]] = []
        self._notify_lock = threading.RLock()  # RLock: a listener may call back into the transport
        self._told_healthy = True  # what the listeners heard last
        self._down = False
        self._down_at = 0.0  # monotonic time the current outage was noticed
        self._retry_at = 0.0  # while down: when one caller may try Redis again
        self._poll_due = True  # the next claim that finds Redis empty also asks Postgres
        self._polled_empty = False  # the last claim asked Postgres and found nothing
        self._scheduler: RQScheduler | None = None
        self._locks_at = -math.inf

    @classmethod
    def from_settings(cls, settings: Settings, *, owner: str | None = None) -> RedisTransport:
        assert settings.redis_url is not None
        connection = connect(settings.redis_url, settings.dependency_timeout_seconds)
        return cls(connection, prefix=settings.redis_prefix, floors=settings.band_floors,
                   retry_seconds=settings.redis_retry_seconds,
                   reconcile_seconds=settings.reconcile_interval_seconds,
                   reconcile_grace_seconds=settings.reconcile_grace_seconds,
                   scheduler_seconds=settings.redis_scheduler_seconds, owner=owner)

    # Health ---------------------------------------------------------------------------------------------
    def _count(self, what: str, n: int = 1) -> None:
        with self._counts_lock:
            self.counts[what] += n

    @property
    def healthy(self) -> bool:
        return not self._down

    def on_health_change(self, callback: Callable[[bool], None]) -> None:
        self._health_listeners.append(callback)

    def redis_ok(self) -> bool:
        """True when the caller may use Redis now. While Redis is down: False until the retry period is over,
        then True for exactly one caller (the probe; the others stay on Postgres for another period), so a hung
        Redis blocks one call per period and process, not every thread's."""
        if not self._down:
            return True
        with self._health_lock:
            now = time.monotonic()
            if not self._down or now >= self._retry_at:
                self._retry_at = now + self.retry_seconds
                return True
            return False

    def _mark_down(self, exc: Exception) -> None:
        """A Redis call failed or timed out: Postgres only for the retry period. Logged once per outage."""
        with self._health_lock:
            now = time.monotonic()
            self._retry_at = now + self.retry_seconds
            first = not self._down
            if first:
                self._down = True
                self._down_at = now
        if first:
            log.warning("redis unavailable: %s: %s; publishing and claiming through Postgres, next try in %gs",
                        type(exc).__name__, exc, self.retry_seconds, extra={"action": "redis_unavailable"})
            self._notify()

    def _mark_up(self, started: float) -> None:
        """A Redis call that began at `started` (monotonic) succeeded. One that began before the outage was
        noticed proves nothing about Redis now, so it does not end the outage."""
        if not self._down:
            return
        with self._health_lock:
            if not self._down or started < self._down_at:
                return
            self._down = False
            lasted = time.monotonic() - self._down_at
        self._poll_due = True  # what was queued meanwhile may have no message yet
        log.info("redis reachable again after %.1fs", lasted, extra={"action": "redis_available"})
        self._notify()

    def _notify(self) -> None:
        """Tell the listeners the current state when it differs from what they heard last: two threads flipping
        it at once still reach them in order, each change once."""
        with self._notify_lock:
            healthy = not self._down
            if healthy == self._told_healthy:
                return
            self._told_healthy = healthy
            for callback in list(self._health_listeners):
                try:
                    callback(healthy)
                except Exception:  # a listener's bug must not break claiming
                    log.exception("redis health listener failed")

    def message_id(self, job_id: int, attempts: int) -> str:
        return f"{self.prefix}-{job_id}-{attempts}"

    # Publishing -----------------------------------------------------------------------------------------
    def publish(self, messages: Sequence[Message]) -> None:
        if not messages or not self.redis_ok():
            return
        now = datetime.now(UTC)
        started = time.monotonic()
        immediate: dict[str, list[Any]] = {}
        try:
            with self.redis.pipeline() as pipe:
                for message in messages:
                    queue = self._by_name[self.bands.name_for(message.priority)]
                    message_id = self.message_id(message.job_id, message.attempts)
                    if message.run_at is not None and _utc(message.run_at) > now:
                        # RQ's scheduler works in whole seconds: round up, so a message is never early.
                        due = datetime.fromtimestamp(math.ceil(_utc(message.run_at).timestamp()), UTC)
                        job = queue.create_job(DELIVER, args=(message.job_id,), job_id=message_id)
                        queue.schedule_job(job, due, pipeline=pipe)
                    else:
                        immediate.setdefault(queue.name, []).append(Queue.prepare_data(
                            DELIVER, args=(message.job_id,), job_id=message_id))
                for name, datas in immediate.items():
                    self._by_name[name].enqueue_many(datas, pipeline=pipe)
                pipe.execute()
        except RedisError as exc:
            self._mark_down(exc)
            return
        self._mark_up(started)
        self._count("published", len(messages))

    # Consuming ------------------------------------------------------------------------------------------
    def _pop(self, timeout: float | None) -> tuple[Job, Queue] | None:
        """The next message, highest band first. A timeout blocks in RQ's `Queue.dequeue_any` (one BLPOP over
        every band). Without one, RQ pops band after band (a round trip per empty band); the same pop runs here
        as one script, then the message is read with RQ's Job.fetch exactly as dequeue_any does."""
        if timeout is not None:
            try:
                return Queue.dequeue_any(self.queues, timeout, connection=self.redis,  # type: ignore[arg-type]
                                         serializer=JSONSerializer)  # RQ types the timeout int; BLPOP takes floats
            except DequeueTimeout:
                return None
        while True:
            popped = self._lpop_first(keys=[queue.key for queue in self.queues])
            if popped is None:
                return None
            key, message_id = (value.decode() if isinstance(value, bytes) else str(value) for value in popped)
            try:
                message = Job.fetch(message_id, connection=self.redis, serializer=JSONSerializer)
            except NoSuchJobError:
                continue  # another copy of this id was consumed already (RQ skips these too)
            return message, self._by_key[key]

    def has_messages(self) -> bool:
        started = time.monotonic()
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for queue in self.queues:
                    pipe.llen(queue.key)
                lengths = pipe.execute()
        except RedisError as exc:
            self._mark_down(exc)
            return False
        self._mark_up(started)
        return any(lengths)

    def offers(self, db: Database) -> Offers:
        """The ids of the messages popped, highest band first (each message consumed once its claim is known);
        ASK_POSTGRES when Redis is away, or once when a poll came due and Redis had nothing."""
        if self.redis_ok():
            started = time.monotonic()
            try:
                for _ in range(MAX_MESSAGES_PER_CLAIM):
                    item = self._pending.pop(0) if self._pending else self._pop(None)
                    if item is None:
                        break
                    message, band = item
                    job_id = self._job_id(message, band)
                    if job_id is None:
                        continue
                    try:
                        claimed = yield job_id
                    except DatabaseUnavailable:
                        try:
                            band.push_job_id(message.id, at_front=True)  # not consumed: another worker takes it
                        except RedisError as exc:
                            self._mark_down(exc)  # the reconciler publishes it again
                        raise
                    self._consumed(db, message, job_id, claimed)
                    if claimed:
                        self._mark_up(started)
                        self._poll_due = False
                        self._polled_empty = False
                        return
                else:
                    self._polled_empty = False
                    return  # a run of stale messages: the loop calls again
                self._mark_up(started)
            except RedisError as exc:
                self._mark_down(exc)
        if self.redis_ok() and not self._poll_due:
            self._polled_empty = False
            return
        claimed = yield ASK_POSTGRES  # the safety net: Redis away, or an idle poll came due
        if not claimed:
            self._poll_due = False
            self._polled_empty = True
        else:
            self._polled_empty = False
            self._count("postgres_claims")

    def _job_id(self, message: Job, band: Queue) -> int | None:
        """The job a message names; a message we cannot read is dropped, never fatal."""
        try:
            return int(message.args[0])
        except Exception:
            log.warning("dropping a malformed message %s from %s", message.id, band.name)
            self.redis.delete(message.key)
            return None

    def _consumed(self, db: Database, message: Job, job_id: int, claimed: bool) -> None:
        """The claim of a message's job is known: delete the message, and when it claimed nothing, schedule it
        again if its job is queued but not yet due (else drop it)."""
        try:
            self.redis.delete(message.key)  # consumed: another copy of the same id still in a list is skipped by RQ
        except RedisError as exc:
            if not claimed:
                raise
            # The claim is committed in Postgres: it must reach the worker, or the job would sit claimed by
            # nobody until its lease ran out. The message left behind claims nothing if it is delivered again.
            self._mark_down(exc)
            log.info("claimed job %s but could not delete its message (delivered again, it claims nothing)",
                     job_id, extra={"action": "redis_message_left", "job_id": job_id})
        if claimed:
            self._count("redis_claims")
            return
        state = db.fetch_one("job_claim_state", {"id": job_id})
        if state is not None and state["status"] == "queued" and state["not_due"]:
            self.publish([Message(job_id, state["priority"], state["attempts"], state["run_at"])])
            self._count("rescheduled")
        else:
            self._count("dropped")
            log.debug("message for job %s claimed nothing (%s)", job_id, state["status"] if state else "gone",
                      extra={"action": "message_dropped", "job_id": job_id})

    def request_poll(self) -> bool:
        if self._polled_empty:
            return False
        self._poll_due = True
        return True

    def waiter(self, db: Database) -> RedisWaiter:
        return RedisWaiter(self, db.listener("listen_jobs"))

    def give_back(self) -> None:
        """Messages popped but not claimed go back to the front of their band. While Redis is down they are
        dropped without trying (their jobs are still queued in Postgres; the reconciler publishes them)."""
        if self._down:
            self._pending.clear()
            return
        while self._pending:
            message, band = self._pending.pop()
            try:
                band.push_job_id(message.id, at_front=True)
            except RedisError as exc:
                self._mark_down(exc)
                self._pending.clear()
                log.info("could not hand message %s back (the reconciler will)", message.id)
                return

    # Maintenance ----------------------------------------------------------------------------------------
    def ticks(self, db: Database) -> list[Tick]:
        return [Tick("redis_scheduler", self.scheduler_seconds, self.move_due_messages),
                Tick("reconcile", self.reconcile_seconds, lambda: self.reconcile(db))]

    def move_due_messages(self) -> None:
        """RQ's scheduler, as `rq worker --with-scheduler` runs it: whichever worker holds a band's scheduler
        lock moves its due delayed messages into the band."""
        started = time.monotonic()
        refresh = started - self._locks_at >= SCHEDULER_LOCK_REFRESH_SECONDS
        if self._scheduler is not None and not refresh and not self._scheduler.acquired_locks:
            return  # nothing to do until the next lock refresh; checked first so no probe is wasted on it
        if not self.redis_ok():
            return
        try:
            if self._scheduler is None:
                self._scheduler = RQScheduler(self.queues, self.redis, interval=max(1, math.ceil(
                    self.scheduler_seconds)), serializer=JSONSerializer, name=self.owner, logging_level="WARNING")
            if refresh:
                self._scheduler.acquire_locks()  # type: ignore[no-untyped-call]  # rq is untyped
                self._locks_at = started
            if self._scheduler.acquired_locks:
                self._scheduler.enqueue_scheduled_jobs()  # type: ignore[no-untyped-call]
        except RedisError as exc:
            self._mark_down(exc)
            return
        self._mark_up(started)

    def reconcile(self, db: Database) -> int:
        """Re-enqueue queued, due rows (head of the queue first) whose message is missing; one worker per tick.
        Returns how many were re-enqueued."""
        if not self.redis_ok():
            return 0
        started = time.monotonic()
        try:
            lock_ms = max(100, int(self.reconcile_seconds * 900))
            if not self.redis.set(f"{self.prefix}:reconciler", self.owner, nx=True, px=lock_ms):
                self._mark_up(started)
                return 0
            rows = db.fetch_all("reconcile_candidates", {"grace_seconds": self.reconcile_grace_seconds,
                                                         "limit": RECONCILE_BATCH})
            if not rows:
                return 0
            with self.redis.pipeline(transaction=False) as pipe:
                for row in rows:
                    pipe.exists(Job.key_for(self.message_id(row["id"], row["attempts"])))
                present = pipe.execute()
        except RedisError as exc:
            self._mark_down(exc)
            return 0
        except DatabaseUnavailable as exc:
            log.warning("reconcile tick failed: %s", exc, extra={"action": "reconcile"})
            return 0
        self._mark_up(started)
        missing = [Message(row["id"], row["priority"], row["attempts"]) for row, there in zip(rows, present)
                   if not there]
        if missing:
            self.publish(missing)
            self._count("reconciled", len(missing))
            log.info("re-enqueued %d queued jobs whose message was missing", len(missing),
                     extra={"action": "reconcile"})
        return len(missing)

    def summary(self) -> str:
        with self._counts_lock:
            counts = dict(self.counts)
        return ("claims from Redis messages {redis_claims}, from Postgres {postgres_claims}; messages dropped "
                "{dropped}, rescheduled {rescheduled}; published {published}, reconciled {reconciled}").format(
            **{key: counts.get(key, 0) for key in ("redis_claims", "postgres_claims", "dropped", "rescheduled",
                                                   "published", "reconciled")})

    def close(self) -> None:
        """Hands messages back and releases the scheduler locks, unless Redis is down: then the locks expire by
        themselves, and stopping does not wait for a hung Redis."""
        self.give_back()
        if self._scheduler is not None and not self._down:
            try:
                self._scheduler.release_locks()  # type: ignore[no-untyped-call]
            except RedisError as exc:
                self._mark_down(exc)
        self.redis.close()


class RedisWaiter:
    """An idle worker's sleep: BLPOP on the bands in slices (a signal ends it within a slice), the message kept
    for the next claim; while Redis is away, LISTEN on Postgres like the Postgres transport. A slice is shorter
    than the socket timeout (transport.wait_slice), so only a hung Redis makes one time out."""

    def __init__(self, transport: RedisTransport, listener: Listener) -> None:
        self.transport = transport
        self.listener = listener

    def wait(self, timeout: float, wake_fds: Sequence[int] = ()) -> bool:
        transport = self.transport
        if transport._pending:
            return True
        if not transport.redis_ok():
            return self.listener.wait(timeout, wake_fds)
        self.listener.close()  # back on Redis: an unread LISTEN connection would only pile up notifications
        if timeout <= 0:
            return transport.has_messages()
        deadline = time.monotonic() + timeout
        first = True  # the first slice may be the probe of a Redis that was down: it must reach Redis
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                transport._poll_due = True  # a poll interval passed without a message: ask Postgres once
                return False
            if wake_fds and select.select(list(wake_fds), [], [], 0)[0]:
                return False
            if not first and not transport.healthy:  # another thread (a publish, a tick) found Redis away
                return self.listener.wait(remaining, wake_fds)
            first = False
            started = time.monotonic()
            try:
                item = transport._pop(max(0.01, min(transport.wait_slice, remaining)))
            except RedisError as exc:
                transport._mark_down(exc)
                return self.listener.wait(max(0.0, deadline - time.monotonic()), wake_fds)
            transport._mark_up(started)
            if item is not None:
                transport._pending.append(item)
                return True

    def close(self) -> None:
        self.listener.close()
