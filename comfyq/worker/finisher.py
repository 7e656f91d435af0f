"""Records how each attempt ended, on a thread of its own: output download, upload and the database write of
job N happen while ComfyUI already runs job N+1.

A dependency that is down while recording (storage full or read-only, the database restarting, ComfyUI's /view
unreachable) is an outage, not the job's failure: the attempt stays at the head of the line, its lease renewed
by the heartbeat, and the step that failed is tried again with backoff; files already stored are not stored
again. Only after the outage budget is the job handed back to the queue, never failed. Writes are fenced by
the lease, so a write whose outcome was unknown (the connection dropped during COMMIT) is safely sent again."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from comfyq.backoff import retry_delay
from comfyq.errors import (
    ComfyqError,
    ComfyUnavailable,
    DependencyUnavailable,
    JobFailure,
    JobTimedOut,
    PromptLost,
)
from comfyq.jobs import TERMINAL_STATUSES, JobQueue
from comfyq.logs import log_context
from comfyq.settings import Settings
from comfyq.storage import Storage, object_key, storage_namespace
from comfyq.worker.attempt import Attempt, Outcome
from comfyq.worker.comfy_client import ComfyClient, OutOfMemory, execution_error_from, output_files
from comfyq.worker.health import DATABASE, DependencyHealth
from comfyq.worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)


class Released(Exception):
    """The attempt cannot be recorded as it ended (its outputs are gone from ComfyUI): hand the job back."""


class Finisher:
    """One thread, so attempts are recorded in the order ComfyUI finished them."""

    def __init__(self, settings: Settings, queue: JobQueue, comfy: ComfyClient, storage: Storage,
                 health: DependencyHealth, on_recorded: Callable[[Attempt, str], None], *,
                 metrics: WorkerMetrics | None = None, on_idle: Callable[[], None] = lambda: None,
                 on_terminal: Callable[[int], None] = lambda job_id: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.queue = queue
        self.comfy = comfy
        self.storage = storage
        self.health = health
        self.on_recorded = on_recorded
        self.on_idle = on_idle
        self.metrics = metrics
        self.on_terminal = on_terminal
        self.clock = clock
        self._namespace: str | None = None  # this installation's first key segment, read once
        self._line: deque[Attempt] = deque()
        self._cond = threading.Condition()
        self._closing = False   # warm: record what is in line, then stop
        self._abandon = False   # cold: stop now; what is left is handed back by the worker
        self._thread = threading.Thread(target=self._run, name="finisher", daemon=True)
        self._thread.start()

    # Used by the main thread ------------------------------------------------------------------------
    def submit(self, attempt: Attempt) -> None:
        with self._cond:
            self._line.append(attempt)
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._line)

    @property
    def busy(self) -> bool:
        return self.pending > 0

    def abandon(self) -> None:
        """Cold shutdown: stop waiting for dependencies; unrecorded attempts stay unrecorded (their leases are
        released by the worker, or expire and are rescued)."""
        with self._cond:
            self._abandon = True
            self._cond.notify_all()

    def close(self, timeout: float | None = None) -> list[Attempt]:
        """Record what is in line (until timeout), stop the thread; returns the attempts left unrecorded."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.abandon()
            self._thread.join(1.0)
        with self._cond:
            return list(self._line)

    # The finisher thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._line and not self._closing and not self._abandon:
                    self._cond.wait()
                if self._abandon or not self._line:
                    return
                attempt = self._line[0]
            status = self._record_safely(attempt)
            with self._cond:
                if status == "abandoned":
                    return
                self._line.popleft()
            self.on_idle()

    def _wait(self, seconds: float) -> bool:
        """Sleep between tries; False when told to abandon."""
        with self._cond:
            if not self._abandon:
                self._cond.wait(seconds)
            return not self._abandon

    def _record_safely(self, attempt: Attempt) -> str:
        with log_context(job_id=attempt.job.id, attempt=attempt.job.attempt, prompt_id=attempt.prompt_id):
            status = self._record_until_done(attempt)
        if status == "abandoned":
            return status
        self._observe(attempt, status)
        if status in TERMINAL_STATUSES:
            self.on_terminal(attempt.job.id)
        self.on_recorded(attempt, status)
        return status

    def _record_until_done(self, attempt: Attempt) -> str:
        """Try to record; wait out outages (tries again with backoff) while the lease is held."""
        failures = 0
        while True:
            if attempt.lease_lost.is_set() and attempt.outcome is not Outcome.ABANDONED:
                log.warning("job %s: lease lost while recording; result discarded", attempt.job.id,
                            extra={"action": "lease_lost", "job_id": attempt.job.id})
                return "lost"
            try:
                return self.record(attempt)
            except Released as exc:
                return self._release(attempt, str(exc))
            except DependencyUnavailable as exc:
                failures += 1
                self.health.down(exc.dependency, exc)
                started = self.clock()
                outage = self.health.down_for(exc.dependency)
                if outage > self.settings.outage_budget_seconds and self.health.is_up(DATABASE):
                    return self._release(attempt, f"{exc.dependency} unavailable for {outage:.0f}s (outage budget)")
                delay = retry_delay(min(failures, 30), self.settings.outage_backoff_min_seconds,
                                    self.settings.outage_backoff_max_seconds)
                if not self._wait(delay):
                    return "abandoned"
                attempt.waited_for[exc.dependency] = attempt.waited_for.get(exc.dependency, 0.0) + (
                    self.clock() - started)
            except ComfyqError as exc:
                log.error("job %s attempt %s could not be recorded: %s", attempt.job.id, attempt.job.attempt, exc,
                          extra={"action": "record_failed", "job_id": attempt.job.id})
                return "unknown"
            except Exception:
                log.exception("job %s attempt %s: unexpected error while recording", attempt.job.id,
                              attempt.job.attempt, extra={"action": "record_failed", "job_id": attempt.job.id})
                return "unknown"

    def _observe(self, attempt: Attempt, status: str) -> None:
        if self.metrics is None:
            return
        self.metrics.jobs(status).inc()
        self.metrics.job_seconds.observe(self.clock() - attempt.claimed_at)
        seconds = attempt.execution_seconds()
        if seconds is not None:
            self.metrics.executed(seconds)

    # Recording --------------------------------------------------------------------------------------
    def record(self, attempt: Attempt) -> str:
        """Turn the attempt's ending into the job's next state; returns that state. Raises
        DependencyUnavailable for an outage (the caller tries again) and Released when the job must go back."""
        outcome = attempt.outcome
        if outcome is Outcome.ABANDONED:
            log.warning("job %s: lease lost, attempt %s abandoned", attempt.job.id, attempt.job.attempt,
                        extra={"action": "lease_lost", "job_id": attempt.job.id})
            return "lost"
        if outcome is Outcome.UNSTARTED:
            return self._stopped_before_running(attempt)
        if outcome is Outcome.RELEASED:
            return self._release(attempt, attempt.release_reason or "handed back")
        if outcome is Outcome.SUCCESS:
            try:
                outputs = self._store_outputs(attempt)
            except JobFailure as exc:
                return self._fail(attempt, exc)
            self._log_waits(attempt)
            return self._complete(attempt, outputs)
        if outcome is Outcome.ERROR:
            failure = execution_error_from(attempt.error_event or {})
            if isinstance(failure, OutOfMemory):
                self.comfy.free_memory()
            return self._fail(attempt, failure)
        if outcome is Outcome.INTERRUPTED:
            return self._interrupted(attempt)
        if outcome is Outcome.FAILED and attempt.failure is not None:
            return self._fail(attempt, attempt.failure)
        return self._fail(attempt, PromptLost(f"attempt ended without a known outcome ({outcome})"))

    def _complete(self, attempt: Attempt, outputs: list[dict[str, Any]]) -> str:
        # An outcome-unknown write raises DatabaseUnavailable and is sent again; if the first one committed,
        # the second matches no row and the state check below says so.
        if self.queue.complete(attempt.lease, outputs) or self._committed_as(attempt, "succeeded"):
            self.health.up(DATABASE)
            log.info("job %s succeeded with %d outputs", attempt.job.id, len(outputs),
                     extra={"action": "succeeded", "job_id": attempt.job.id, "attempt": attempt.job.attempt,
                            "prompt_id": attempt.prompt_id})
            return "succeeded"
        log.warning("job %s attempt %s finished after its lease was lost; result discarded", attempt.job.id,
                    attempt.job.attempt, extra={"action": "lease_lost", "job_id": attempt.job.id})
        return "lost"

    def _committed_as(self, attempt: Attempt, status: str) -> bool:
        """After a write whose outcome was unknown, or one that matched no row: did our earlier try commit?"""
        row = self.queue.attempt_state(attempt.job.id)
        return bool(row and row["status"] == status and row["attempts"] == attempt.job.attempt
                    and row["worker_id"] == attempt.lease.worker_id)

    def _stopped_before_running(self, attempt: Attempt) -> str:
        if attempt.stop_reason == "cancel":
            return self._canceled(attempt)
        return self._release(attempt, "worker shutting down before the job started")

    def _release(self, attempt: Attempt, reason: str) -> str:
        """Back to the queue without spending the attempt: the job did not fail, the worker could not run it."""
        if self.queue.release(attempt.lease, reason) or self._committed_as(attempt, "queued"):
            log.info("job %s released: %s", attempt.job.id, reason,
                     extra={"action": "released", "job_id": attempt.job.id})
            return "queued"
        return "lost"

    def _interrupted(self, attempt: Attempt) -> str:
        reason = attempt.stop_reason
        if reason == "cancel":
            return self._canceled(attempt)
        if reason == "shutdown":
            return self._release(attempt, "worker shutting down; prompt interrupted")
        if reason == "timeout":
            return self._fail(attempt, JobTimedOut(
                f"attempt ran longer than its timeout of {attempt.timeout:.0f}s and was interrupted"))
        return self._fail(attempt, PromptLost("ComfyUI interrupted the prompt (from outside comfyq)"))

    def _canceled(self, attempt: Attempt) -> str:
        if self.queue.finish_canceled(attempt.lease) or self._committed_as(attempt, "canceled"):
            log.info("job %s canceled", attempt.job.id,
                     extra={"action": "canceled", "job_id": attempt.job.id, "prompt_id": attempt.prompt_id})
            return "canceled"
        return "lost"

    def _store_outputs(self, attempt: Attempt) -> list[dict[str, Any]]:
        """Fetch each output from ComfyUI and store it; a retry after an outage resumes where it stopped."""
        if attempt.history is None:
            assert attempt.prompt_id is not None
            entry = self.comfy.history(attempt.prompt_id)
            if entry is None:
                raise Released("ComfyUI no longer has the prompt's history (restarted before the outputs were "
                               "stored); the job runs again")
            attempt.history = entry
        done = {record["filename"] for record in attempt.stored}
        for output in output_files(attempt.history):
            if output.filename in done:
                continue
            try:
                data, content_type = self.comfy.view(output)
            except ComfyUnavailable as exc:
                if "has no file" in str(exc):
                    raise Released(f"ComfyUI lost output {output.filename}; the job runs again") from exc
                raise
            if self._namespace is None:
                self._namespace = storage_namespace(self.queue.db)
            key = object_key(self._namespace, attempt.job.id, attempt.job.attempt, output.filename)
            obj = self.storage.put(key, data, content_type)
            attempt.stored.append({**obj.to_record(), "node_id": output.node_id, "filename": output.filename})
            if self.metrics is not None:
                self.metrics.storage_bytes.inc(obj.size)
        if attempt.waited_for:
            for name in attempt.waited_for:
                self.health.up(name)
        return list(attempt.stored)

    def _log_waits(self, attempt: Attempt) -> None:
        """An outage the attempt waited out is recorded in its history as its own event, not as a failure."""
        for dependency, seconds in attempt.waited_for.items():
            self.queue.log_outage(attempt.lease, "outage", f"waited {seconds:.1f}s for {dependency}",
                                  {"dependency": dependency, "seconds": round(seconds, 1)})
        attempt.waited_for.clear()

    def _fail(self, attempt: Attempt, exc: JobFailure) -> str:
        job = attempt.job
        delay = retry_delay(job.attempt, self.settings.retry_base_seconds, self.settings.retry_max_seconds)
        row = self.queue.fail_attempt(job.lease, exc.to_record(), retryable=exc.retryable, delay_seconds=delay)
        if row is None and (self._committed_as(attempt, "queued") or self._committed_as(attempt, "failed")):
            row = self.queue.attempt_state(job.id)  # an earlier try whose answer was lost had committed
        extra = {"job_id": job.id, "attempt": job.attempt, "prompt_id": attempt.prompt_id}
        if row is None:
            log.warning("job %s attempt %s failed after its lease was lost", job.id, job.attempt,
                        extra={"action": "lease_lost", **extra})
            return "lost"
        if row["status"] == "queued":
            if self.metrics is not None:
                self.metrics.retries.labels(exc.error_type).inc()
            log.warning("job %s attempt %s failed (%s), retry in %.1fs: %s", job.id, job.attempt, exc.error_type,
                        delay, exc.message, extra={"action": "retry_scheduled", **extra})
        else:
            log.error("job %s failed after attempt %s (%s): %s", job.id, job.attempt, exc.error_type, exc.message,
                      extra={"action": "failed", **extra})
        return str(row["status"])
