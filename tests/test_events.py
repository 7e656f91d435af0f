"""The events process (`comfyq events`) as a real child against a real database, worker and stand-in: per-job
and tenant-wide streams over SSE and WebSocket, Last-Event-ID resumes (two transactions committing out of
order), tenant isolation, bounded waits, dropping subscribers that stop reading, stream tokens, heartbeats."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from comfyq.db import Database
from comfyq.errors import DatabaseError
from comfyq.jobs import JobQueue, NewJob
from comfyq.migrate import migrate
from comfyq.processes import ManagedProcess
from comfyq.settings import PROJECT_ROOT
from comfyq.stack import start_api
from comfyq.stream_tokens import StreamCaller as Caller
from comfyq.stream_tokens import StreamTokens
from comfyq.workflows import load_workflows
from tests.e2e_support import TINY_GRAPH, Stack, wait_until
from tests.support.api_app import bearer
from tests.support.events_client import EVENTS_READY, SseReader, WsReader, start_events
from tests.support.private_pg import private_postgres

pytestmark = pytest.mark.slow
SECRET = "s" * 40


@pytest.fixture
def events(tmp_path: Path, db_url: str) -> Iterator[tuple[ManagedProcess, str]]:
    proc, url = start_events(tmp_path / "logs", {
        "DATABASE_URL": db_url, "COMFYQ_EVENTS_HEARTBEAT_SECONDS": "0.3", "COMFYQ_EVENTS_GAP_WAIT_SECONDS": "10",
        "COMFYQ_EVENTS_POLL_SECONDS": "5", "COMFYQ_EVENTS_STREAM_SECRET": SECRET, "COMFYQ_TOKEN_CACHE_SECONDS": "0",
        "COMFYQ_EVENTS_SUBSCRIBER_BUFFER": "64", "COMFYQ_STORAGE_DIR": str(tmp_path / "outputs")})
    try:
        yield proc, url
    finally:
        proc.stop(timeout=10)


def _job(tenant: str = "default") -> NewJob:
    return NewJob(graph=TINY_GRAPH, workflow=None, tenant=tenant)


def _logged(db: Database, job_id: int | None = None) -> list[tuple[int, str]]:
    """(id, event) of every job_logs row of the default tenant (or of one of its jobs), in id order."""
    return [(int(r["id"]), str(r["event"])) for r in db.fetch_all(
        "events_between", {"tenant": "default", "after": 0, "upto": 2**62, "job_id": job_id, "limit": 100_000})]


class Collector(threading.Thread):
    """Reads a stream to its end on a thread of its own."""

    def __init__(self, reader: SseReader | WsReader) -> None:
        super().__init__(daemon=True)
        self.reader = reader
        self.messages: list[dict[str, Any]] = []
        self.ids: list[int | None] = []
        self.closed = threading.Event()
        self._stopping = False

    def run(self) -> None:
        try:
            if isinstance(self.reader, SseReader):
                for message in self.reader.events():
                    self.messages.append({**message.data, "event": message.event})
                    self.ids.append(message.id)
            else:
                for data in self.reader.events():
                    self.messages.append(data)
                    self.ids.append(data.get("id"))
        except Exception:
            if not self._stopping:
                raise  # a read failing under the test's own close() is no failure
        finally:
            self.closed.set()

    def stop(self) -> None:
        self._stopping = True
        self.reader.close()
        self.join(5)


def test_a_retried_job_streams_every_transition_in_order_over_sse_and_ws(
        stack: Stack, db: Database, queue: JobQueue, events: tuple[ManagedProcess, str]) -> None:
    """A job that fails once (out of memory) and then succeeds, with progress while its sampler runs."""
    _, url = events
    _, comfy = stack.standin("--fail", "oom", "--sampler-step-seconds", "0.1")
    headers = bearer(db, "default", "submitter")
    workflow = load_workflows(PROJECT_ROOT / "workflows")["txt2img"]
    params = workflow.resolve_params({"prompt": "a lighthouse", "steps": 10, "width": 64, "height": 64})
    job_id = queue.enqueue(NewJob(graph=workflow.render(params), workflow="txt2img", params=params))["id"]
    sse = Collector(SseReader(f"{url}/jobs/{job_id}/events", headers))
    ws = Collector(WsReader(f"{url}/ws/jobs/{job_id}", headers))
    sse.start()
    ws.start()
    wait_until(lambda: sse.messages and ws.messages, 10, "both snapshots")
    stack.worker("w1", retry_base_seconds="1")
    wait_until(lambda: any(m["event"] == "retry_scheduled" for m in sse.messages), 30, "the retry")
    requests.post(f"{comfy}/standin/control", json={"fail": "none"}, timeout=5).raise_for_status()
    assert sse.closed.wait(60) and ws.closed.wait(10), "the streams close after the final state"
    logged = _logged(db, job_id)
    assert [e for _, e in logged].count("retry_scheduled") >= 1 and logged[-1][1] == "succeeded"
    for collector in (sse, ws):
        assert collector.messages[0]["event"] == "snapshot"
        assert collector.messages[0]["job"]["status"] == "queued"
        transitions = [(i, m["event"]) for i, m in zip(collector.ids, collector.messages)
                       if m["event"] not in ("snapshot", "progress")]
        # Every row logged after the snapshot, once each, in order; the stream ends with the success.
        assert transitions == [row for row in logged if row[1] != "queued"]
        progress = [m for m in collector.messages if m["event"] == "progress"]
        assert progress and all(m["status"] == "running" and m["job_id"] == job_id for m in progress)
        assert any(m["current_node"] for m in progress) and 0 < max(m["progress"] for m in progress) <= 1
        retry = next(m for m in collector.messages if m["event"] == "retry_scheduled")
        assert retry["error"]["type"] or retry["details"]
        final = collector.messages[-1]
        assert final["event"] == "succeeded" and final["outputs"] and final["outputs"][0]["url"].startswith("http")
    # EventSource reconnects after a close: a reconnect after the final event is told 204 (stop), one from
    # before it gets the rest.
    after_end = requests.get(f"{url}/jobs/{job_id}/events", headers={**headers, "Last-Event-ID": str(logged[-1][0])},
                             timeout=10)
    assert after_end.status_code == 204
    rest = SseReader(f"{url}/jobs/{job_id}/events", {**headers, "Last-Event-ID": str(logged[-2][0])})
    assert [(m.id, m.event) for m in rest.events()] == [logged[-1]]


def test_last_event_id_resumes_without_gaps_across_out_of_order_commits(
        db: Database, queue: JobQueue, events: tuple[ManagedProcess, str]) -> None:
    _, url = events
    headers = bearer(db, "default", "submitter")
    job_id = queue.enqueue(_job())["id"]
    live = Collector(SseReader(f"{url}/events", headers))
    live.start()
    first = queue.enqueue(_job())["id"]
    wait_until(lambda: any(m["job_id"] == first for m in live.messages), 10, "the live stream to see a job")
    resume_from = live.ids[-1]
    assert resume_from is not None
    # Two transactions: the first takes the lower id and commits last.
    with db.session() as early, db.session() as late:
        with early.transaction():
            low = early.fetch_one("test_log_event", {"job_id": job_id, "message": "early"})
            with late.transaction():
                high = late.fetch_one("test_log_event", {"job_id": job_id, "message": "late"})
            assert low is not None and high is not None and low["id"] < high["id"]
            # The higher id is committed and visible; a resume now must not hand it out before the lower one.
            resumed = Collector(SseReader(f"{url}/events", {**headers, "Last-Event-ID": str(resume_from)}))
            resumed.start()
            time.sleep(0.5)
            assert all(m.get("id") != high["id"] for m in live.messages + resumed.messages)
    wait_until(lambda: high["id"] in resumed.ids and high["id"] in live.ids, 15, "both rows streamed")
    for collector in (live, resumed):
        ids = [i for i in collector.ids if i is not None and i > resume_from]
        assert ids == sorted(set(ids)), "in id order, no duplicates"
        assert ids[-2:] == [low["id"], high["id"]]
    # A resume from before everything sees exactly what the database holds after that point.
    again = Collector(SseReader(f"{url}/events", {**headers, "Last-Event-ID": str(resume_from)}))
    again.start()
    wait_until(lambda: high["id"] in again.ids, 10, "the resumed stream to catch up")
    logged = [int(r["id"]) for r in db.fetch_all("events_between", {
        "tenant": "default", "after": resume_from, "upto": high["id"], "job_id": None, "limit": 1000})]
    assert [i for i in again.ids if i is not None] == logged
    for collector in (live, resumed, again):
        collector.stop()


def test_a_tenant_never_sees_another_tenants_events(db: Database, queue: JobQueue,
                                                    events: tuple[ManagedProcess, str]) -> None:
    _, url = events
    a, b = bearer(db, "tenant-a", "admin"), bearer(db, "tenant-b", "submitter")
    a_job = queue.enqueue(_job("tenant-a"))["id"]
    assert requests.get(f"{url}/jobs/{a_job}/events", headers=b, timeout=5).status_code == 404
    assert requests.get(f"{url}/jobs/{a_job}?wait=0", headers=b, timeout=5).status_code == 404
    wide_b = Collector(SseReader(f"{url}/events", b))
    wide_a = Collector(SseReader(f"{url}/events", a))
    running_a = Collector(SseReader(f"{url}/events?status=running,failed", a))
    for collector in (wide_a, wide_b, running_a):
        collector.start()
    time.sleep(0.3)
    a_again = queue.enqueue(_job("tenant-a"))["id"]
    b_job = queue.enqueue(_job("tenant-b"))["id"]
    wait_until(lambda: any(m["job_id"] == b_job for m in wide_b.messages), 10, "tenant B's own event")
    wait_until(lambda: any(m["job_id"] == a_again for m in wide_a.messages), 10, "tenant A's own event")
    assert {m["job_id"] for m in wide_b.messages} == {b_job}
    assert b_job not in {m["job_id"] for m in wide_a.messages}
    assert running_a.messages == [], "a status filter passes only those statuses"
    assert requests.get(f"{url}/events?status=bogus", headers=a, timeout=5).status_code == 400
    # A resume from the very start does not reach into the other tenant's past either.
    resumed = Collector(SseReader(f"{url}/events", {**b, "Last-Event-ID": "0"}))
    resumed.start()
    wait_until(lambda: resumed.messages, 10, "the resume")
    time.sleep(0.3)
    assert {m["job_id"] for m in resumed.messages} == {b_job}
    assert requests.get(f"{url}/events", timeout=5).status_code == 401
    assert requests.get(f"{url}/events", headers={"Authorization": "Bearer cq_nottoken"}, timeout=5).status_code == 401
    for collector in (wide_a, wide_b, running_a, resumed):
        collector.stop()


def test_wait_answers_at_the_final_state(stack: Stack, db: Database, queue: JobQueue,
                                         events: tuple[ManagedProcess, str], record_figure: Any) -> None:
    _, url = events
    stack.standin()
    headers = bearer(db, "default", "submitter")
    job_id = queue.enqueue(_job())["id"]
    short = requests.get(f"{url}/jobs/{job_id}?wait=0.3", headers=headers, timeout=5)
    assert short.status_code == 202 and short.json()["status"] == "queued"
    answer: dict[str, Any] = {}

    def wait() -> None:
        response = requests.get(f"{url}/jobs/{job_id}?wait=60", headers=headers, timeout=90)
        answer["at"] = datetime.now(UTC)
        answer["response"] = response

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.3)
    stack.worker("w1")
    waiter.join(90)
    response = answer["response"]
    assert response.status_code == 200
    job = response.json()
    assert job["status"] == "succeeded" and job["outputs"][0]["url"]
    final = queue.logs(job_id)[-1]
    assert final["event"] == "succeeded"
    lag = (answer["at"] - final["created_at"]).total_seconds()
    record_figure("GET /jobs/{id}?wait=: answer after the final job_logs row", f"{lag * 1000:.1f} ms")
    assert lag < 0.05, f"the wait answered {lag * 1000:.0f} ms after the final state"
    assert set(job) >= {"id", "status", "workflow", "params", "outputs", "created_at", "finished_at"}
    assert requests.get(f"{url}/jobs/{job_id}?wait=abc", headers=headers, timeout=5).status_code == 400


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_subscribers_that_stop_reading_are_dropped_within_a_memory_bound(
        db: Database, queue: JobQueue, events: tuple[ManagedProcess, str], record_figure: Any) -> None:
    proc, url = events
    token = bearer(db, "default", "submitter")["Authorization"]
    host, port = url.removeprefix("http://").split(":")
    before = _rss_kib(proc.pid)
    sockets = []
    try:
        for _ in range(200):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect((host, int(port)))
            sock.sendall(f"GET /events HTTP/1.1\r\nHost: {host}\r\nAuthorization: {token}\r\n\r\n".encode())
            sockets.append(sock)
        wait_until(lambda: requests.get(f"{url}/healthz", timeout=5).json()["subscribers"] >= 200, 20,
                   "200 subscribers")
        record_figure("events process: RSS with 200 connected subscribers", f"{_rss_kib(proc.pid)} KiB")
        # 20 batches of 500 jobs: 10,000 events of about 300 bytes for each subscriber, which reads none.
        for _ in range(20):
            queue.enqueue_many([_job() for _ in range(500)])
        wait_until(lambda: requests.get(f"{url}/healthz", timeout=5).json()["subscribers"] == 0, 60,
                   "every subscriber dropped")
        grown = _rss_kib(proc.pid) - before
        record_figure("events process: RSS growth with 200 stalled subscribers and 10,000 events", f"{grown} KiB "
                      f"(from {before} KiB)")
        assert grown < 32 * 1024, f"RSS grew by {grown} KiB"
        metrics = requests.get(f"{url}/metrics", timeout=5).text
        assert "comfyq_events_dropped_total 200.0" in metrics
    finally:
        for sock in sockets:
            sock.close()


def test_stream_tokens_work_once_and_are_refused_expired_forged_or_for_another_tenant(
        db: Database, queue: JobQueue, events: tuple[ManagedProcess, str]) -> None:
    _, url = events
    headers = bearer(db, "default", "submitter")
    job_id = queue.enqueue(_job())["id"]
    other = queue.enqueue(_job("other"))["id"]
    assert requests.post(f"{url}/events/token", timeout=5).status_code == 401
    token = requests.post(f"{url}/events/token", headers=headers, timeout=5).json()["stream_token"]
    stream = SseReader(f"{url}/jobs/{job_id}/events?stream_token={token}")
    assert stream.response.status_code == 200
    first = next(stream.events())
    assert first.event == "snapshot" and first.data["job"]["id"] == job_id
    stream.close()
    assert requests.get(f"{url}/jobs/{job_id}/events?stream_token={token}", timeout=5).status_code == 401
    fresh = requests.post(f"{url}/events/token", headers=headers, timeout=5).json()["stream_token"]
    assert requests.get(f"{url}/jobs/{other}/events?stream_token={fresh}", timeout=5).status_code == 404
    signer = StreamTokens(SECRET, 60)
    expired, _ = signer.issue(Caller("default", "submitter"), now=time.time() - 120)
    assert requests.get(f"{url}/events?stream_token={expired}", timeout=5).status_code == 401
    forged, _ = StreamTokens("f" * 40, 60).issue(Caller("default", "submitter"))
    assert requests.get(f"{url}/events?stream_token={forged}", timeout=5).status_code == 401
    payload, _, signature = signer.issue(Caller("default", "submitter"))[0].partition(".")
    assert requests.get(f"{url}/events?stream_token={payload}x.{signature}", timeout=5).status_code == 401
    # A bearer token is never taken from the URL.
    assert requests.get(f"{url}/events?stream_token={headers['Authorization'][7:]}", timeout=5).status_code == 401


def test_heartbeats_keep_an_idle_stream_open(db: Database, events: tuple[ManagedProcess, str]) -> None:
    _, url = events
    stream = SseReader(f"{url}/events", bearer(db, "default", "submitter"), timeout=5)
    try:
        beats = 0
        started = time.monotonic()
        while beats < 3:
            message = stream.next()
            assert message is not None
            if message.comment == "heartbeat":
                beats += 1
        assert time.monotonic() - started < 5
    finally:
        stream.close()


def test_a_submission_with_wait_goes_through_the_api_and_answers_at_the_end(
        stack: Stack, db: Database, tmp_path: Path) -> None:
    stack.standin()
    common = {"DATABASE_URL": stack.db_url, "COMFYQ_STORAGE_DIR": str(stack.storage_dir)}
    api, api_url = start_api(stack.log_dir, {**common, "COMFYQ_TOKEN_CACHE_SECONDS": "0"}, workers=1)
    stack.processes.append(api)
    events, url = start_events(tmp_path / "events-logs", {**common, "COMFYQ_EVENTS_API_URL": api_url})
    stack.processes.append(events)
    headers = bearer(db, "default", "submitter")
    job = {"workflow": "txt2img", "params": {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64}}
    refused = requests.post(f"{url}/jobs?wait=5", json={"workflow": "nope"}, headers=headers, timeout=30)
    direct = requests.post(f"{api_url}/jobs", json={"workflow": "nope"}, headers=headers, timeout=30)
    assert refused.status_code == direct.status_code == 422 and refused.json() == direct.json()
    assert requests.post(f"{url}/jobs?wait=5", json=job, timeout=30).status_code == 401
    pending = requests.post(f"{url}/jobs?wait=0.2", json=job, headers={**headers, "Idempotency-Key": "k1"},
                            timeout=30)
    assert pending.status_code == 202 and pending.json()["status"] == "queued"
    stack.worker("w1")
    done = requests.post(f"{url}/jobs?wait=60", json=job, headers=headers, timeout=90)
    assert done.status_code == 200 and done.json()["status"] == "succeeded" and done.json()["outputs"]
    assert done.headers["Location"] == f"/jobs/{done.json()['id']}"
    replay = requests.post(f"{url}/jobs?wait=60", json=job, headers={**headers, "Idempotency-Key": "k1"}, timeout=90)
    assert replay.status_code == 200 and replay.json()["id"] == pending.json()["id"]


def test_a_resume_from_far_back_pages_through_the_log(db: Database, queue: JobQueue,
                                                      events: tuple[ManagedProcess, str]) -> None:
    _, url = events
    queue.enqueue_many([_job() for _ in range(2500)])
    logged = [i for i, _ in _logged(db)]
    stream = SseReader(f"{url}/events", {**bearer(db, "default", "submitter"), "Last-Event-ID": "0"})
    try:
        received = []
        for message in stream.events():
            received.append(message.id)
            if len(received) == len(logged):
                break
        assert received == logged and len(logged) >= 2500
    finally:
        stream.close()


def test_an_id_left_by_a_rollback_holds_the_stream_only_for_the_gap_wait(
        tmp_path: Path, db: Database, queue: JobQueue) -> None:
    proc, url = start_events(tmp_path / "logs", {"DATABASE_URL": db.url, "COMFYQ_EVENTS_GAP_WAIT_SECONDS": "0.5",
                                                 "COMFYQ_EVENTS_HEARTBEAT_SECONDS": "0.3"})
    try:
        job_id = queue.enqueue(_job())["id"]
        live = Collector(SseReader(f"{url}/events", bearer(db, "default", "submitter")))
        live.start()
        time.sleep(0.3)
        with db.session() as session, contextlib.suppress(RuntimeError), session.transaction():
            lost = session.fetch_one("test_log_event", {"job_id": job_id, "message": "rolled back"})
            raise RuntimeError("roll back")
        kept = db.fetch_one("test_log_event", {"job_id": job_id, "message": "kept"})
        assert lost is not None and kept is not None and kept["id"] > lost["id"]
        started = time.monotonic()
        wait_until(lambda: kept["id"] in live.ids, 10, "the row after the gap")
        assert time.monotonic() - started >= 0.3, "held back while the gap might still fill"
        assert lost["id"] not in live.ids
        metrics = requests.get(f"{url}/metrics", timeout=5).text
        assert "comfyq_events_gap_ids_skipped_total 1.0" in metrics
        live.stop()
    finally:
        proc.stop(timeout=10)


def test_the_events_process_waits_for_a_schema_and_then_serves(tmp_path: Path, fresh_database: str) -> None:
    """Started before `comfyq migrate` (compose starts both at once on a fresh volume): its port stays closed
    while the tables are missing, and it serves once they exist, instead of losing its feed thread."""
    proc = ManagedProcess("comfyq-events", [sys.executable, "-m", "comfyq.cli", "events", "--bind", "127.0.0.1:0"],
                          env={**os.environ, "DATABASE_URL": fresh_database, "PYTHONUNBUFFERED": "1"},
                          log_path=tmp_path / "comfyq-events.log")
    proc.start()
    try:
        proc.wait_for("events_feed_down", timeout=30)
        db = Database(fresh_database, PROJECT_ROOT / "sql")
        try:
            migrate(db, PROJECT_ROOT / "sql" / "migrations")
            match = proc.wait_for(EVENTS_READY, timeout=30)
            headers = bearer(db, "default", "submitter")
            job_id = JobQueue(db).enqueue(_job())["id"]
            stream = SseReader(f"{match.group(1)}/jobs/{job_id}/events", headers)
            assert next(stream.events()).event == "snapshot"
            stream.close()
        finally:
            db.close()
    finally:
        proc.stop(timeout=10)


def test_a_database_restart_delays_events_but_loses_none(tmp_path: Path) -> None:
    """The feed's connection dies with the server; it reconnects and reads on from its cursor, so a stream that
    stayed open gets the events written meanwhile, late but in order, without reconnecting."""
    with private_postgres() as pg:
        proc, url = start_events(tmp_path / "logs", {"DATABASE_URL": pg.url, "COMFYQ_EVENTS_HEARTBEAT_SECONDS": "0.3",
                                                     "COMFYQ_TOKEN_CACHE_SECONDS": "600"})
        db = Database(pg.url, PROJECT_ROOT / "sql")
        try:
            queue = JobQueue(db)
            live = Collector(SseReader(f"{url}/events", bearer(db, "default", "submitter")))
            live.start()
            before = queue.enqueue(_job())["id"]
            wait_until(lambda: any(m["job_id"] == before for m in live.messages), 10, "the first event")
            pg.restart("fast")
            after = wait_until(lambda: _enqueue_when_up(queue), 30, "the database back")
            wait_until(lambda: any(m["job_id"] == after for m in live.messages), 30, "the event after the restart")
            assert proc.running() and not live.closed.is_set()
            ids = [i for i in live.ids if i is not None]
            assert ids == sorted(set(ids))
            live.stop()
        finally:
            db.close()
            proc.stop(timeout=10)


def _enqueue_when_up(queue: JobQueue) -> int | None:
    try:
        return int(queue.enqueue(_job())["id"])
    except DatabaseError:
        return None
