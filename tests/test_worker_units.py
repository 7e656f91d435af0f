"""The worker's parts one at a time, with forced interleavings: the attempt state machine and dependency health on
their own (a clock the test moves), and the socket owner, the pipeline and the finisher against a real stand-in
process and a real Postgres, driven step by step from the test's thread."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

from comfyq.db import Database
from comfyq.errors import StorageUnavailable
from comfyq.jobs import ClaimedJob, JobQueue, Lease, NewJob
from comfyq.settings import Settings
from comfyq.storage import LocalStorage, StoredObject
from comfyq.worker.attempt import Attempt, InvalidTransition, Outcome, State
from comfyq.worker.cancel_listener import WAIT_SLICE_SECONDS, CancelListener
from comfyq.worker.comfy_client import ComfyClient
from comfyq.worker.comfy_socket import ComfySocket
from comfyq.worker.finisher import Finisher
from comfyq.worker.health import COMFYUI, STORAGE, DependencyHealth
from comfyq.worker.pipeline import Pipeline
from comfyq.worker.progress_writer import ProgressWriter
from tests.e2e_support import TINY_GRAPH, Stack, wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def claimed(job_id: int = 1, attempt: int = 1) -> ClaimedJob:
    return ClaimedJob(lease=Lease(job_id, attempt, "w"), graph=TINY_GRAPH, workflow=None, priority=0,
                      max_attempts=3, timeout_seconds=None, row={})


# The attempt state machine ----------------------------------------------------------------------------
def test_an_attempt_moves_through_its_states_and_ends_once() -> None:
    clock = Clock()
    attempt = Attempt(job=claimed(), timeout=10, clock=clock)
    assert attempt.state is State.WAITING and not attempt.overdue()
    clock.now += 1
    attempt.handed_over("p1")
    assert attempt.state is State.QUEUED and attempt.handed_at == 1001.0
    attempt.on_event("execution_start", {"prompt_id": "p1"})
    assert attempt.state is State.RUNNING and attempt.started_at == 1001.0
    attempt.on_event("executing", {"node": None, "prompt_id": "p1"})
    assert attempt.ended and attempt.outcome is Outcome.SUCCESS
    assert not attempt.end(Outcome.ERROR)  # a late second ending is ignored
    assert [state for state, _ in attempt.transitions] == [State.WAITING, State.QUEUED, State.RUNNING, State.ENDED]


def test_error_and_interrupt_events_decide_the_outcome_at_the_done_signal() -> None:
    failed = Attempt(job=claimed(), timeout=10)
    failed.handed_over("p")
    failed.on_event("execution_error", {"prompt_id": "p", "exception_type": "RuntimeError"})
    assert not failed.ended
    failed.on_event("executing", {"node": None, "prompt_id": "p"})
    assert failed.outcome is Outcome.ERROR
    assert failed.error_event == {"prompt_id": "p", "exception_type": "RuntimeError"}
    stopped = Attempt(job=claimed(), timeout=10)
    stopped.handed_over("p")
    stopped.on_event("execution_interrupted", {"prompt_id": "p"})
    stopped.on_event("executing", {"node": None, "prompt_id": "p"})
    assert stopped.outcome is Outcome.INTERRUPTED


def test_a_lost_prompt_goes_back_to_waiting_and_events_of_the_old_one_are_ignored() -> None:
    clock = Clock()
    attempt = Attempt(job=claimed(), timeout=10, clock=clock)
    attempt.handed_over("p1")
    attempt.on_event("execution_start", {"prompt_id": "p1"})
    attempt.lost()
    assert attempt.state is State.WAITING and attempt.resubmissions == 1
    assert attempt.handed_at is None and attempt.started_at is None and not attempt.overdue()
    attempt.on_event("executing", {"node": None, "prompt_id": "p1"})  # late: the attempt waits, nothing ends
    assert not attempt.ended
    attempt.handed_over("p2")
    assert attempt.state is State.QUEUED and attempt.prompt_id == "p2"


def test_transitions_the_machine_does_not_have_are_refused() -> None:
    attempt = Attempt(job=claimed(), timeout=10)
    with pytest.raises(InvalidTransition):
        attempt.lost()  # WAITING -> WAITING: it was never handed over
    attempt.end(Outcome.UNSTARTED)
    with pytest.raises(InvalidTransition):
        attempt.handed_over("p")  # ENDED is final


def test_the_timeout_runs_from_the_hand_over_and_quiet_time_from_the_last_evidence() -> None:
    clock = Clock()
    attempt = Attempt(job=claimed(), timeout=10, clock=clock)
    clock.now += 100  # waiting for ComfyUI does not count
    assert not attempt.overdue()
    attempt.handed_over("p")
    clock.now += 10.5
    assert attempt.overdue()
    assert attempt.quiet_for() == pytest.approx(10.5)
    attempt.evidence()
    assert attempt.quiet_for() == 0


# Dependency health ------------------------------------------------------------------------------------
def test_health_backs_off_with_jitter_and_one_outage_reported_twice_keeps_its_schedule() -> None:
    clock = Clock()
    changes: list[tuple[str, bool]] = []
    health = DependencyHealth(backoff_min=1, backoff_max=8, clock=clock, rng=random.Random(7),
                              on_change=lambda name, up: changes.append((name, up)))
    assert health.all_up() and health.seconds_to_next_probe() is None
    delays = []
    for _ in range(6):
        health.down(COMFYUI, "refused")
        delay = health.seconds_to_next_probe()
        assert delay is not None
        health.down(COMFYUI, "refused again, same outage")  # before the probe is due: no new schedule
        assert health.seconds_to_next_probe() == delay
        delays.append(delay)
        clock.now += delay
        assert health.probe_due(COMFYUI)
    ceilings = [1, 2, 4, 8, 8, 8]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings))
    assert not health.all_up() and health.down_names() == [COMFYUI]
    assert health.down_for(COMFYUI) == pytest.approx(sum(delays))
    health.up(COMFYUI)
    assert health.all_up() and changes == [(COMFYUI, False), (COMFYUI, True)]


def test_a_reconnected_socket_brings_the_probe_forward() -> None:
    clock = Clock()
    health = DependencyHealth(backoff_min=10, backoff_max=30, clock=clock)
    health.down(COMFYUI, "refused")
    assert not health.probe_due(COMFYUI)
    health.probe_soon(COMFYUI)
    assert health.probe_due(COMFYUI) and not health.is_up(COMFYUI)  # only a probe says it is up


# The socket owner and the pipeline, against a real stand-in --------------------------------------------
class GatedConnector:
    """Counts connections; from the second one on, blocks until the test opens the gate (the owner is then
    stuck reconnecting, exactly when the old code let the claim path open a socket of its own)."""

    def __init__(self) -> None:
        self.calls = 0
        self.blocked = threading.Event()
        self.gate = threading.Event()

    def __call__(self, url: str, timeout: float) -> websocket.WebSocket:
        self.calls += 1
        if self.calls > 1:
            self.blocked.set()
            self.gate.wait(30)
        return websocket.create_connection(url, timeout=timeout)


@pytest.fixture
def parts(stack: Stack, db: Database, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A pipeline of real parts the test drives itself, plus what it needs to restart ComfyUI."""
    proc, url = stack.standin("--node-seconds", "0.05")
    settings = Settings(comfyui_url=url, storage_dir=tmp_path / "out", history_poll_seconds=0.5,
                        outage_backoff_min_seconds=0.1, outage_backoff_max_seconds=0.5)
    queue = JobQueue(db, lease_seconds=30)
    health = DependencyHealth(backoff_min=0.1, backoff_max=0.5)
    connector = GatedConnector()
    socket = ComfySocket(url, "comfyq-unit", connect_timeout=1, connector=connector).start()
    recorded: list[tuple[int, str]] = []
    finisher = Finisher(settings, queue, ComfyClient(url, "comfyq-unit", connect_timeout=1, request_timeout=2),
                        LocalStorage(settings.storage_dir), health,
                        lambda attempt, status: recorded.append((attempt.job.id, status)))
    progress = ProgressWriter(queue, 0.1).start()
    pipeline = Pipeline(settings, queue, ComfyClient(url, "comfyq-unit", connect_timeout=1, request_timeout=2),
                        socket, finisher, health, progress, "w-unit", track=lambda a: None, untrack=lambda a: None)
    try:
        yield {"pipeline": pipeline, "queue": queue, "socket": socket, "connector": connector, "proc": proc,
               "url": url, "recorded": recorded, "health": health, "finisher": finisher}
    finally:
        connector.gate.set()
        socket.close()
        progress.close()
        finisher.close(timeout=5)


def drive(pipeline: Pipeline, until: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "the pipeline did not get there in time"
        pipeline.step()
        time.sleep(0.05)


def test_a_prompt_handed_over_while_the_socket_reconnects_still_ends(stack: Stack, parts: dict[str, Any]) -> None:
    """The race behind a worker that hung for good: the socket dropped, its owner is reconnecting, a job is
    handed over meanwhile. Nobody else may open a socket, and the job must still end, through /history."""
    pipeline, queue, socket, connector = parts["pipeline"], parts["queue"], parts["socket"], parts["connector"]
    assert socket.wait_connected(10)
    port = int(parts["url"].rsplit(":", 1)[1])
    parts["proc"].kill()
    stack.processes.remove(parts["proc"])
    assert connector.blocked.wait(10), "the owner never tried to reconnect"
    stack.standin("--node-seconds", "0.05", port=port, name="comfyui-standin-2")
    job_id = queue.enqueue(NewJob(graph=TINY_GRAPH))["id"]
    job = queue.claim("w-unit")
    assert job is not None and job.id == job_id
    pipeline.check_comfyui()
    pipeline.accept(job)
    drive(pipeline, lambda: parts["recorded"], 15)
    assert parts["recorded"] == [(job_id, "succeeded")]
    assert connector.calls == 2 and not socket.connected  # the hand-over opened no socket of its own
    connector.gate.set()
    assert socket.wait_connected(10) and socket.generation == 2


def test_a_prompt_comfyui_lost_is_submitted_again_under_the_same_attempt(stack: Stack, parts: dict[str, Any],
                                                                        sql: Any) -> None:
    pipeline, queue = parts["pipeline"], parts["queue"]
    job_id = queue.enqueue(NewJob(graph=TINY_GRAPH))["id"]
    job = queue.claim("w-unit")
    assert job is not None
    attempt = pipeline.accept(job)
    pipeline.step()
    assert attempt.state is State.QUEUED
    first = attempt.prompt_id
    port = int(parts["url"].rsplit(":", 1)[1])
    parts["proc"].kill()  # ComfyUI forgets everything, as a real restart does, and refuses for a second
    stack.processes.remove(parts["proc"])
    stack.standin("--node-seconds", "0.05", "--startup-delay", "1", port=port, name="comfyui-standin-2")
    parts["connector"].gate.set()
    drive(pipeline, lambda: parts["recorded"], 15)
    assert parts["recorded"] == [(job_id, "succeeded")] and attempt.resubmissions >= 1 and attempt.prompt_id != first
    sql.execute("SELECT attempts FROM job_queue WHERE id = %s", (job_id,))
    assert sql.fetchone() == (1,)


# The finisher -------------------------------------------------------------------------------------------
class FailingFirst:
    """Storage at the edge: refuses the first `failures` writes as a full disk would, then writes for real."""

    def __init__(self, storage: LocalStorage, failures: int) -> None:
        self.storage = storage
        self.failures = failures

    def put(self, key: str, data: bytes, content_type: str) -> StoredObject:
        if self.failures > 0:
            self.failures -= 1
            raise StorageUnavailable("No space left on device")
        return self.storage.put(key, data, content_type)

    def presigned_url(self, key: str, expires_seconds: int) -> str | None:
        return None

    def delete(self, keys: list[str]) -> int:
        return self.storage.delete(keys)


def finished_attempt(queue: JobQueue, url: str) -> Attempt:
    """A real claim whose prompt really ran in the stand-in, ended as the pipeline would end it."""
    queue.enqueue(NewJob(graph=TINY_GRAPH))
    job = queue.claim("w-unit")
    assert job is not None
    comfy = ComfyClient(url, "comfyq-unit-finisher")
    prompt_id = str(uuid.uuid4())
    comfy.submit(TINY_GRAPH, prompt_id)
    entry = wait_until(lambda: comfy.history(prompt_id), 10, "the prompt to run")
    attempt = Attempt(job=job, timeout=30)
    attempt.handed_over(prompt_id)
    attempt.end(Outcome.SUCCESS, history=entry)
    return attempt


def test_the_finisher_waits_out_a_storage_outage_and_spends_no_attempt(stack: Stack, db: Database,
                                                                     tmp_path: Path) -> None:
    _, url = stack.standin()
    queue = JobQueue(db, lease_seconds=30)
    settings = Settings(comfyui_url=url, outage_backoff_min_seconds=0.05, outage_backoff_max_seconds=0.2)
    health = DependencyHealth(backoff_min=0.05, backoff_max=0.2)
    changes: list[bool] = []
    health.on_change = lambda name, up: changes.append(up) if name == STORAGE else None
    recorded: list[str] = []
    finisher = Finisher(settings, queue, ComfyClient(url, "f"), FailingFirst(LocalStorage(tmp_path), 3),  # type: ignore[arg-type]
                        health, lambda attempt, status: recorded.append(status))
    try:
        attempt = finished_attempt(queue, url)
        finisher.submit(attempt)
        wait_until(lambda: recorded, 10, "the attempt to be recorded")
    finally:
        finisher.close(timeout=5)
    assert recorded == ["succeeded"] and changes == [False, True]
    row = queue.get(attempt.job.id, "default")
    assert row is not None and row["attempts"] == 1 and len(row["outputs"]) == 1
    outage = [r for r in queue.logs(attempt.job.id) if r["event"] == "outage"]
    assert len(outage) == 1 and outage[0]["details"]["dependency"] == "storage"


def test_a_lease_lost_while_waiting_for_storage_writes_nothing(stack: Stack, db: Database, tmp_path: Path) -> None:
    _, url = stack.standin()
    queue = JobQueue(db, lease_seconds=30)
    settings = Settings(comfyui_url=url, outage_backoff_min_seconds=0.05, outage_backoff_max_seconds=0.1)
    health = DependencyHealth(backoff_min=0.05, backoff_max=0.1)
    recorded: list[str] = []
    storage = FailingFirst(LocalStorage(tmp_path), 10_000)
    finisher = Finisher(settings, queue, ComfyClient(url, "f"), storage, health,  # type: ignore[arg-type]
                        lambda attempt, status: recorded.append(status))
    try:
        attempt = finished_attempt(queue, url)
        finisher.submit(attempt)
        time.sleep(0.3)
        assert not recorded and finisher.pending == 1  # still waiting at the head of the line
        attempt.lease_lost.set()  # the heartbeat found the job owned by another worker
        wait_until(lambda: recorded, 10, "the finisher to give the attempt up")
    finally:
        finisher.close(timeout=5)
    assert recorded == ["lost"]
    row = queue.get(attempt.job.id, "default")
    assert row is not None and row["status"] == "running" and row["outputs"] in (None, [])


# The cancel listener ------------------------------------------------------------------------------------
def test_the_cancel_listener_hears_a_cancel_and_its_close_does_not_wait_out_a_slice(queue: JobQueue,
                                                                                      sql: Any) -> None:
    """close() wakes the LISTEN wait through a pipe: a worker's shutdown (every --burst exit and SIGTERM) used to
    wait up to a whole wait slice (WAIT_SLICE_SECONDS, 1 s) for the thread."""
    heard: list[int] = []
    listener = CancelListener(queue, heard.append).start()
    try:
        def notified() -> list[int]:
            sql.execute("SELECT pg_notify('comfyq_cancel', '42')")  # until the listener has said LISTEN
            return heard
        wait_until(notified, 10, "the listener to hear the cancel", interval=0.05)
        time.sleep(0.1)  # back in its wait on the LISTEN socket
    finally:
        started = time.monotonic()
        listener.close()
        took = time.monotonic() - started
    assert set(heard) == {42}
    assert took < WAIT_SLICE_SECONDS / 4, f"close() took {took:.2f} s"
