"""One attempt of one job inside ComfyUI: its prompt id, what the WebSocket said about it, the flags other
threads raise (cancel, lease lost, shutdown) and how it ended."""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from comfyq.errors import ComfyqError, JobFailure
from comfyq.jobs import ClaimedJob, JobQueue, Lease

log = logging.getLogger(__name__)

SAVE_NODE_TYPES = frozenset({"SaveImage", "SaveAnimatedWEBP", "SaveAnimatedPNG", "SaveVideo", "SaveAudio"})

# How an attempt ended, as the finisher needs to know it.
SUCCESS = "success"            # execution_success: fetch and store outputs
ERROR = "error"                # execution_error: classify (OOM is transient)
INTERRUPTED = "interrupted"    # execution_interrupted: why depends on stop_reason
FAILED = "failed"              # a JobFailure before or instead of a run (rejected, lost, ComfyUI down)
UNSTARTED = "unstarted"        # taken back out of ComfyUI's queue before it ran (cancel, shutdown)
ABANDONED = "abandoned"        # the lease was lost: nothing more may be written


def prepare_graph(graph: dict[str, Any], job_id: int, attempt: int) -> dict[str, Any]:
    """Give every save node a prefix unique to this attempt: files never collide across jobs, and a retry is
    never a fully cached replay that writes no new file."""
    prepared = copy.deepcopy(graph)
    for node in prepared.values():
        if isinstance(node, dict) and node.get("class_type") in SAVE_NODE_TYPES:
            node.setdefault("inputs", {})["filename_prefix"] = f"comfyq/{job_id}-{attempt}"
    return prepared


@dataclass(eq=False)
class Attempt:
    job: ClaimedJob
    prompt_id: str
    timeout: float
    progress: ProgressReporter | None = None
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    lease_lost: threading.Event = field(default_factory=threading.Event)
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    ended_at: float | None = None
    blind: bool = False             # the socket dropped while it was in flight: poll history for its end
    interrupt_sent: bool = False
    stop_reason: str | None = None  # cancel | timeout | shutdown | lease_lost
    outcome: str | None = None
    error_event: dict[str, Any] | None = None
    interrupted_event: bool = False
    failure: JobFailure | None = None
    on_done: Callable[[], None] = lambda: None  # wakes the pipeline
    _done: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def lease(self) -> Lease:
        return self.job.lease

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        """Called by the event reader for every event that names our prompt id."""
        if kind == "execution_start" and self.started_at is None:
            self.started_at = time.monotonic()
        elif kind == "execution_error":
            self.error_event = data
        elif kind == "executing" and data.get("node") is None:
            if self.error_event is not None:
                self.finish(ERROR)
            elif self.interrupted_event:
                self.finish(INTERRUPTED)
            else:
                self.finish(SUCCESS)
            return
        if kind == "execution_interrupted":
            self.interrupted_event = True
        if self.progress is not None:
            self.progress.on_event(kind, data)

    def finish(self, outcome: str, *, failure: JobFailure | None = None,
               error_event: dict[str, Any] | None = None) -> bool:
        """Record the ending once; later endings (a late event after polling found it) are ignored."""
        with self._lock:
            if self._done.is_set():
                return False
            self.outcome = outcome
            self.ended_at = time.monotonic()
            self.failure = failure
            if error_event is not None:
                self.error_event = error_event
            self._done.set()
        self.on_done()
        return True

    def running_for(self) -> float:
        return time.monotonic() - (self.started_at or self.submitted_at)


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
