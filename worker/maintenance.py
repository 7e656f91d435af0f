"""Background ticks on an apscheduler scheduler: heartbeats renew leases and carry cancel requests to the
running attempt; rescue and expiry keep the queue correct without n8n or any outside cron."""

from __future__ import annotations

import logging
import threading

from apscheduler.schedulers.background import BackgroundScheduler
from comfyq_worker.job_runner import AttemptControl

from comfyq.db import Database
from comfyq.errors import ComfyqError
from comfyq.jobs import JobQueue

log = logging.getLogger(__name__)


class Maintenance:
    """Owns the scheduler thread; the worker loop tells it which attempt is current."""

    def __init__(self, db: Database, queue: JobQueue, worker_id: str, *, heartbeat_seconds: float,
                 rescue_seconds: float) -> None:
        self.db = db
        self.queue = queue
        self.worker_id = worker_id
        self.status = "running"
        self._current: AttemptControl | None = None
        self._lock = threading.Lock()
        self.scheduler = BackgroundScheduler(daemon=True, job_defaults={"coalesce": True, "max_instances": 1,
                                                                        "misfire_grace_time": None})
        self.scheduler.add_job(self.heartbeat, "interval", seconds=heartbeat_seconds, id="heartbeat")
        self.scheduler.add_job(self.rescue, "interval", seconds=rescue_seconds, id="rescue")

    def start(self) -> None:
        self.scheduler.start()

    def shutdown(self) -> None:
        self.scheduler.shutdown(wait=True)

    def track(self, control: AttemptControl | None) -> None:
        with self._lock:
            self._current = control

    def heartbeat(self) -> None:
        """Mark the worker alive and renew the current lease; raise the attempt's flags on cancel or loss."""
        with self._lock:
            control = self._current
        try:
            self.db.execute("worker_heartbeat", {"id": self.worker_id, "status": self.status})
            if control is None:
                return
            held = self.queue.renew(self.worker_id, [control.lease])
        except ComfyqError as exc:
            log.warning("heartbeat failed: %s", exc, extra={"action": "heartbeat"})
            return
        if control.lease.job_id not in held:
            control.lease_lost.set()
        elif held[control.lease.job_id]:
            control.cancel_requested.set()

    def rescue(self) -> None:
        """Requeue jobs of dead workers and expire queued jobs past their deadline."""
        try:
            self.queue.rescue_expired()
            expired = self.queue.expire_overdue()
            if expired:
                log.info("expired %d jobs past their deadline", len(expired), extra={"action": "expire"})
        except ComfyqError as exc:
            log.warning("rescue tick failed: %s", exc, extra={"action": "rescue"})
