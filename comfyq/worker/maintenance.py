"""Background ticks on an apscheduler scheduler: heartbeats renew leases and carry cancel requests to the
running attempt; rescue, expiry and declaring silent workers dead keep the queue and the workers table correct
without n8n or any outside cron; the transport's own ticks (Redis: moving due delayed messages, reconciling lost
ones) run here too."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from apscheduler.schedulers.background import BackgroundScheduler

from comfyq.callback_outbox import CallbackOutbox
from comfyq.db import Database
from comfyq.errors import ComfyqError, DatabaseUnavailable
from comfyq.jobs import JobQueue
from comfyq.settings import DEAD_AFTER_SECONDS
from comfyq.worker.attempt import Attempt
from comfyq.worker.callbacks import CallbackSender
from comfyq.worker.health import DATABASE, DependencyHealth
from comfyq.workers_registry import WorkerRegistry, declare_dead_workers

log = logging.getLogger(__name__)

CALLBACK_TICK_SECONDS = 1.0
CALLBACK_BATCH = 50
CALLBACK_RECLAIM_SECONDS = 600  # a sender gone for this long (crashed mid-delivery) is replaced
UNSIGNED_WARNING_SECONDS = 600  # how often tenants whose callbacks wait for a signing secret are named


class Maintenance:
    """Owns the scheduler thread; the pipeline tells it which attempts hold leases."""

    def __init__(self, db: Database, queue: JobQueue, worker_id: str, *, heartbeat_seconds: float,
                 rescue_seconds: float, dead_after_seconds: float = DEAD_AFTER_SECONDS,
                 on_flag: Callable[[], None] = lambda: None, callbacks: CallbackSender | None = None,
                 health: DependencyHealth | None = None, registry: WorkerRegistry | None = None) -> None:
        self.db = db
        self.registry = registry or WorkerRegistry(db, worker_id)
        self.dead_after_seconds = dead_after_seconds
        self.outbox = CallbackOutbox(db)
        self.health = health
        self.queue = queue
        self.worker_id = worker_id
        self.status = "running"
        self.on_flag = on_flag
        self.callbacks = callbacks
        self._next_unsigned_warning = 0.0
        self._held: dict[int, Attempt] = {}
        self._lock = threading.Lock()
        self.scheduler = BackgroundScheduler(daemon=True, job_defaults={"coalesce": True, "max_instances": 1,
                                                                        "misfire_grace_time": None})
        self.scheduler.add_job(self.heartbeat, "interval", seconds=heartbeat_seconds, id="heartbeat")
        self.scheduler.add_job(self.rescue, "interval", seconds=rescue_seconds, id="rescue")
        if callbacks is not None:
            self.scheduler.add_job(self.deliver_callbacks, "interval", seconds=CALLBACK_TICK_SECONDS,
                                   id="callbacks")
        for tick in queue.transport.ticks(db):  # Redis: RQ's scheduler for delayed messages, the reconciler
            self.scheduler.add_job(self._guarded(tick.name, tick.run), "interval", seconds=tick.seconds,
                                   id=tick.name)

    @staticmethod
    def _guarded(name: str, run: Callable[[], object]) -> Callable[[], None]:
        def tick() -> None:
            try:
                run()
            except Exception:  # a failed tick is logged; the next one tries again
                log.exception("%s tick failed", name, extra={"action": name})
        return tick

    def start(self) -> None:
        self.scheduler.start()

    def heartbeat_soon(self) -> None:
        """Renew leases now rather than at the next interval (the database just came back)."""
        try:
            self.scheduler.modify_job("heartbeat", next_run_time=datetime.now(self.scheduler.timezone))
        except Exception:  # the scheduler is shutting down: the next start renews anyway
            log.debug("could not bring the heartbeat forward", exc_info=True)

    def shutdown(self, *, wait: bool = True) -> None:
        """wait=False on a cold shutdown: a tick blocked on a hung database must not hold the exit."""
        self.scheduler.shutdown(wait=wait)

    def track(self, attempt: Attempt) -> None:
        with self._lock:
            self._held[attempt.job.id] = attempt

    def untrack(self, attempt: Attempt) -> None:
        with self._lock:
            if self._held.get(attempt.job.id) is attempt:
                del self._held[attempt.job.id]

    def flag_cancel(self, job_id: int) -> None:
        """A cancel heard through NOTIFY: raise the flag of the attempt we hold for that job, once the database
        confirms the job's cancel flag. A NOTIFY is only a hint: any role that can connect may send one (no
        privilege covers NOTIFY), so acting on the payload alone would let anyone stop any job."""
        with self._lock:
            attempt = self._held.get(job_id)
        if attempt is None or attempt.cancel_requested.is_set():
            return
        try:
            held = self.queue.renew(self.worker_id, [attempt.lease])
        except ComfyqError as exc:  # the heartbeat reads the same flag on its next round
            log.debug("job %s: cancel not confirmed yet: %s", job_id, exc)
            return
        if not held.get(job_id):
            log.warning("job %s: a cancel notification the database does not confirm; ignored", job_id,
                        extra={"action": "cancel_unconfirmed", "job_id": job_id})
            return
        attempt.cancel_requested.set()
        log.info("job %s: cancel requested", job_id, extra={"action": "cancel_heard", "job_id": job_id})
        self.on_flag()

    def held(self) -> list[Attempt]:
        with self._lock:
            return list(self._held.values())

    def heartbeat(self) -> None:
        """Mark the worker alive and renew every held lease (running, prefetched, being recorded); raise
        an attempt's flags when its job was canceled or its lease was lost."""
        attempts = self.held()
        down = self.health.down_names() if self.health is not None else []
        try:
            self.registry.heartbeat(self.status, down)
            if attempts:
                held = self.queue.renew(self.worker_id, [a.lease for a in attempts])
        except DatabaseUnavailable as exc:
            if self.health is not None:
                self.health.down(DATABASE, exc)
            log.warning("heartbeat failed: %s", exc, extra={"action": "heartbeat"})
            return
        except ComfyqError as exc:
            log.warning("heartbeat failed: %s", exc, extra={"action": "heartbeat"})
            return
        if self.health is not None:
            self.health.up(DATABASE)
        if not attempts:
            return
        flagged = False
        for attempt in attempts:
            if attempt.job.id not in held:
                if not attempt.lease_lost.is_set():
                    attempt.lease_lost.set()
                    flagged = True
            elif held[attempt.job.id] and not attempt.cancel_requested.is_set():
                attempt.cancel_requested.set()
                flagged = True
        if flagged:
            self.on_flag()

    def rescue(self) -> None:
        """Declare silent workers dead, requeue jobs whose leases expired and expire queued jobs past their
        deadline."""
        try:
            declare_dead_workers(self.db, self.dead_after_seconds, declared_by=self.worker_id)
            self.queue.rescue_expired()
            expired = self.queue.expire_overdue()
            if expired:
                log.info("expired %d jobs past their deadline", len(expired), extra={"action": "expire"})
        except ComfyqError as exc:
            log.warning("rescue tick failed: %s", exc, extra={"action": "rescue"})

    def deliver_callbacks(self) -> None:
        """Hand due completion callbacks (the outbox in job_queue) to the sender's threads."""
        if self.callbacks is None:
            return
        try:
            rows = self.outbox.claim_due(reclaim_seconds=CALLBACK_RECLAIM_SECONDS, limit=CALLBACK_BATCH)
        except ComfyqError as exc:
            log.warning("callback tick failed: %s", exc, extra={"action": "callbacks"})
            return
        for row in rows:
            self.callbacks.notify(row)
        self._warn_unsigned()

    def _warn_unsigned(self) -> None:
        """Now and then, name the tenants whose callbacks wait because they have no active signing secret: they
        are never sent unsigned, and nothing else would tell the operator."""
        if time.monotonic() < self._next_unsigned_warning:
            return
        self._next_unsigned_warning = time.monotonic() + UNSIGNED_WARNING_SECONDS
        try:
            waiting = self.outbox.waiting_for_secret()
        except ComfyqError as exc:  # only a warning lost; the next one is due in UNSIGNED_WARNING_SECONDS
            log.warning("callback tick failed: %s", exc, extra={"action": "callbacks"})
            return
        for row in waiting:
            log.warning("%d callbacks of tenant %s wait: the tenant has no active callback secret (create one with "
                        "`comfyq tenant callback-secret create %s`)", row["waiting"], row["tenant"], row["tenant"],
                        extra={"action": "callback_no_secret"})
