"""One attempt of one job, as an explicit state machine owned by the worker's main thread:

    WAITING --hand_over--> QUEUED --started--> RUNNING --end--> ENDED
       ^                      |                   |
       +------- lost ---------+-------------------+        (ComfyUI forgot the prompt: submit it again)

WAITING: claimed, not (or no longer) in ComfyUI; handed over when ComfyUI and the database are up. QUEUED: in
ComfyUI's queue; the timeout runs from here. RUNNING: ComfyUI executes it. ENDED: the outcome is known and the
finisher records it. Every state keeps the time of the last evidence of life, so a prompt that has gone quiet
is looked up in /history and /queue whatever the WebSocket does. Other threads only raise the two flags."""

from __future__ import annotations

import copy
import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from comfyq.errors import JobFailure
from comfyq.jobs import ClaimedJob, Lease

SAVE_NODE_TYPES = frozenset({"SaveImage", "SaveAnimatedWEBP", "SaveAnimatedPNG", "SaveVideo", "SaveAudio"})


class State(enum.Enum):
    WAITING = "waiting"
    QUEUED = "queued"
    RUNNING = "running"
    ENDED = "ended"


class Outcome(enum.Enum):
    """How an attempt ended, as the finisher needs to know it."""

    SUCCESS = "success"          # ComfyUI ran it to the end: fetch and store the outputs
    ERROR = "error"              # execution_error: classify (out-of-memory is transient)
    INTERRUPTED = "interrupted"  # execution_interrupted: what it means depends on stop_reason
    FAILED = "failed"            # the job's own failure before or instead of a run (rejected graph, bad input)
    UNSTARTED = "unstarted"      # taken back before it ran (cancel, shutdown)
    RELEASED = "released"        # handed back to the queue without spending the attempt (outage budget, shutdown)
    ABANDONED = "abandoned"      # the lease was lost: nothing more may be written


ALLOWED = {
    State.WAITING: {State.QUEUED, State.ENDED},
    State.QUEUED: {State.RUNNING, State.WAITING, State.ENDED},
    State.RUNNING: {State.WAITING, State.ENDED},
    State.ENDED: set(),
}


class InvalidTransition(RuntimeError):
    """A bug: the pipeline asked for a transition the state machine does not have."""


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
    timeout: float
    clock: Callable[[], float] = time.monotonic
    state: State = State.WAITING
    prompt_id: str | None = None
    graph: dict[str, Any] | None = None       # prepared once, submitted again unchanged after a lost prompt
    progress: ProgressTracker | None = None
    outcome: Outcome | None = None
    stop_reason: str | None = None            # cancel | timeout | shutdown | lease_lost | outage
    failure: JobFailure | None = None
    error_event: dict[str, Any] | None = None
    history: dict[str, Any] | None = None     # the /history entry, when polling found the end
    release_reason: str = ""
    resubmissions: int = 0
    server_errors: int = 0                    # 5xx answers to POST /prompt while ComfyUI otherwise answered
    stored: list[dict[str, Any]] = field(default_factory=list)  # outputs already in storage (finisher)
    waited_for: dict[str, float] = field(default_factory=dict)  # finisher: outage seconds per dependency
    interrupt_sent_at: float | None = None
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    lease_lost: threading.Event = field(default_factory=threading.Event)
    claimed_at: float = 0.0
    handed_at: float | None = None            # POST /prompt accepted: the timeout runs from here
    started_at: float | None = None
    ended_at: float | None = None
    last_evidence_at: float = 0.0
    last_poll_at: float = 0.0
    transitions: list[tuple[State, float]] = field(default_factory=list)
    _interrupted_event: bool = False

    def __post_init__(self) -> None:
        now = self.clock()
        self.claimed_at = self.last_evidence_at = now
        self.transitions.append((self.state, now))

    @property
    def lease(self) -> Lease:
        return self.job.lease

    @property
    def ended(self) -> bool:
        return self.state is State.ENDED

    @property
    def in_comfyui(self) -> bool:
        return self.state in (State.QUEUED, State.RUNNING)

    def _move(self, to: State) -> None:
        if to not in ALLOWED[self.state]:
            raise InvalidTransition(f"job {self.job.id}: {self.state.value} -> {to.value}")
        now = self.clock()
        self.state = to
        self.last_evidence_at = now
        self.transitions.append((to, now))

    # Transitions ------------------------------------------------------------------------------------
    def handed_over(self, prompt_id: str) -> None:
        """POST /prompt accepted `prompt_id`."""
        self._move(State.QUEUED)
        self.prompt_id = prompt_id
        self.handed_at = self.clock()
        self.started_at = None

    def started(self) -> None:
        if self.state is State.QUEUED:
            self._move(State.RUNNING)
            self.started_at = self.clock()
        else:
            self.evidence()

    def lost(self) -> None:
        """ComfyUI has neither queued nor finished the prompt (it restarted): wait to submit it again."""
        self._move(State.WAITING)
        self.resubmissions += 1
        self.handed_at = self.started_at = self.interrupt_sent_at = None
        self.error_event = None
        self._interrupted_event = False

    def end(self, outcome: Outcome, *, failure: JobFailure | None = None,
            error_event: dict[str, Any] | None = None, history: dict[str, Any] | None = None) -> bool:
        """Record the ending once; a second ending (a late event after polling found it) is ignored."""
        if self.state is State.ENDED:
            return False
        self._move(State.ENDED)
        self.outcome = outcome
        self.ended_at = self.clock()
        self.failure = failure
        if error_event is not None:
            self.error_event = error_event
        if history is not None:
            self.history = history
        return True

    def evidence(self) -> None:
        """Something showed the prompt alive (an event, or /queue listing it)."""
        self.last_evidence_at = self.clock()

    # Events -----------------------------------------------------------------------------------------
    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        """An event that names our prompt id; `executing {node: null}` is ComfyUI's done signal."""
        if self.state is State.ENDED or self.state is State.WAITING:
            return  # a late event of an ended attempt, or of a prompt ComfyUI lost
        if kind == "execution_start" or (kind == "executing" and data.get("node") is not None):
            self.started()
            return
        self.evidence()
        if kind == "execution_error":
            self.error_event = data
        elif kind == "execution_interrupted":
            self._interrupted_event = True
        elif kind == "executing" and data.get("node") is None:
            if self.error_event is not None:
                self.end(Outcome.ERROR)
            elif self._interrupted_event:
                self.end(Outcome.INTERRUPTED)
            else:
                self.end(Outcome.SUCCESS)

    def look_up_now(self) -> None:
        """Make the next look-up in /queue and /history include this attempt, however recent its last event."""
        self.last_evidence_at = self.last_poll_at = float("-inf")

    # Clocks -----------------------------------------------------------------------------------------
    def quiet_for(self) -> float:
        return self.clock() - max(self.last_evidence_at, self.last_poll_at)

    def overdue(self) -> bool:
        """Past its timeout, counted from the hand-over to ComfyUI (queued time included)."""
        return self.handed_at is not None and self.clock() - self.handed_at > self.timeout

    def execution_seconds(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at


class ProgressTracker:
    """Turns the chatty event stream into a fraction and the current node (written at a bounded rate by the
    ProgressWriter, never from here)."""

    def __init__(self, node_count: int) -> None:
        self.node_count = max(1, node_count)
        self.done_nodes: set[str] = set()
        self.current_node: str | None = None
        self.step_fraction = 0.0

    def on_event(self, kind: str, data: dict[str, Any]) -> bool:
        """Returns True when the progress changed."""
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
            return False
        return True

    @property
    def fraction(self) -> float:
        return min(0.99, (len(self.done_nodes) + self.step_fraction) / self.node_count)
