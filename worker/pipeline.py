"""Keeps ComfyUI's own queue fed: while one prompt runs, the next `prefetch_depth` jobs are already claimed
and queued in ComfyUI, so the GPU never waits for our downloads, uploads or database writes. Watches every
in-flight attempt for its end, a cancel, a timeout, a lost lease or a shutdown."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

from comfyq_worker.attempt import (
    ABANDONED,
    ERROR,
    FAILED,
    INTERRUPTED,
    SUCCESS,
    UNSTARTED,
    Attempt,
    ProgressReporter,
    prepare_graph,
)
from comfyq_worker.comfy_client import ComfyClient, result_from_history
from comfyq_worker.event_stream import EventStream
from comfyq_worker.finisher import Finisher

from comfyq.errors import ComfyUnavailable, JobFailure, PromptLost
from comfyq.jobs import ClaimedJob, JobQueue
from comfyq.logs import log_context
from comfyq.settings import Settings

log = logging.getLogger(__name__)

TICK_SECONDS = 0.25
BLIND_POLL_SECONDS = 0.5
COMFY_DOWN_GRACE_SECONDS = 30.0


class Pipeline:
    """Owned by the worker's main thread; the event reader, the finisher and the heartbeat only raise flags
    and kick the pipeline awake."""

    def __init__(self, settings: Settings, queue: JobQueue, comfy: ComfyClient, stream: EventStream,
                 finisher: Finisher, worker_id: str, *, track: Callable[[Attempt], None],
                 untrack: Callable[[Attempt], None],
                 prepare: Callable[[dict], dict] | None = None) -> None:
        self.settings = settings
        self.queue = queue
        self.comfy = comfy
        self.stream = stream
        self.finisher = finisher
        self.worker_id = worker_id
        self.track = track
        self.untrack = untrack
        self.prepare = prepare
        self.active: list[Attempt] = []
        self.kick = threading.Event()
        self.stopping = False
        self.force = False
        self._last_blind_poll = 0.0
        self._comfy_down_since: float | None = None

    @property
    def depth(self) -> int:
        return 1 + self.settings.prefetch_depth

    @property
    def has_room(self) -> bool:
        """Room for another prompt in ComfyUI, while the finisher keeps up: attempts in ComfyUI plus those
        waiting to be stored and written stay within `depth` before a claim. Normally the finisher holds at most
        the previous job and this never binds. With slow storage or a loaded database, claiming more would only
        grow the finisher's backlog (memory, held leases, jobs to run again after a crash) for no gain in
        speed: the GPU cannot go faster than its results are recorded."""
        return len(self.active) < self.depth and len(self.active) + self.finisher.pending <= self.depth

    # Filling ----------------------------------------------------------------------------------------
    def fill(self, claim_allowed: Callable[[], bool]) -> int:
        """Claim and submit until depth attempts are in ComfyUI; returns how many were claimed."""
        claimed = 0
        while not self.stopping and self.has_room and claim_allowed():
            job = self.queue.claim(self.worker_id)
            if job is None:
                break
            claimed += 1
            self.submit(job)
        return claimed

    def submit(self, job: ClaimedJob) -> Attempt:
        with log_context(job_id=job.id, attempt=job.attempt):
            return self._submit(job)

    def _submit(self, job: ClaimedJob) -> Attempt:
        timeout = float(job.timeout_seconds or self.settings.job_timeout_seconds)
        attempt = Attempt(job=job, prompt_id=str(uuid.uuid4()), timeout=timeout, on_done=self.kick.set)
        self.track(attempt)
        self.active.append(attempt)
        log.info("job %s claimed (attempt %s, priority %s)", job.id, job.attempt, job.priority,
                 extra={"action": "claimed", "job_id": job.id, "attempt": job.attempt, "prompt_id": attempt.prompt_id})
        try:
            graph = prepare_graph(job.graph, job.id, job.attempt)
            if self.prepare is not None:
                graph = self.prepare(graph)
            attempt.progress = ProgressReporter(self.queue, job.lease, len(graph),
                                                self.settings.progress_min_interval_seconds)
            self.stream.ensure_connected()
            self.stream.register(attempt.prompt_id, attempt)  # before POST: no event can be missed
            self.queue.set_prompt_id(job.lease, attempt.prompt_id)
            self.comfy.submit(graph, attempt.prompt_id)
        except JobFailure as exc:
            attempt.finish(FAILED, failure=exc)
        return attempt

    # Watching ---------------------------------------------------------------------------------------
    def wait(self) -> None:
        """Sleep until something happens to an attempt (or a tick passes)."""
        if not any(a.done for a in self.active):
            self.kick.wait(TICK_SECONDS)
        self.kick.clear()

    def supervise(self) -> None:
        """Act on flags and timeouts, poll blind attempts, and hand finished ones to the finisher."""
        now = time.monotonic()
        for attempt in list(self.active):
            if attempt.done:
                continue
            if attempt.lease_lost.is_set():
                self._take_back(attempt, "lease_lost")
            elif attempt.cancel_requested.is_set():
                self._take_back(attempt, "cancel")
            elif self.force:
                self._take_back(attempt, "shutdown")
            elif self.stopping and attempt.started_at is None and not attempt.blind:
                self._take_back(attempt, "shutdown", only_if_unstarted=True)
            elif attempt.started_at is not None and attempt.running_for() > attempt.timeout:
                self._take_back(attempt, "timeout")
        if any(a.blind and not a.done for a in self.active) and now - self._last_blind_poll >= BLIND_POLL_SECONDS:
            self._last_blind_poll = now
            self._poll_blind()
        for attempt in [a for a in self.active if a.done]:
            self.active.remove(attempt)
            self.stream.unregister(attempt.prompt_id)
            if attempt.outcome == ABANDONED:
                self.untrack(attempt)
            self.finisher.submit(attempt)

    def on_socket_drop(self) -> None:
        """Called from the reader thread: in-flight attempts may miss their done signal, so poll them."""
        for attempt in list(self.active):
            attempt.blind = True
        self.kick.set()

    def _take_back(self, attempt: Attempt, reason: str, *, only_if_unstarted: bool = False) -> None:
        """Remove the prompt from ComfyUI's queue, or interrupt it if it already runs; the ending then
        arrives as usual (an event, or polling) and the finisher records it according to stop_reason."""
        if attempt.stop_reason is None:
            attempt.stop_reason = reason
            log.info("job %s: stopping prompt %s (%s)", attempt.job.id, attempt.prompt_id, reason,
                     extra={"action": "stop_prompt", "job_id": attempt.job.id, "prompt_id": attempt.prompt_id})
        if reason == "lease_lost":
            self.comfy.delete_queued([attempt.prompt_id])
            self.comfy.interrupt(attempt.prompt_id)
            attempt.finish(ABANDONED)
            return
        where = "running"
        if attempt.started_at is None:
            self.comfy.delete_queued([attempt.prompt_id])
            where = self._where(attempt.prompt_id)
            if where == "gone":
                attempt.finish(UNSTARTED)  # deleted before it ran: ComfyUI will never run it
                return
        if only_if_unstarted:
            if where != "pending":
                attempt.stop_reason = None  # it started meanwhile: a warm shutdown lets it finish
            return
        if where == "running" and not attempt.interrupt_sent:
            attempt.interrupt_sent = True
            self.comfy.interrupt(attempt.prompt_id)  # takes effect between nodes

    def _where(self, prompt_id: str) -> str:
        """pending | running | finished | gone | unknown (ComfyUI unreachable)."""
        try:
            running, pending = self.comfy.queue_state()
            if prompt_id in running:
                return "running"
            if prompt_id in pending:
                return "pending"
            return "finished" if self.comfy.history(prompt_id) is not None else "gone"
        except ComfyUnavailable:
            return "unknown"

    def _poll_blind(self) -> None:
        """The socket dropped: history says how a prompt ended; one in neither queue nor history is lost."""
        for attempt in [a for a in self.active if a.blind and not a.done]:
            try:
                entry = self.comfy.history(attempt.prompt_id)
                if entry is not None:
                    self._finish_from_history(attempt, entry)
                    continue
                if attempt.prompt_id in self.comfy.queued_prompt_ids():
                    self._comfy_down_since = None
                    continue
                entry = self.comfy.history(attempt.prompt_id)  # it may have ended between the two calls
                if entry is not None:
                    self._finish_from_history(attempt, entry)
                else:
                    attempt.finish(FAILED, failure=PromptLost(
                        f"prompt {attempt.prompt_id} is neither queued nor in history (ComfyUI restarted?)"))
                self._comfy_down_since = None
            except ComfyUnavailable as exc:
                now = time.monotonic()
                self._comfy_down_since = self._comfy_down_since or now
                if now - self._comfy_down_since > COMFY_DOWN_GRACE_SECONDS:
                    attempt.finish(FAILED, failure=exc)

    def _finish_from_history(self, attempt: Attempt, entry: dict) -> None:
        result = result_from_history(attempt.prompt_id, entry)
        if result.outcome == "interrupted":
            attempt.finish(INTERRUPTED)
        elif result.outcome == "error":
            attempt.finish(ERROR, error_event=result.error or {})
        else:
            attempt.finish(SUCCESS)

    # Stopping ---------------------------------------------------------------------------------------
    def request_stop(self, *, force: bool) -> None:
        self.stopping = True
        self.force = self.force or force
        self.kick.set()

    @property
    def idle(self) -> bool:
        return not self.active and not self.finisher.busy
