"""Records how each attempt ended, on a thread of its own: output download, upload and the database write of
job N happen while ComfyUI already runs job N+1."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from comfyq_worker.attempt import ABANDONED, ERROR, FAILED, INTERRUPTED, SUCCESS, UNSTARTED, Attempt
from comfyq_worker.comfy_client import ComfyClient, OutOfMemory, execution_error_from, output_files, result_from_history
from comfyq_worker.metrics import WorkerMetrics

from comfyq.backoff import retry_delay
from comfyq.errors import (
    ComfyqError,
    ComfyUnavailable,
    JobFailure,
    JobTimedOut,
    PromptLost,
)
from comfyq.jobs import TERMINAL_STATUSES, JobQueue
from comfyq.logs import log_context
from comfyq.settings import Settings
from comfyq.storage import Storage, object_key

log = logging.getLogger(__name__)


class Finisher:
    """One thread, so attempts are recorded in the order ComfyUI finished them."""

    def __init__(self, settings: Settings, queue: JobQueue, comfy: ComfyClient, storage: Storage,
                 on_recorded: Callable[[Attempt, str], None], *, metrics: WorkerMetrics | None = None,
                 on_idle: Callable[[], None] = lambda: None,
                 on_terminal: Callable[[int], None] = lambda job_id: None) -> None:
        self.settings = settings
        self.queue = queue
        self.comfy = comfy
        self.storage = storage
        self.on_recorded = on_recorded
        self.on_idle = on_idle
        self.metrics = metrics
        self.on_terminal = on_terminal
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finisher")
        self._pending: set[Future[str]] = set()

    def submit(self, attempt: Attempt) -> None:
        future = self._pool.submit(self._record_safely, attempt)
        self._pending.add(future)
        future.add_done_callback(self._finished)

    def _finished(self, future: Future[str]) -> None:
        """Only now is the finisher no longer busy: wake the loop again, or it would sleep a whole tick
        before it notices (a 0.25 s pickup stall seen in the benchmarks)."""
        self._pending.discard(future)
        self.on_idle()

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _record_safely(self, attempt: Attempt) -> str:
        try:
            with log_context(job_id=attempt.job.id, attempt=attempt.job.attempt, prompt_id=attempt.prompt_id):
                status = self.record(attempt)
        except ComfyqError as exc:  # database down mid-write: the lease expires and the job is rescued
            log.error("job %s attempt %s could not be recorded: %s", attempt.job.id, attempt.job.attempt, exc,
                      extra={"action": "record_failed", "job_id": attempt.job.id})
            status = "unknown"
        except Exception:
            log.exception("job %s attempt %s: unexpected error while recording", attempt.job.id,
                          attempt.job.attempt, extra={"action": "record_failed", "job_id": attempt.job.id})
            status = "unknown"
        self._observe(attempt, status)
        if status in TERMINAL_STATUSES:
            self.on_terminal(attempt.job.id)
        self.on_recorded(attempt, status)
        return status

    def _observe(self, attempt: Attempt, status: str) -> None:
        if self.metrics is None:
            return
        self.metrics.jobs(status).inc()
        self.metrics.job_seconds.observe(time.monotonic() - attempt.submitted_at)
        if attempt.started_at is not None and attempt.ended_at is not None:
            self.metrics.executed(attempt.ended_at - attempt.started_at)

    def record(self, attempt: Attempt) -> str:
        """Turn the attempt's ending into the job's next state; returns that state."""
        outcome = attempt.outcome
        if outcome == ABANDONED:
            log.warning("job %s: lease lost, attempt %s abandoned", attempt.job.id, attempt.job.attempt,
                        extra={"action": "lease_lost", "job_id": attempt.job.id})
            return "lost"
        if outcome == UNSTARTED:
            return self._stopped_before_running(attempt)
        if outcome == SUCCESS:
            try:
                outputs = self._store_outputs(attempt)
            except JobFailure as exc:
                return self._fail(attempt, exc)
            if self.queue.complete(attempt.lease, outputs):
                log.info("job %s succeeded with %d outputs", attempt.job.id, len(outputs),
                         extra={"action": "succeeded", "job_id": attempt.job.id, "attempt": attempt.job.attempt,
                                "prompt_id": attempt.prompt_id})
                return "succeeded"
            log.warning("job %s attempt %s finished after its lease was lost; result discarded", attempt.job.id,
                        attempt.job.attempt, extra={"action": "lease_lost", "job_id": attempt.job.id})
            return "lost"
        if outcome == ERROR:
            failure = execution_error_from(attempt.error_event or {})
            if isinstance(failure, OutOfMemory):
                self.comfy.free_memory()
            return self._fail(attempt, failure)
        if outcome == INTERRUPTED:
            return self._interrupted(attempt)
        if outcome == FAILED and attempt.failure is not None:
            return self._fail(attempt, attempt.failure)
        return self._fail(attempt, PromptLost(f"attempt ended without a known outcome ({outcome})"))

    def _stopped_before_running(self, attempt: Attempt) -> str:
        if attempt.stop_reason == "cancel":
            return self._canceled(attempt)
        self.queue.release(attempt.lease, "worker shutting down before the job started")
        log.info("job %s released before it started", attempt.job.id,
                 extra={"action": "released", "job_id": attempt.job.id})
        return "queued"

    def _interrupted(self, attempt: Attempt) -> str:
        reason = attempt.stop_reason
        if reason == "cancel":
            return self._canceled(attempt)
        if reason == "shutdown":
            self.queue.release(attempt.lease, "worker shutting down; prompt interrupted")
            log.warning("job %s released: prompt interrupted for shutdown", attempt.job.id,
                        extra={"action": "released", "job_id": attempt.job.id})
            return "queued"
        if reason == "timeout":
            return self._fail(attempt, JobTimedOut(
                f"attempt ran longer than its timeout of {attempt.timeout:.0f}s and was interrupted"))
        return self._fail(attempt, PromptLost("ComfyUI interrupted the prompt (from outside comfyq)"))

    def _canceled(self, attempt: Attempt) -> str:
        confirmed = self._confirm_stopped(attempt.prompt_id)
        self.queue.finish_canceled(attempt.lease)
        log.info("job %s canceled (%s)", attempt.job.id, confirmed,
                 extra={"action": "canceled", "job_id": attempt.job.id, "prompt_id": attempt.prompt_id})
        return "canceled"

    def _confirm_stopped(self, prompt_id: str) -> str:
        """What ComfyUI's history says about a prompt we stopped (for the log)."""
        try:
            entry = self.comfy.history(prompt_id)
        except ComfyUnavailable:
            return "ComfyUI unreachable"
        if entry is None:
            return "removed from ComfyUI's queue before it ran"
        return f"history says {result_from_history(prompt_id, entry).outcome}"

    def _store_outputs(self, attempt: Attempt) -> list[dict[str, Any]]:
        entry = self.comfy.history(attempt.prompt_id)
        if entry is None:
            raise PromptLost(f"prompt {attempt.prompt_id} finished but ComfyUI has no history for it")
        stored = []
        for output in output_files(entry):
            data, content_type = self.comfy.view(output)
            obj = self.storage.put(object_key(attempt.job.id, attempt.job.attempt, output.filename), data,
                                   content_type)
            stored.append({**obj.to_record(), "node_id": output.node_id, "filename": output.filename})
            if self.metrics is not None:
                self.metrics.storage_bytes.inc(obj.size)
        return stored

    def _fail(self, attempt: Attempt, exc: JobFailure) -> str:
        job = attempt.job
        delay = retry_delay(job.attempt, self.settings.retry_base_seconds, self.settings.retry_max_seconds)
        row = self.queue.fail_attempt(job.lease, exc.to_record(), retryable=exc.retryable, delay_seconds=delay)
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
