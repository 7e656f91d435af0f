"""The worker loop: claim with SKIP LOCKED, sleep on LISTEN with a poll fallback, run one job at a time,
and stop gracefully (first signal: finish the job; second: release it now)."""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import uuid
from types import FrameType

from comfyq_worker.comfy_client import ComfyClient
from comfyq_worker.job_runner import AttemptControl, JobRunner
from comfyq_worker.maintenance import Maintenance

from comfyq.db import Database
from comfyq.errors import ComfyqError, DatabaseUnavailable
from comfyq.jobs import JobQueue
from comfyq.settings import Settings
from comfyq.storage import build_storage

log = logging.getLogger(__name__)

def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.worker_id = settings.worker_id or default_worker_id()
        self.queue = JobQueue(db, lease_seconds=settings.lease_seconds)
        comfy = ComfyClient(settings.comfyui_url, client_id=f"comfyq-{self.worker_id}",
                            connect_timeout=settings.comfyui_connect_timeout,
                            request_timeout=settings.comfyui_request_timeout)
        self.runner = JobRunner(settings, self.queue, comfy, build_storage(settings.storage_backend,
                                                                           settings.storage_dir))
        self.maintenance = Maintenance(db, self.queue, self.worker_id,
                                       heartbeat_seconds=settings.heartbeat_seconds,
                                       rescue_seconds=settings.rescue_interval_seconds)
        self.stopping = False
        self._current: AttemptControl | None = None
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        self.jobs_run = 0

    # Signals ----------------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if not self.stopping:
            self.request_stop()
            log.info("signal %s: finishing the current job, then stopping (send again to release it now)",
                     signum, extra={"action": "warm_shutdown"})
        else:
            self.request_force_stop()
            log.info("signal %s: releasing the current job now", signum, extra={"action": "cold_shutdown"})

    def request_stop(self) -> None:
        self.stopping = True
        self.maintenance.status = "draining"
        try:
            os.write(self._wake_write, b"x")
        except BlockingIOError:
            pass

    def request_force_stop(self) -> None:
        self.request_stop()
        current = self._current
        if current is not None:
            current.force_stop.set()

    # Loop -------------------------------------------------------------------------------------------
    def run(self, *, burst: bool = False, max_jobs: int | None = None) -> int:
        """Work until stopped; burst mode returns when the queue is empty. Returns the number of jobs run."""
        self._register()
        self.maintenance.start()
        listener = self.db.listener("listen_jobs")
        log.info("worker %s started against %s", self.worker_id, self.settings.comfyui_url,
                 extra={"action": "worker_start"})
        try:
            while not self.stopping:
                if max_jobs is not None and self.jobs_run >= max_jobs:
                    break
                try:
                    job = self.queue.claim(self.worker_id)
                except DatabaseUnavailable as exc:
                    log.warning("database unavailable, retrying: %s", exc, extra={"action": "claim"})
                    self._sleep(min(5.0, self.settings.poll_interval_seconds))
                    continue
                if job is None:
                    if burst:
                        break
                    try:
                        listener.wait(self._idle_timeout(), wake_fds=[self._wake_read])
                    except DatabaseUnavailable as exc:
                        log.warning("LISTEN connection lost: %s", exc, extra={"action": "listen"})
                        self._sleep(min(5.0, self.settings.poll_interval_seconds))
                    continue
                control = AttemptControl(job.lease)
                self._current = control
                self.maintenance.track(control)
                try:
                    log.info("job %s claimed (attempt %s, priority %s)", job.id, job.attempt, job.priority,
                             extra={"action": "claimed", "job_id": job.id})
                    self.runner.run(job, control)
                finally:
                    self.maintenance.track(None)
                    self._current = None
                self.jobs_run += 1
        finally:
            listener.close()
            self.maintenance.shutdown()
            try:
                self.db.execute("worker_stopped", {"id": self.worker_id})
            except ComfyqError as exc:
                log.warning("could not mark worker stopped: %s", exc)
            log.info("worker %s stopped after %d jobs", self.worker_id, self.jobs_run,
                     extra={"action": "worker_stop"})
        return self.jobs_run

    def _idle_timeout(self) -> float:
        """Sleep until the next delayed job is due, at most the poll interval: a retry waits its backoff,
        not its backoff plus a poll period. NOTIFY ends the sleep earlier for new jobs."""
        due = self.queue.seconds_until_next_run()
        if due is None:
            return self.settings.poll_interval_seconds
        return min(self.settings.poll_interval_seconds, due + 0.005)

    def _register(self) -> None:
        self.db.execute("register_worker", {"id": self.worker_id, "host": socket.gethostname(),
                                            "pid": os.getpid(), "comfyui_url": self.settings.comfyui_url})

    def _sleep(self, seconds: float) -> None:
        """Sleep that a signal cuts short."""
        select.select([self._wake_read], [], [], seconds)
        self._drain_wake()

    def _drain_wake(self) -> None:
        os.set_blocking(self._wake_read, False)
        try:
            while os.read(self._wake_read, 64):
                pass
        except BlockingIOError:
            pass
        finally:
            os.set_blocking(self._wake_read, True)

