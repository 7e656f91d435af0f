"""The worker: registers itself, runs the pipeline (claim through the queue's transport: SKIP LOCKED, or a Redis
message claimed by id; keep ComfyUI's queue fed; sleep on LISTEN, or on the Redis bands, with a poll fallback
when idle) and stops gracefully: the first signal lets the running job finish and
hands prefetched ones back; the second interrupts and hands back everything at once."""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import threading
import time
import uuid
from types import FrameType
from typing import Any

from comfyq_worker.attempt import Attempt
from comfyq_worker.callbacks import CallbackSender
from comfyq_worker.comfy_client import ComfyClient
from comfyq_worker.event_stream import EventStream
from comfyq_worker.finisher import Finisher
from comfyq_worker.input_images import localize_images
from comfyq_worker.maintenance import Maintenance
from comfyq_worker.metrics import WorkerMetrics
from comfyq_worker.object_info_publisher import ObjectInfoPublisher
from comfyq_worker.pipeline import Pipeline

from comfyq.db import Database
from comfyq.errors import ComfyqError, DatabaseUnavailable
from comfyq.jobs import JobQueue
from comfyq.netguard import AddressGuard
from comfyq.settings import Settings
from comfyq.storage import build_storage
from comfyq.transport import Waiter, build_transport

log = logging.getLogger(__name__)


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.worker_id = settings.worker_id or default_worker_id()
        self.queue = JobQueue(db, lease_seconds=settings.lease_seconds,
                              transport=build_transport(settings, owner=self.worker_id))
        client_id = f"comfyq-{self.worker_id}"

        def comfy() -> ComfyClient:  # one per thread: requests sessions are not shared across threads
            return ComfyClient(settings.comfyui_url, client_id=client_id,
                               connect_timeout=settings.comfyui_connect_timeout,
                               request_timeout=settings.comfyui_request_timeout)

        self.metrics = WorkerMetrics(self.worker_id)
        guard = AddressGuard(settings.url_allowlist)
        self.callbacks = CallbackSender(db, guard, settings.callback_secret, max_tries=settings.callback_max_tries,
                                        timeout=settings.callback_timeout_seconds)
        self.maintenance = Maintenance(db, self.queue, self.worker_id, heartbeat_seconds=settings.heartbeat_seconds,
                                       rescue_seconds=settings.rescue_interval_seconds, on_flag=self._kick,
                                       callbacks=self.callbacks)
        self.finisher = Finisher(settings, self.queue, comfy(), build_storage(settings), self._recorded,
                                 metrics=self.metrics, on_terminal=self._notify_terminal, on_idle=self._kick)
        self.stream = EventStream(settings.comfyui_url, client_id, connect_timeout=settings.comfyui_connect_timeout,
                                  on_drop=self._on_socket_drop)
        pipeline_comfy = comfy()

        def localize(graph: dict[str, Any]) -> dict[str, Any]:
            return localize_images(graph, pipeline_comfy, guard, max_bytes=settings.input_max_bytes,
                                   timeout=settings.input_timeout_seconds)

        self.pipeline = Pipeline(settings, self.queue, pipeline_comfy, self.stream, self.finisher, self.worker_id,
                                 track=self.maintenance.track, untrack=self.maintenance.untrack, prepare=localize)
        self.stopping = False
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        self.jobs_run = 0
        self.max_jobs: int | None = None
        self._claim_soon = threading.Event()

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
        self.pipeline.request_stop(force=False)
        self._kick()

    def request_force_stop(self) -> None:
        self.stopping = True
        self.pipeline.request_stop(force=True)
        self._kick()

    def _kick(self) -> None:
        self.pipeline.kick.set()
        try:
            os.write(self._wake_write, b"x")
        except BlockingIOError:
            pass

    def _on_socket_drop(self) -> None:
        self.pipeline.on_socket_drop()
        self._kick()

    def _notify_terminal(self, job_id: int) -> None:
        """A job reached a final state here: deliver its callback now rather than at the next tick."""
        self.maintenance.deliver_callbacks()

    def _recorded(self, attempt: Attempt, status: str) -> None:
        """Finisher callback (its thread): the attempt is written; its lease no longer needs renewing."""
        self.maintenance.untrack(attempt)
        if status in ("succeeded", "failed", "canceled"):
            self.jobs_run += 1
        self._claim_soon.set()
        self._kick()

    # Loop -------------------------------------------------------------------------------------------
    def _may_claim(self) -> bool:
        if self.max_jobs is None:
            return True
        return self.jobs_run + len(self.pipeline.active) + self.finisher.pending < self.max_jobs

    def run(self, *, burst: bool = False, max_jobs: int | None = None) -> int:
        """Work until stopped; burst mode returns when no job is eligible. Returns the number of jobs run."""
        self.max_jobs = max_jobs
        self.db.execute("register_worker", {"id": self.worker_id, "host": socket.gethostname(),
                                            "pid": os.getpid(), "comfyui_url": self.settings.comfyui_url})
        self.maintenance.start()
        publisher = ObjectInfoPublisher.from_settings(self.settings, self.db, self.worker_id).start()
        if self.settings.metrics_port is not None:
            self.metrics.serve(self.settings.metrics_port)
        waiter = self.queue.transport.waiter(self.db)
        log.info("worker %s started against %s (prefetch %d, %s transport)", self.worker_id,
                 self.settings.comfyui_url, self.settings.prefetch_depth, self.queue.transport.name,
                 extra={"action": "worker_start"})
        try:
            self._loop(waiter, burst)
        finally:
            publisher.stop()
            self.finisher.close()
            self.callbacks.close(timeout=10)
            self.stream.close()
            waiter.close()
            self.maintenance.shutdown()
            self.queue.transport.close()
            try:
                self.db.execute("worker_stopped", {"id": self.worker_id})
            except ComfyqError as exc:
                log.warning("could not mark worker stopped: %s", exc)
            log.info("worker %s stopped after %d jobs", self.worker_id, self.jobs_run,
                     extra={"action": "worker_stop"})
            summary = self.queue.transport.summary()
            if summary:
                log.info("%s transport: %s", self.queue.transport.name, summary, extra={"action": "transport"})
        return self.jobs_run

    def _loop(self, waiter: Waiter, burst: bool) -> None:
        """Claim only when there is room in the pipeline and a reason to expect a job (a NOTIFY or a Redis
        message, a finished attempt, a delayed job coming due, or the poll interval), so a busy worker does not
        hammer the queue."""
        pipeline = self.pipeline
        next_claim = 0.0
        while True:
            now = time.monotonic()
            if self._claim_soon.is_set():
                self._claim_soon.clear()
                next_claim = 0.0
            if not self.stopping and pipeline.has_room and self._may_claim() and now >= next_claim:
                try:
                    pipeline.fill(self._may_claim)
                except DatabaseUnavailable as exc:
                    log.warning("database unavailable, retrying: %s", exc, extra={"action": "claim"})
                    self._sleep(min(5.0, self.settings.poll_interval_seconds))
                    continue
                if pipeline.has_room:  # nothing eligible right now
                    next_claim = now + self._idle_timeout()
            if not pipeline.idle:
                pipeline.wait()
                pipeline.supervise()
                if pipeline.has_room and waiter.wait(0):
                    next_claim = 0.0
                continue
            if self.stopping or burst or (self.max_jobs is not None and not self._may_claim()):
                if burst and not self.stopping and self._may_claim() and self.queue.transport.request_poll():
                    next_claim = 0.0  # the last claim did not ask Postgres: exit only once it has said "none"
                    continue
                return
            try:
                if waiter.wait(max(0.0, next_claim - time.monotonic()), wake_fds=[self._wake_read]):
                    next_claim = 0.0
            except DatabaseUnavailable as exc:
                log.warning("LISTEN connection lost: %s", exc, extra={"action": "listen"})
                self._sleep(min(5.0, self.settings.poll_interval_seconds))
            self._drain_wake()

    def _idle_timeout(self) -> float:
        """Sleep until the next delayed job is due, at most the poll interval: a retry waits its backoff,
        not its backoff plus a poll period. NOTIFY ends the sleep earlier for new jobs."""
        due = self.queue.seconds_until_next_run()
        if due is None:
            return self.settings.poll_interval_seconds
        return min(self.settings.poll_interval_seconds, due + 0.005)

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
