"""The worker: registers itself, runs the pipeline and sleeps in one place (LISTEN, or the Redis bands, plus a
wake-up pipe that the socket owner, the finisher, the heartbeat and signal handlers write to).

It never exits because a dependency is down: a failed claim, LISTEN or probe marks that dependency down, the
worker claims nothing until it is back, and it probes again with jittered backoff. Signals: the first lets the
running job finish and hands prefetched ones back; the second hands everything back and exits within
SHUTDOWN_DEADLINE_SECONDS whatever state the dependencies are in (jobs it could not hand back are rescued
when their leases expire)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from types import FrameType
from typing import Any

from comfyq.db import Database
from comfyq.errors import ComfyqError, DatabaseUnavailable
from comfyq.jobs import JobQueue
from comfyq.logs import without_log_context
from comfyq.netguard import AddressGuard
from comfyq.settings import Settings
from comfyq.storage import build_storage
from comfyq.transport import Waiter, build_transport
from comfyq.wake_pipe import WakePipe
from comfyq.worker.attempt import Attempt
from comfyq.worker.callbacks import CallbackSender, check_legacy_secret, store_legacy_secret
from comfyq.worker.cancel_listener import CancelListener
from comfyq.worker.comfy_client import ComfyClient
from comfyq.worker.comfy_socket import ComfySocket
from comfyq.worker.finisher import Finisher
from comfyq.worker.health import COMFYUI, DATABASE, REDIS, DependencyHealth
from comfyq.worker.input_images import localize_images
from comfyq.worker.maintenance import Maintenance
from comfyq.worker.metrics import WorkerMetrics
from comfyq.worker.object_info_publisher import ObjectInfoPublisher
from comfyq.worker.pipeline import TICK_SECONDS, Pipeline
from comfyq.worker.progress_writer import ProgressWriter
from comfyq.workers_registry import WorkerRegistry

log = logging.getLogger(__name__)

SHUTDOWN_DEADLINE_SECONDS = 4.5  # after the second signal; the brief promises an exit within 5 s


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.worker_id = settings.worker_id or default_worker_id()
        self.registry = WorkerRegistry(db, self.worker_id)
        self.queue = JobQueue(db, lease_seconds=settings.lease_seconds,
                              transport=build_transport(settings, owner=self.worker_id))
        self.wakeup = WakePipe()
        client_id = f"comfyq-{self.worker_id}"

        def comfy() -> ComfyClient:  # one per thread: requests sessions are not shared across threads
            timeout = settings.dependency_timeout_seconds
            return ComfyClient(settings.comfyui_url, client_id=client_id,
                               connect_timeout=min(settings.comfyui_connect_timeout, timeout), request_timeout=timeout)

        self.metrics = WorkerMetrics(self.worker_id)
        self.health = DependencyHealth(backoff_min=settings.outage_backoff_min_seconds,
                                       backoff_max=settings.outage_backoff_max_seconds,
                                       on_change=self._dependency_changed)
        guard = AddressGuard(settings.url_allowlist)
        check_legacy_secret(settings.callback_secret)  # a malformed one stops the worker here, not after a job
        self.callbacks = CallbackSender(db, guard, max_tries=settings.callback_max_tries,
                                        timeout=settings.callback_timeout_seconds)
        self.maintenance = Maintenance(db, self.queue, self.worker_id, heartbeat_seconds=settings.heartbeat_seconds,
                                       rescue_seconds=settings.rescue_interval_seconds,
                                       dead_after_seconds=settings.worker_dead_after_seconds, on_flag=self.wakeup.wake,
                                       callbacks=self.callbacks, health=self.health, registry=self.registry)
        self.finisher = Finisher(settings, self.queue, comfy(), build_storage(settings), self.health, self._recorded,
                                 metrics=self.metrics, on_terminal=self._notify_terminal, on_idle=self.wakeup.wake)
        self.socket = ComfySocket(settings.comfyui_url, client_id, connect_timeout=settings.comfyui_connect_timeout,
                                  on_event=self.wakeup.wake, on_reachable=self._socket_reachable)
        self.progress = ProgressWriter(self.queue, settings.progress_min_interval_seconds)
        self.cancels = CancelListener(self.queue, self.maintenance.flag_cancel) if settings.cancel_listen else None
        self.queue.transport.on_health_change(self._redis_changed)
        pipeline_comfy = comfy()

        def localize(graph: dict[str, Any]) -> dict[str, Any]:
            return localize_images(graph, pipeline_comfy, guard, max_bytes=settings.input_max_bytes,
                                   timeout=settings.input_timeout_seconds)

        self.pipeline = Pipeline(settings, self.queue, pipeline_comfy, self.socket, self.finisher, self.health,
                                 self.progress, self.worker_id, track=self.maintenance.track,
                                 untrack=self.maintenance.untrack, prepare=localize)
        self.stopping = False
        self.forced = False
        self.jobs_run = 0
        self.max_jobs: int | None = None
        self._claim_soon = threading.Event()
        self._claims_unknown = bool(settings.worker_id)  # a fixed id may hold rows of a crashed earlier run

    # Signals ----------------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        with without_log_context():
            self._signalled(signum)

    def _signalled(self, signum: int) -> None:
        if not self.stopping:
            self.request_stop()
            log.info("signal %s: finishing the current job, then stopping (send again to release it now)",
                     signum, extra={"action": "warm_shutdown"})
        else:
            self.request_force_stop()
            log.info("signal %s: releasing every job now", signum, extra={"action": "cold_shutdown"})

    def request_stop(self) -> None:
        self.stopping = True
        self.maintenance.status = "draining"
        self.pipeline.request_stop(force=False)
        self.wakeup.wake()

    def request_force_stop(self) -> None:
        """Hand everything back and exit; a watchdog guarantees the exit even if a call hangs meanwhile."""
        if self.forced:
            return
        self.stopping = self.forced = True
        self.pipeline.request_stop(force=True)
        self.finisher.abandon()
        watchdog = threading.Timer(SHUTDOWN_DEADLINE_SECONDS, self._exit_now)
        watchdog.daemon = True
        watchdog.start()
        self.wakeup.wake()

    def _exit_now(self) -> None:
        held = len(self.maintenance.held())
        log.error("shutdown deadline passed with %d jobs not handed back; exiting now (their leases expire and "
                  "they are rescued)", held, extra={"action": "shutdown_deadline"})
        logging.shutdown()
        os._exit(3)

    def _dependency_changed(self, name: str, up: bool) -> None:
        self.metrics.dependency_up.labels(name).set(1 if up else 0)
        if up and name == DATABASE:
            self.maintenance.heartbeat_soon()
        self._claim_soon.set()
        self.wakeup.wake()

    def _redis_changed(self, up: bool) -> None:
        """The Redis transport noticed Redis go or come back (it claims through Postgres meanwhile)."""
        if up:
            self.health.up(REDIS)
        else:
            self.health.down(REDIS, "Redis does not answer; claiming through Postgres")

    def _socket_reachable(self, ok: bool, error: str) -> None:
        """A refused WebSocket is evidence that ComfyUI is down; that it is back is for HTTP probes to say (a
        socket can connect while HTTP hangs)."""
        if not ok:
            self.health.down(COMFYUI, error)
        else:
            self.health.probe_soon(COMFYUI)
            self.wakeup.wake()

    def _notify_terminal(self, job_id: int) -> None:
        """A job reached a final state here: deliver its callback now rather than at the next tick."""
        self.maintenance.deliver_callbacks()

    def _recorded(self, attempt: Attempt, status: str) -> None:
        """Finisher callback (its thread): the attempt is written; its lease no longer needs renewing."""
        self.maintenance.untrack(attempt)
        if status in ("succeeded", "failed", "canceled"):
            self.jobs_run += 1
        self._claim_soon.set()
        self.wakeup.wake()

    # Loop -------------------------------------------------------------------------------------------
    def _may_claim(self) -> bool:
        if self.max_jobs is None:
            return True
        return self.jobs_run + len(self.pipeline.active) + self.finisher.pending < self.max_jobs

    def run(self, *, burst: bool = False, max_jobs: int | None = None) -> int:
        """Work until stopped; burst mode returns when no job is eligible. Returns the number of jobs run."""
        self.max_jobs = max_jobs
        self._register()
        self.maintenance.start()
        self.socket.start()
        self.progress.start()
        if self.cancels is not None:
            self.cancels.start()
        self.pipeline.check_comfyui()
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
            self._shut_down(waiter, publisher)
        return self.jobs_run

    def _register(self) -> None:
        """Register, waiting for the database if it is down at start (a worker started before Postgres)."""
        while not self.stopping:
            try:
                self.registry.register(host=socket.gethostname(), pid=os.getpid(),
                                       comfyui_url=self.settings.comfyui_url)
                if self.settings.callback_secret:
                    store_legacy_secret(self.db, self.settings.api_tenant, self.settings.callback_secret)
                self.health.up(DATABASE)
                return
            except DatabaseUnavailable as exc:
                self.health.down(DATABASE, exc)
                self.wakeup.sleep(self.health.seconds_to_next_probe() or 1.0)

    def _loop(self, waiter: Waiter, burst: bool) -> None:
        """Claim only when there is room in the pipeline, every dependency is up, and there is a reason to
        expect a job (a NOTIFY or a Redis message, a recorded attempt, a delayed job coming due, or the poll
        interval), so a busy worker does not hammer the queue."""
        pipeline = self.pipeline
        next_claim = 0.0
        while True:
            self.wakeup.drain()
            pipeline.step()
            self._probe_database()
            if self._claim_soon.is_set():
                self._claim_soon.clear()
                next_claim = 0.0
            now = time.monotonic()
            if self._may_fill() and now >= next_claim:
                try:
                    self._hand_back_unknown_claims()
                    pipeline.fill(self._may_claim)
                    self.health.up(DATABASE)
                except DatabaseUnavailable as exc:
                    self._claims_unknown = True  # the claim may have committed without its answer reaching us
                    self.health.down(DATABASE, exc)
                else:
                    if pipeline.has_room:  # nothing eligible right now
                        next_claim = now + self._idle_timeout()
            if self.forced:
                return
            if pipeline.idle and (self.stopping or burst or (self.max_jobs is not None and not self._may_claim())):
                if burst and not self.stopping and self._may_claim() and self.queue.transport.request_poll():
                    next_claim = 0.0  # the last claim did not ask Postgres: exit only once it has said "none"
                    continue
                if self.health.all_up() or self.stopping:
                    return
            if self._sleep(waiter, self._sleep_seconds(next_claim)):
                next_claim = 0.0

    def _hand_back_unknown_claims(self) -> None:
        """After a claim whose answer was lost, the database may say this worker holds a job it never heard of:
        hand such jobs back at once (no attempt spent) instead of leaving them until their lease expires and a
        rescue spends an attempt. Runs on the main thread, the only one that claims, so no claim is in flight."""
        if not self._claims_unknown:
            return
        known = {attempt.job.id for attempt in self.maintenance.held()}
        for lease in self.queue.held_by(self.worker_id):
            if lease.job_id not in known and self.queue.release(
                    lease, "claimed while the database connection dropped; the worker never got the job"):
                log.warning("job %s: claimed during a database outage without the answer reaching this worker; "
                            "handed back", lease.job_id, extra={"action": "released", "job_id": lease.job_id})
        self._claims_unknown = False

    def _may_fill(self) -> bool:
        return (not self.stopping and self.pipeline.has_room and self._may_claim() and self.health.all_up())

    def _sleep_seconds(self, next_claim: float) -> float:
        """Until something is due: a tick while attempts are in flight, the next claim (only while claiming is
        allowed: a claim held back by an outage is not due, and counting it made the loop spin), the next
        probe; the poll interval when nothing is."""
        candidates = [self.settings.poll_interval_seconds]
        if self._may_fill():
            candidates.append(max(0.0, next_claim - time.monotonic()))
        if not self.pipeline.idle:
            candidates.append(TICK_SECONDS)
        probe = self.health.seconds_to_next_probe()
        if probe is not None:
            candidates.append(max(probe, 0.05))
        return min(candidates)

    def _sleep(self, waiter: Waiter, seconds: float) -> bool:
        """Sleep on LISTEN (or the Redis bands) and the wake-up pipe; True when a job notification arrived.
        While the database is down only the pipe is watched: LISTEN would try to connect every time."""
        if not self.health.is_up(DATABASE):
            self.wakeup.sleep(seconds)
            return False
        try:
            return waiter.wait(seconds, wake_fds=[self.wakeup.read_fd])
        except DatabaseUnavailable as exc:
            self.health.down(DATABASE, exc)
            return False

    def _probe_database(self) -> None:
        if self.health.probe_due(DATABASE):
            try:
                self.db.ping()
            except DatabaseUnavailable as exc:
                self.health.down(DATABASE, exc)
            else:
                self.health.up(DATABASE)

    def _idle_timeout(self) -> float:
        """Sleep until the next delayed job is due, at most the poll interval: a retry waits its backoff,
        not its backoff plus a poll period. NOTIFY ends the sleep earlier for new jobs."""
        try:
            due = self.queue.seconds_until_next_run()
        except DatabaseUnavailable as exc:
            self.health.down(DATABASE, exc)
            return self.settings.poll_interval_seconds
        if due is None:
            return self.settings.poll_interval_seconds
        return min(self.settings.poll_interval_seconds, due + 0.005)

    # Shutdown ---------------------------------------------------------------------------------------
    def _shut_down(self, waiter: Waiter, publisher: ObjectInfoPublisher) -> None:
        publisher.stop()
        if self.forced:
            self._hand_back_everything()
        left = self.finisher.close(timeout=None if not self.forced else 1.0)
        if left and not self.forced:
            log.warning("%d attempts were not recorded", len(left), extra={"action": "shutdown"})
        self.progress.close()
        if self.cancels is not None:
            self.cancels.close()
        self.callbacks.close(timeout=1 if self.forced else 10)
        self.socket.close()
        waiter.close()
        self.maintenance.shutdown(wait=not self.forced)
        self.queue.transport.close()
        try:
            self.registry.stopped()
        except ComfyqError as exc:
            log.warning("could not mark worker stopped: %s", exc)
        log.info("worker %s stopped after %d jobs", self.worker_id, self.jobs_run, extra={"action": "worker_stop"})
        summary = self.queue.transport.summary()
        if summary:
            log.info("%s transport: %s", self.queue.transport.name, summary, extra={"action": "transport"})

    def _hand_back_everything(self) -> None:
        """Cold shutdown: stop our prompts in ComfyUI (if it answers) and release every lease we hold, in the
        pipeline and in the finisher's line alike, without spending attempts."""
        held = self.maintenance.held()
        if self.health.is_up(COMFYUI):
            prompts = [a.prompt_id for a in held if a.prompt_id and a.in_comfyui]
            if prompts:
                self.pipeline.comfy.delete_queued(prompts)
                for prompt_id in prompts:
                    self.pipeline.comfy.interrupt(prompt_id)
        released = 0
        for attempt in held:
            try:
                if self.queue.release(attempt.lease, "worker stopped at once (second signal)"):
                    released += 1
            except DatabaseUnavailable as exc:
                log.warning("could not hand jobs back (%s); their leases expire and they are rescued", exc,
                            extra={"action": "shutdown"})
                break
            self.maintenance.untrack(attempt)
        log.info("handed %d of %d jobs back to the queue", released, len(held), extra={"action": "released"})
