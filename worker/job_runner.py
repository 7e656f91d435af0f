"""One job attempt from claim to a final write: prepare the graph, submit, wait for the done signal, fetch
and store outputs, then complete, retry, fail or cancel, all fenced by the lease."""

from __future__ import annotations

import copy
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from comfyq_worker.comfy_client import ComfyClient, execution_error_from, output_files

from comfyq.backoff import retry_delay
from comfyq.errors import (
    ComfyqError,
    JobFailure,
    JobTimedOut,
    PromptLost,
    TransientFailure,
)
from comfyq.jobs import ClaimedJob, JobQueue, Lease
from comfyq.settings import Settings
from comfyq.storage import Storage, object_key

log = logging.getLogger(__name__)

SAVE_NODE_TYPES = frozenset({"SaveImage", "SaveAnimatedWEBP", "SaveAnimatedPNG", "SaveVideo", "SaveAudio"})


@dataclass
class AttemptControl:
    """Flags other threads raise for the running attempt: the heartbeat (cancel, lease lost) and the
    signal handler (forced shutdown)."""

    lease: Lease
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    lease_lost: threading.Event = field(default_factory=threading.Event)
    force_stop: threading.Event = field(default_factory=threading.Event)

    def should_stop(self) -> bool:
        return self.cancel_requested.is_set() or self.lease_lost.is_set() or self.force_stop.is_set()


class Released(ComfyqError):
    """The attempt was handed back (forced shutdown) or taken away (lease lost); nothing more to write."""


def prepare_graph(graph: dict[str, Any], job_id: int, attempt: int) -> dict[str, Any]:
    """Give every save node a prefix unique to this attempt: files never collide across jobs, and a retry is
    never a fully cached replay that writes no new file."""
    prepared = copy.deepcopy(graph)
    for node in prepared.values():
        if isinstance(node, dict) and node.get("class_type") in SAVE_NODE_TYPES:
            node.setdefault("inputs", {})["filename_prefix"] = f"comfyq/{job_id}-{attempt}"
    return prepared


class JobRunner:
    """Runs attempts against one ComfyUI; owned by one worker thread."""

    def __init__(self, settings: Settings, queue: JobQueue, comfy: ComfyClient, storage: Storage) -> None:
        self.settings = settings
        self.queue = queue
        self.comfy = comfy
        self.storage = storage

    def run(self, job: ClaimedJob, control: AttemptControl) -> str:
        """Drive the attempt to an end and record it; returns the job's resulting status."""
        lease = job.lease
        started = time.monotonic()
        try:
            outputs = self._execute(job, control)
        except Released as exc:
            return self._release(lease, control, str(exc))
        except JobFailure as exc:
            return self._record_failure(job, exc)
        except ComfyqError as exc:  # database trouble mid-attempt: the lease will expire and be rescued
            log.error("job %s attempt %s could not be recorded: %s", job.id, job.attempt, exc,
                      extra={"action": "record_failed", "job_id": job.id})
            return "unknown"
        if self.queue.complete(lease, outputs):
            log.info("job %s succeeded in %.2fs with %d outputs", job.id, time.monotonic() - started,
                     len(outputs), extra={"action": "succeeded", "job_id": job.id, "attempt": job.attempt})
            return "succeeded"
        log.warning("job %s attempt %s finished after its lease was lost; result discarded", job.id,
                    job.attempt, extra={"action": "lease_lost", "job_id": job.id})
        return "lost"

    def _execute(self, job: ClaimedJob, control: AttemptControl) -> list[dict[str, Any]]:
        lease = job.lease
        prompt_id = str(uuid.uuid4())
        graph = prepare_graph(job.graph, job.id, job.attempt)
        timeout = float(job.timeout_seconds or self.settings.job_timeout_seconds)
        deadline = time.monotonic() + timeout
        self.queue.set_prompt_id(lease, prompt_id)
        sock = self.comfy.open_socket()
        try:
            self.comfy.submit(graph, prompt_id)
            progress = ProgressReporter(self.queue, lease, len(graph), self.settings.progress_min_interval_seconds)
            result = self.comfy.wait(sock, prompt_id, deadline=deadline, on_event=progress.on_event,
                                     should_stop=control.should_stop)
        finally:
            sock.close()
        if result.outcome == "stopped":
            self._stop_prompt(prompt_id)
            if control.cancel_requested.is_set():
                raise _Canceled("canceled while running")
            if control.lease_lost.is_set():
                raise Released("lease lost")
            if control.force_stop.is_set():
                raise Released("worker shutting down")
            raise JobTimedOut(f"attempt ran longer than its timeout of {timeout:.0f}s and was interrupted")
        if result.outcome == "interrupted":
            if control.cancel_requested.is_set():
                raise _Canceled("canceled while running")
            raise PromptLost("ComfyUI interrupted the prompt (interrupted from outside comfyq)")
        if result.outcome == "error":
            raise execution_error_from(result.error or {})
        entry = self.comfy.history(prompt_id)
        if entry is None:
            raise PromptLost(f"prompt {prompt_id} finished but ComfyUI has no history for it")
        stored = []
        for output in output_files(entry):
            data, content_type = self.comfy.view(output)
            obj = self.storage.put(object_key(job.id, job.attempt, output.filename), data, content_type)
            stored.append({**obj.to_record(), "node_id": output.node_id, "filename": output.filename})
        return stored

    def _stop_prompt(self, prompt_id: str) -> None:
        """Take our prompt out of ComfyUI: drop it from the pending queue or interrupt it if it runs."""
        self.comfy.delete_queued([prompt_id])
        self.comfy.interrupt(prompt_id)

    def _record_failure(self, job: ClaimedJob, exc: JobFailure) -> str:
        if isinstance(exc, _Canceled):
            self.queue.finish_canceled(job.lease)
            log.info("job %s canceled while running", job.id, extra={"action": "canceled", "job_id": job.id})
            return "canceled"
        delay = retry_delay(job.attempt, self.settings.retry_base_seconds, self.settings.retry_max_seconds)
        row = self.queue.fail_attempt(job.lease, exc.to_record(), retryable=exc.retryable, delay_seconds=delay)
        if row is None:
            log.warning("job %s attempt %s failed after its lease was lost", job.id, job.attempt,
                        extra={"action": "lease_lost", "job_id": job.id})
            return "lost"
        if row["status"] == "queued":
            log.warning("job %s attempt %s failed (%s), retry in %.1fs: %s", job.id, job.attempt,
                        exc.error_type, delay, exc.message, extra={"action": "retry_scheduled", "job_id": job.id})
        else:
            log.error("job %s failed after attempt %s (%s): %s", job.id, job.attempt, exc.error_type, exc.message,
                      extra={"action": "failed", "job_id": job.id})
        return str(row["status"])

    def _release(self, lease: Lease, control: AttemptControl, reason: str) -> str:
        if control.lease_lost.is_set():
            log.warning("job %s: lease lost, abandoning attempt %s", lease.job_id, lease.attempt,
                        extra={"action": "lease_lost", "job_id": lease.job_id})
            return "lost"
        self.queue.release(lease, reason)
        log.warning("job %s released: %s", lease.job_id, reason, extra={"action": "released", "job_id": lease.job_id})
        return "queued"


class _Canceled(JobFailure):
    """Internal: the attempt stopped because the job was canceled."""

    error_type = "canceled"


class ProgressReporter:
    """Turns the chatty event stream into at most a few progress writes per second."""

    def __init__(self, queue: JobQueue, lease: Lease, node_count: int, min_interval: float) -> None:
        self.queue = queue
        self.lease = lease
        self.node_count = max(1, node_count)
        self.min_interval = min_interval
        self.done_nodes: set[str] = set()
        self.current_node: str | None = None
        self.step_fraction = 0.0
        self._last_write = 0.0

    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "execution_cached":
            self.done_nodes.update(str(n) for n in data.get("nodes", []))
        elif kind == "executing" and data.get("node") is not None:
            if self.current_node is not None:
                self.done_nodes.add(self.current_node)
            self.current_node = str(data["node"])
            self.step_fraction = 0.0
        elif kind == "progress" and data.get("max"):
            self.step_fraction = min(1.0, (float(data.get("value", 0)) + 1) / float(data["max"]))
        else:
            return
        now = time.monotonic()
        if now - self._last_write < self.min_interval:
            return
        self._last_write = now
        fraction = (len(self.done_nodes) + self.step_fraction) / self.node_count
        try:
            self.queue.update_progress(self.lease, min(0.99, fraction), self.current_node)
        except ComfyqError as exc:  # progress is best effort; the attempt goes on
            log.warning("progress write for job %s failed: %s", self.lease.job_id, exc)


__all__ = ["AttemptControl", "JobRunner", "TransientFailure", "prepare_graph"]
