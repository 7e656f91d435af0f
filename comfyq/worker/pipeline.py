"""Keeps ComfyUI's own queue fed and follows every attempt to its end. While one prompt runs, the next
`prefetch_depth` jobs are already in ComfyUI's queue, so the GPU never waits for our downloads, uploads or
database writes.

Owned by the worker's main thread, which calls step() whenever something happens (a socket event, a finished
record, a flag) and at least every tick. An attempt learns its end through one path: its events when the
socket delivers them, else /queue + /history once it has been quiet for a while, whatever the socket's state.
ComfyUI being down, restarting or hung is an outage: attempts wait (their leases are kept), a prompt that
ComfyUI lost is submitted again under the same attempt, and only after the outage budget are jobs handed back
to the queue; none is failed for it."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from comfyq.errors import ComfyqError, ComfyUnavailable, DatabaseUnavailable, JobFailure, TransientFailure
from comfyq.jobs import ClaimedJob, JobQueue
from comfyq.logs import log_context
from comfyq.settings import Settings
from comfyq.worker.attempt import Attempt, Outcome, ProgressTracker, State, prepare_graph
from comfyq.worker.comfy_client import ComfyClient, ComfyServerError, result_from_history
from comfyq.worker.comfy_socket import ComfySocket
from comfyq.worker.finisher import Finisher
from comfyq.worker.health import COMFYUI, DATABASE, DependencyHealth
from comfyq.worker.progress_writer import ProgressWriter

log = logging.getLogger(__name__)

TICK_SECONDS = 0.25
BLIND_POLL_SECONDS = 0.5          # quiet limit while the socket is not connected: no event can come
INTERRUPT_GRACE_SECONDS = 30.0    # an interrupt ComfyUI ignores this long ends the attempt as timed out
SERVER_ERRORS_BEFORE_FAILING = 3  # POST /prompt answered 5xx this often while ComfyUI otherwise answers


class Pipeline:
    """The in-flight attempts of one worker and everything done to them. Other threads only raise an
    attempt's flags or push socket events; this object acts on them in step()."""

    def __init__(self, settings: Settings, queue: JobQueue, comfy: ComfyClient, socket: ComfySocket,
                 finisher: Finisher, health: DependencyHealth, progress: ProgressWriter, worker_id: str, *,
                 track: Callable[[Attempt], None], untrack: Callable[[Attempt], None],
                 prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.queue = queue
        self.comfy = comfy
        self.socket = socket
        self.finisher = finisher
        self.health = health
        self.progress = progress
        self.worker_id = worker_id
        self.track = track
        self.untrack = untrack
        self.prepare = prepare
        self.clock = clock
        self.active: list[Attempt] = []
        self._by_prompt: dict[str, Attempt] = {}
        self._orphans: list[str] = []  # prompt ids whose POST may have reached ComfyUI without an answer
        self.stopping = False
        self.force = False

    @property
    def depth(self) -> int:
        return 1 + self.settings.prefetch_depth

    @property
    def has_room(self) -> bool:
        """Room for another prompt in ComfyUI, while the finisher keeps up: attempts in ComfyUI plus those
        waiting to be stored and written stay within `depth` before a claim. With slow storage or a loaded
        database, claiming more would only grow the finisher's backlog (memory, held leases, jobs to run again
        after a crash) for no gain: the GPU cannot go faster than its results are recorded."""
        return len(self.active) < self.depth and len(self.active) + self.finisher.pending <= self.depth

    @property
    def idle(self) -> bool:
        return not self.active and not self.finisher.busy

    # Claiming ---------------------------------------------------------------------------------------
    def fill(self, claim_allowed: Callable[[], bool]) -> int:
        """Claim and hand over until `depth` attempts are in ComfyUI; returns how many were claimed. Raises
        DatabaseUnavailable when the claim itself fails (nothing was claimed then)."""
        claimed = 0
        while not self.stopping and self.has_room and claim_allowed() and self.health.all_up():
            job = self.queue.claim(self.worker_id)
            if job is None:
                break
            claimed += 1
            self.accept(job)
            self.step()
        return claimed

    def accept(self, job: ClaimedJob) -> Attempt:
        """A claim is a hand-over: from here every path ends the attempt in a defined state."""
        timeout = float(job.timeout_seconds or self.settings.job_timeout_seconds)
        attempt = Attempt(job=job, timeout=timeout, clock=self.clock)
        self.track(attempt)
        self.active.append(attempt)
        log.info("job %s claimed (attempt %s, priority %s)", job.id, job.attempt, job.priority,
                 extra={"action": "claimed", "job_id": job.id, "attempt": job.attempt})
        return attempt

    # The step ---------------------------------------------------------------------------------------
    def step(self) -> None:
        """Act on everything that happened since the last step; never blocks longer than one ComfyUI call."""
        self._route_events()
        for attempt in list(self.active):
            if not attempt.ended:
                with log_context(job_id=attempt.job.id, attempt=attempt.job.attempt):
                    self._supervise(attempt)
        if self.health.is_up(COMFYUI):
            self._look_up_quiet()
        elif self.health.probe_due(COMFYUI):
            self._probe_comfyui()
        self._pass_on_ended()

    def _route_events(self) -> None:
        for kind, data in self.socket.drain():
            attempt = self._by_prompt.get(str(data.get("prompt_id")))
            if attempt is None:
                continue
            attempt.on_event(kind, data)
            if attempt.progress is not None and not attempt.ended and attempt.progress.on_event(kind, data):
                self.progress.offer(attempt.lease, attempt.progress.fraction, attempt.progress.current_node)

    def _supervise(self, attempt: Attempt) -> None:
        comfy_up = self.health.is_up(COMFYUI)
        if attempt.lease_lost.is_set():
            self._abandon(attempt)
        elif attempt.cancel_requested.is_set() and attempt.stop_reason != "cancel":
            self._stop(attempt, "cancel")
        elif self.force and attempt.stop_reason not in ("cancel", "shutdown"):
            self._stop(attempt, "shutdown")
        elif attempt.state is State.WAITING:
            if self.stopping:
                attempt.stop_reason = "shutdown"
                attempt.end(Outcome.UNSTARTED)
            elif self._outage_budget_spent():
                self._release_for_outage(attempt)
            elif comfy_up and self.health.is_up(DATABASE):
                self._hand_over(attempt)
        elif self.stopping and attempt.state is State.QUEUED and attempt.stop_reason is None:
            self._take_back_if_pending(attempt)
        elif comfy_up and attempt.stop_reason is None and self._overdue(attempt):
            self._stop(attempt, "timeout")
        elif attempt.interrupt_sent_at is not None and attempt.stop_reason == "timeout" and \
                self.clock() - attempt.interrupt_sent_at > INTERRUPT_GRACE_SECONDS:
            attempt.end(Outcome.INTERRUPTED)  # ComfyUI ignored the interrupt; the finisher records a timeout
        elif not comfy_up and self._outage_budget_spent():
            self._release_for_outage(attempt)

    def _release_for_outage(self, attempt: Attempt) -> None:
        """ComfyUI has been down past the outage budget: hand the job back for other workers, never fail it."""
        attempt.release_reason = (f"ComfyUI unavailable for {self.health.down_for(COMFYUI):.0f}s "
                                  "(outage budget); handed back")
        self._forget_prompt(attempt)
        attempt.end(Outcome.RELEASED)

    def _outage_budget_spent(self) -> bool:
        return self.health.down_for(COMFYUI) > self.settings.outage_budget_seconds

    def _overdue(self, attempt: Attempt) -> bool:
        """Running longer than its timeout; or waiting in ComfyUI's queue longer than the prompts ahead of it
        (at most depth - 1 of ours, each bounded by its own timeout) can take."""
        if attempt.started_at is not None:
            return self.clock() - attempt.started_at > attempt.timeout
        return attempt.handed_at is not None and self.clock() - attempt.handed_at > attempt.timeout * self.depth

    # Hand-over --------------------------------------------------------------------------------------
    def _hand_over(self, attempt: Attempt) -> None:
        """Submit a waiting attempt: prepare its graph once, record the prompt id, POST it. An outage leaves
        it WAITING (and marks the dependency down); the job's own failure ends it."""
        job = attempt.job
        prompt_id: str | None = None
        try:
            self._delete_orphans()
            if attempt.graph is None:
                graph = prepare_graph(job.graph, job.id, job.attempt)
                if self.prepare is not None:
                    graph = self.prepare(graph)
                attempt.graph = graph
                attempt.progress = ProgressTracker(len(graph))
            prompt_id = str(uuid.uuid4())
            self.queue.set_prompt_id(job.lease, prompt_id)
            self._by_prompt[prompt_id] = attempt  # before the POST: no event can be missed
            try:
                self.comfy.submit(attempt.graph, prompt_id)
            except ComfyServerError as exc:
                self._by_prompt.pop(prompt_id, None)
                self._server_error(attempt, exc)
                return
            except ComfyUnavailable:
                self._by_prompt.pop(prompt_id, None)
                self._orphans.append(prompt_id)  # a timed-out POST may still have been queued
                raise
        except DatabaseUnavailable as exc:
            self.health.down(DATABASE, exc)
            return
        except ComfyUnavailable as exc:
            self.health.down(COMFYUI, exc)
            return
        except JobFailure as exc:
            if prompt_id is not None:
                attempt.prompt_id = prompt_id  # rejected by ComfyUI under this id: keep it for the logs
                self._by_prompt.pop(prompt_id, None)
            attempt.end(Outcome.FAILED, failure=exc)
            return
        except Exception as exc:  # a bug must not strand a claimed job: fail this attempt, retried as usual
            log.exception("job %s: unexpected error while handing it to ComfyUI", job.id,
                          extra={"action": "hand_over_failed", "job_id": job.id})
            attempt.end(Outcome.FAILED, failure=TransientFailure(f"internal error: {exc.__class__.__name__}: {exc}"))
            return
        assert prompt_id is not None
        attempt.handed_over(prompt_id)
        attempt.server_errors = 0
        self.health.up(COMFYUI)
        if attempt.resubmissions:
            log.info("job %s submitted again as prompt %s (ComfyUI lost the previous one)", job.id, prompt_id,
                     extra={"action": "resubmitted", "job_id": job.id, "prompt_id": prompt_id})

    def _server_error(self, attempt: Attempt, exc: ComfyServerError) -> None:
        """5xx to POST /prompt: an outage when ComfyUI answers nothing else either, the job's fault when this
        graph keeps getting it while ComfyUI otherwise works."""
        if not self.check_comfyui():
            return
        attempt.server_errors += 1
        if attempt.server_errors >= SERVER_ERRORS_BEFORE_FAILING:
            attempt.end(Outcome.FAILED, failure=TransientFailure(
                f"ComfyUI answered {exc.status} to this prompt {attempt.server_errors} times: {exc}"))

    def _delete_orphans(self) -> None:
        if self._orphans:
            orphans, self._orphans = self._orphans, []
            self.comfy.delete_queued(orphans)

    # Following prompts ------------------------------------------------------------------------------
    def _look_up_quiet(self) -> None:
        """A prompt with no event for a while is looked up: running or pending is evidence of life, a history
        entry is its end, neither means ComfyUI lost it (a restart)."""
        limit = self.settings.history_poll_seconds if self.socket.connected else BLIND_POLL_SECONDS
        quiet = [a for a in self.active if a.in_comfyui and a.quiet_for() >= limit]
        if not quiet:
            return
        try:
            running, pending = self.comfy.queue_state()
            for attempt in quiet:
                attempt.last_poll_at = self.clock()
                assert attempt.prompt_id is not None
                if attempt.prompt_id in running:
                    attempt.started()
                elif attempt.prompt_id in pending:
                    attempt.evidence()
                else:
                    entry = self.comfy.history(attempt.prompt_id)  # asked after /queue: an end in between shows
                    if entry is not None:
                        self._end_from_history(attempt, entry)
                    else:
                        self._lost(attempt)
        except ComfyUnavailable as exc:
            self.health.down(COMFYUI, exc)
            return
        self.health.up(COMFYUI)

    def check_comfyui(self) -> bool:
        """Probe ComfyUI once (at start: claim nothing before it has answered)."""
        try:
            self.comfy.queue_state()
        except ComfyUnavailable as exc:
            self.health.down(COMFYUI, exc)
            return False
        self.health.up(COMFYUI)
        return True

    def _probe_comfyui(self) -> None:
        """ComfyUI was down and a probe is due: once it answers, every prompt in flight is looked up at once
        (it may have finished, or have been lost in a restart)."""
        if not self.check_comfyui():
            return
        for attempt in self.active:
            attempt.look_up_now()
        self._look_up_quiet()

    def _end_from_history(self, attempt: Attempt, entry: dict[str, Any]) -> None:
        result = result_from_history(str(attempt.prompt_id), entry)
        if result.outcome == "interrupted":
            attempt.end(Outcome.INTERRUPTED, history=entry)
        elif result.outcome == "error":
            attempt.end(Outcome.ERROR, error_event=result.error or {}, history=entry)
        else:
            attempt.end(Outcome.SUCCESS, history=entry)

    def _lost(self, attempt: Attempt) -> None:
        """In neither /queue nor /history. Taken back by us: it ended unstarted. Otherwise ComfyUI restarted:
        wait to submit it again, with no attempt spent."""
        if attempt.stop_reason in ("cancel", "shutdown"):
            attempt.end(Outcome.UNSTARTED)
            return
        if attempt.stop_reason == "timeout":
            attempt.end(Outcome.INTERRUPTED)
            return
        old = attempt.prompt_id
        self._forget_prompt(attempt)
        attempt.lost()
        log.warning("job %s: ComfyUI lost prompt %s (restarted?); it will be submitted again, no attempt spent",
                    attempt.job.id, old, extra={"action": "prompt_lost", "job_id": attempt.job.id, "prompt_id": old})
        self._log_event(attempt, "resubmitted", "ComfyUI lost the prompt (restart); submitted again, no attempt "
                        "spent", {"dependency": COMFYUI, "lost_prompt_id": old})

    def _log_event(self, attempt: Attempt, event: str, message: str, details: dict[str, Any]) -> None:
        try:
            self.queue.log_outage(attempt.lease, event, message, details)
        except DatabaseUnavailable as exc:
            self.health.down(DATABASE, exc)
        except ComfyqError as exc:
            log.warning("could not log %s for job %s: %s", event, attempt.job.id, exc)

    def _forget_prompt(self, attempt: Attempt) -> None:
        if attempt.prompt_id is not None:
            self._by_prompt.pop(attempt.prompt_id, None)

    # Stopping prompts -------------------------------------------------------------------------------
    def _stop(self, attempt: Attempt, reason: str) -> None:
        """Take the prompt back: delete it from ComfyUI's queue, or interrupt it if it runs. Its ending then
        arrives as usual (an event or a look-up) and the finisher records it according to stop_reason."""
        attempt.stop_reason = reason
        log.info("job %s: stopping (%s)", attempt.job.id, reason,
                 extra={"action": "stop_prompt", "job_id": attempt.job.id, "prompt_id": attempt.prompt_id})
        if attempt.state is State.WAITING or not self.health.is_up(COMFYUI):
            self._forget_prompt(attempt)  # not in ComfyUI, or ComfyUI is down and has lost it anyway
            attempt.end(Outcome.UNSTARTED)
            return
        assert attempt.prompt_id is not None
        self.comfy.delete_queued([attempt.prompt_id])
        where = self._where(attempt.prompt_id)
        if where == "gone":
            attempt.end(Outcome.UNSTARTED)  # removed before it ran: ComfyUI will never run it
        elif where == "finished":
            attempt.look_up_now()  # the next look-up records how it ended
        elif where in ("running", "unknown"):
            attempt.interrupt_sent_at = self.clock()
            self.comfy.interrupt(attempt.prompt_id)  # takes effect between nodes

    def _take_back_if_pending(self, attempt: Attempt) -> None:
        """Warm shutdown: a prefetched prompt that has not started is taken out of ComfyUI's queue; one that
        has started finishes."""
        assert attempt.prompt_id is not None
        if not self.health.is_up(COMFYUI):
            return
        self.comfy.delete_queued([attempt.prompt_id])
        where = self._where(attempt.prompt_id)
        if where == "gone":
            attempt.stop_reason = "shutdown"
            attempt.end(Outcome.UNSTARTED)
        elif where == "running":
            attempt.started()

    def _where(self, prompt_id: str) -> str:
        """pending | running | finished | gone | unknown (ComfyUI unreachable)."""
        try:
            running, pending = self.comfy.queue_state()
            if prompt_id in running:
                return "running"
            if prompt_id in pending:
                return "pending"
            return "finished" if self.comfy.history(prompt_id) is not None else "gone"
        except ComfyUnavailable as exc:
            self.health.down(COMFYUI, exc)
            return "unknown"

    def _abandon(self, attempt: Attempt) -> None:
        """The lease is gone (another worker owns the job now): stop the prompt, write nothing."""
        attempt.stop_reason = "lease_lost"
        if attempt.prompt_id is not None and attempt.in_comfyui and self.health.is_up(COMFYUI):
            self.comfy.delete_queued([attempt.prompt_id])
            self.comfy.interrupt(attempt.prompt_id)
        attempt.end(Outcome.ABANDONED)

    def _pass_on_ended(self) -> None:
        for attempt in [a for a in self.active if a.ended]:
            self.active.remove(attempt)
            self._forget_prompt(attempt)
            self.progress.forget(attempt.job.id)
            if attempt.outcome is Outcome.ABANDONED:
                self.untrack(attempt)
            self.finisher.submit(attempt)

    # Stopping the worker ----------------------------------------------------------------------------
    def request_stop(self, *, force: bool) -> None:
        self.stopping = True
        self.force = self.force or force
