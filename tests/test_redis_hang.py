"""A Redis that hangs instead of refusing (SIGSTOP) is treated like one that is down: every call gives up after
dependency_timeout_seconds, the process then uses Postgres only for redis_retry_seconds, and at most one call per
retry period waits for the timeout. Real redis-server processes (a private one per test, stopped by PID), real
Postgres; the API and the consumers run in this process (threads), the worker test runs real worker processes."""

from __future__ import annotations

import functools
import itertools
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from comfyq.db import Database
from comfyq.jobs import JobQueue, NewJob
from comfyq.processes import ManagedProcess
from comfyq.redis_transport import RedisTransport
from comfyq.settings import Settings
from comfyq.transport import build_transport
from tests.e2e_support import TINY_GRAPH, Stack, free_port, wait_until

pytestmark = pytest.mark.slow

TIMEOUT = 1.0  # dependency_timeout_seconds in these tests
RETRY = 2.0  # redis_retry_seconds
HANG = 10.0  # how long Redis stays stopped
TOKEN = "t0ken-hang-0123456789abcdefghijklmnop"
T = TypeVar("T")


@dataclass
class PrivateRedis:
    """A redis-server of the test's own. stop_for() always resumes it, so a failing test never leaves it
    stopped; the fixture resumes it again and stops it by PID."""

    proc: ManagedProcess
    url: str

    def stop_for(self, seconds: float) -> tuple[float, float]:
        """SIGSTOP for `seconds`; returns (stopped, resumed) in monotonic time."""
        self.proc.signal(signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            time.sleep(seconds)
        finally:
            self.proc.signal(signal.SIGCONT)
        return stopped, time.monotonic()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = ManagedProcess("redis-hang", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no"], log_path=tmp_path / "redis.log")
    proc.start(r"Ready to accept connections", timeout=20)
    try:
        yield PrivateRedis(proc, f"redis://127.0.0.1:{port}/0")
    finally:
        if proc.running():
            os.kill(proc.pid, signal.SIGCONT)  # a stopped process ignores SIGTERM until it is resumed
        proc.stop(timeout=10)


def graph(n: int) -> dict[str, Any]:
    """A tiny graph whose output differs by n, so ComfyUI's cache never replays it."""
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": n}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}


def hang_settings(url: str, **extra: Any) -> Settings:
    return Settings(queue_backend="redis", redis_url=url, redis_prefix="hang", redis_band_floors="10,0",
                    dependency_timeout_seconds=TIMEOUT, redis_retry_seconds=RETRY, reconcile_interval_seconds=0.5,
                    reconcile_grace_seconds=1.0, redis_scheduler_seconds=0.2, **extra)


@dataclass
class Call:
    who: str
    what: str
    start: float
    end: float
    blocked: float  # seconds beyond what the call was asked to wait (a waiter's timeout)


@dataclass
class Calls:
    """Every transport call the test makes, timed, from every thread."""

    items: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def timed(self, who: str, what: str, run: Callable[[], T], asked: float = 0.0) -> T:
        start = time.monotonic()
        try:
            return run()
        finally:
            end = time.monotonic()
            with self.lock:
                self.items.append(Call(who, what, start, end, max(0.0, end - start - asked)))

    def slow(self, who: str) -> list[Call]:
        """The calls of one transport that waited for Redis's timeout."""
        with self.lock:
            return sorted((c for c in self.items if c.who == who and c.blocked >= 0.8 * TIMEOUT),
                          key=lambda c: c.start)


def test_settings_bound_every_redis_call() -> None:
    transport = build_transport(hang_settings("redis://127.0.0.1:6379/0"))
    assert isinstance(transport, RedisTransport)
    try:
        kwargs = transport.redis.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == TIMEOUT
        assert kwargs["retry"].get_retries() == 0  # redis-py's default retries would multiply the timeout
        assert transport.wait_slice < TIMEOUT  # a quiet BLPOP must never look like a hung Redis
    finally:
        transport.close()


def test_a_refused_redis_is_logged_once_and_reported_to_the_health_listener(
        db: Database, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="comfyq.redis_transport")
    transport = build_transport(hang_settings(f"redis://127.0.0.1:{free_port()}/0"))
    seen: list[bool] = []
    transport.on_health_change(seen.append)
    queue = JobQueue(db, lease_seconds=30, transport=transport)
    try:
        assert transport.healthy
        queue.enqueue_many([NewJob(graph=TINY_GRAPH) for _ in range(3)])
        assert not transport.healthy and seen == [False]
        assert [queue.claim("w1") is not None for _ in range(4)] == [True, True, True, False]
        warnings = [r for r in caplog.records if getattr(r, "action", None) == "redis_unavailable"]
        assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
        assert warnings[0].getMessage().startswith("redis unavailable: ConnectionError")
    finally:
        transport.close()


def test_a_hung_redis_costs_one_timeout_per_retry_period(private_redis: PrivateRedis, db: Database, db_url: str,
                                                         sql: Any, caplog: pytest.LogCaptureFixture,
                                                         record_figure: Any) -> None:
    """The API submits a batch every 0.25 s and three consumers (claim, idle wait, transport ticks, each with a
    transport of its own, as in separate worker processes) take the jobs, while Redis is stopped for 10 s."""
    from comfyq.api.app import create_app  # noqa: PLC0415

    caplog.set_level(logging.INFO, logger="comfyq.redis_transport")
    settings = hang_settings(private_redis.url)
    app = create_app(hang_settings(private_redis.url, database_url=db_url, api_token=TOKEN))
    submitted: list[tuple[int, float]] = []  # (job id, when its POST returned)
    with app.test_client() as client:  # the first request builds the app's services (its transport among them)
        first = client.post("/jobs/batch", json={"jobs": [{"graph": TINY_GRAPH}]},
                            headers={"Authorization": f"Bearer {TOKEN}"})
        assert first.status_code == 202
        submitted.append((first.get_json()["jobs"][0]["id"], time.monotonic()))
    services = app.extensions["comfyq"]
    api_transport = services.queue.transport
    assert isinstance(api_transport, RedisTransport) and api_transport.redis.connection_pool.connection_kwargs[
        "socket_timeout"] == TIMEOUT
    calls = Calls()
    stop = threading.Event()
    producing = threading.Event()
    producing.set()
    claimed: list[tuple[int, float, str]] = []
    record_lock = threading.Lock()
    health: dict[str, list[bool]] = {"api": []}
    api_transport.on_health_change(health["api"].append)
    errors: list[BaseException] = []

    def guarded(run: Callable[..., None], *args: Any) -> Callable[[], None]:
        def body() -> None:
            try:
                run(*args)
            except BaseException as exc:  # a thread's failure fails the test
                errors.append(exc)
                stop.set()
        return body

    def produce() -> None:
        with app.test_client() as client:
            n = 0
            while producing.is_set() and not stop.is_set():
                body = {"jobs": [{"graph": TINY_GRAPH, "priority": (n + i) % 20} for i in range(4)]}
                response = calls.timed("api", "POST /jobs/batch", functools.partial(
                    client.post, "/jobs/batch", json=body, headers={"Authorization": f"Bearer {TOKEN}"}))
                assert response.status_code == 202, response.get_data(as_text=True)
                now = time.monotonic()
                with record_lock:
                    submitted.extend((job["id"], now) for job in response.get_json()["jobs"])
                n += 4
                time.sleep(0.25)

    def consume(name: str, queue: JobQueue) -> None:
        waiter = queue.transport.waiter(queue.db)
        try:
            while not stop.is_set():
                job = calls.timed(name, "claim", lambda: queue.claim(name))
                if job is not None:
                    with record_lock:
                        claimed.append((job.id, time.monotonic(), name))
                    assert queue.complete(job.lease, [])
                else:
                    calls.timed(name, "wait", lambda: waiter.wait(0.5), asked=0.5)
        finally:
            waiter.close()

    def tick(name: str, queue: JobQueue) -> None:
        """The transport's ticks, on their own thread as comfyq/worker/maintenance.py runs them."""
        ticks = queue.transport.ticks(queue.db)
        due = {t.name: 0.0 for t in ticks}
        while not stop.is_set():
            for t in ticks:
                if time.monotonic() >= due[t.name]:
                    calls.timed(name, t.name, t.run)
                    due[t.name] = time.monotonic() + t.seconds
            time.sleep(0.05)

    consumers: list[JobQueue] = []
    transports: list[RedisTransport] = []
    producer = threading.Thread(target=guarded(produce), name="api")
    threads = [producer]
    for n in range(3):
        name = f"w{n}"
        transport = build_transport(settings, owner=name)
        assert isinstance(transport, RedisTransport)
        queue = JobQueue(db, lease_seconds=30, transport=transport)
        health[name] = []
        transport.on_health_change(health[name].append)
        consumers.append(queue)
        transports.append(transport)
        threads += [threading.Thread(target=guarded(consume, name, queue), name=name),
                    threading.Thread(target=guarded(tick, name, queue), name=f"{name}-ticks")]
    try:
        for thread in threads:
            thread.start()
        wait_until(lambda: len(claimed) >= 20 or errors, 30, "the first jobs to go through Redis")
        stopped, resumed = private_redis.stop_for(HANG)
        time.sleep(2 * RETRY + 1)
        # Every transport probes again and finds Redis back; on a loaded machine a consumer may need longer.
        wait_until(lambda: all(t.healthy for t in transports) or errors, 30, "every transport to see Redis back")
        producing.clear()
        producer.join(30)  # its last batch is in `submitted` before the count below is taken
        wait_until(lambda: len(claimed) >= len(submitted) or errors, 60, "every submitted job to be claimed")
    finally:
        producing.clear()
        stop.set()
        for thread in threads:
            thread.join(30)
        for queue in consumers:
            queue.transport.close()
        api_transport.close()
        services.db.close()
    assert not errors, errors

    # Nothing lost, nothing claimed twice.
    ids = [job_id for job_id, _ in submitted]
    assert sorted(job_id for job_id, _, _ in claimed) == sorted(ids) and len(set(ids)) == len(ids)
    sql.execute("SELECT status, count(*) FROM job_queue GROUP BY status")
    assert sql.fetchall() == [("succeeded", len(ids))]
    sql.execute("SELECT job_id FROM job_logs WHERE event = 'claimed' GROUP BY job_id HAVING count(*) <> 1")
    assert sql.fetchall() == []

    # Work went on during the hang: jobs were submitted and claimed (through Postgres) while Redis was stopped.
    submitted_in_hang = sum(1 for _, at in submitted if stopped < at < resumed)
    claimed_in_hang = sum(1 for _, at, _ in claimed if stopped < at < resumed)
    assert submitted_in_hang > 0 and claimed_in_hang > 0
    moments = sorted(at for _, at, _ in claimed)
    longest_gap = max(b - a for a, b in itertools.pairwise(moments))
    assert longest_gap < TIMEOUT + RETRY  # jobs kept coming: at worst a timeout, never the whole hang

    # No call waited much longer than the timeout, and each transport waited for it at most once per retry period.
    longest = max(calls.items, key=lambda c: c.blocked)
    assert longest.blocked < TIMEOUT + 1.0, longest
    posts = [c.end - c.start for c in calls.items if c.who == "api"]
    assert max(posts) < TIMEOUT + 1.0
    for who in health:
        slow = calls.slow(who)
        # Calls already under way when Redis stopped may all wait (one per thread); after the outage is noticed,
        # only one probe per retry period may.
        noticed = min((c.end for c in slow), default=resumed)
        probes = [c for c in slow if c.start >= noticed]
        assert all(b.start >= a.end + 0.9 * RETRY for a, b in itertools.pairwise(probes)), (who, probes)
        assert len(slow) <= 2 + HANG / RETRY, (who, slow)
        assert health[who] == [False, True], (who, health[who])  # one outage seen, and its end

    # One warning per process for the outage, one "reachable again".
    down = [r for r in caplog.records if getattr(r, "action", None) == "redis_unavailable"]
    up = [r for r in caplog.records if getattr(r, "action", None) == "redis_available"]
    assert len(down) == len(health) and all(r.levelno == logging.WARNING for r in down)
    assert all(r.getMessage().startswith("redis unavailable: TimeoutError") for r in down)
    assert len(up) == len(health) and all("reachable again" in r.getMessage() for r in up)
    through_redis = sum(t.counts["redis_claims"] for t in transports)
    through_postgres = sum(t.counts["postgres_claims"] for t in transports)
    assert through_redis > 0 and through_postgres > 0

    record_figure("redis hang (in-process): jobs submitted / claimed during the 10 s hang",
                  f"{submitted_in_hang} / {claimed_in_hang}")
    record_figure("redis hang (in-process): longest call beyond what it asked to wait",
                  f"{longest.blocked:.2f} s ({longest.who} {longest.what}; timeout {TIMEOUT} s)")
    record_figure("redis hang (in-process): slowest POST /jobs/batch", f"{max(posts):.2f} s")
    record_figure("redis hang (in-process): calls that waited for the timeout, per transport",
                  ", ".join(f"{who} {len(calls.slow(who))}" for who in health))
    record_figure("redis hang (in-process): longest gap between two claims", f"{longest_gap:.2f} s")
    record_figure("redis hang (in-process): claims via Redis / via Postgres", f"{through_redis} / {through_postgres}")
    record_figure("redis hang (in-process): jobs, lost, claimed twice", f"{len(ids)}, 0, 0")


def test_workers_keep_claiming_while_redis_hangs(private_redis: PrivateRedis, stack: Stack, db: Database, sql: Any,
                                                 record_figure: Any) -> None:
    """Two real worker processes and the stand-in; jobs are submitted through a Redis transport (as the API
    does) before, during and after a 10 s hang."""
    stack.standin("--node-seconds", "0.05")
    settings = hang_settings(private_redis.url)
    producer = JobQueue(db, lease_seconds=30, transport=build_transport(settings))
    env = {"QUEUE_BACKEND": "redis", "REDIS_URL": private_redis.url, "redis_prefix": "hang",
           "redis_band_floors": "10,0", "dependency_timeout_seconds": str(TIMEOUT), "redis_retry_seconds": str(RETRY),
           "reconcile_interval_seconds": "0.5", "reconcile_grace_seconds": "1", "redis_scheduler_seconds": "0.2",
           "poll_interval_seconds": "5"}
    workers = [stack.worker(f"w{n}", **env) for n in (1, 2)]
    submit_seconds: list[float] = []
    ids: list[int] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            n = 0
            while not stop.is_set():
                started = time.monotonic()
                rows = producer.enqueue_many([NewJob(graph=graph(n + i)) for i in range(2)])
                submit_seconds.append(time.monotonic() - started)
                ids.extend(row["id"] for row in rows)
                n += 2
                time.sleep(0.25)
        except BaseException as exc:  # a thread's failure fails the test
            errors.append(exc)

    def succeeded() -> int:
        sql.execute("SELECT count(*) FROM job_queue WHERE status = 'succeeded'")
        return int(sql.fetchone()[0])

    thread = threading.Thread(target=produce, name="producer")
    try:
        thread.start()
        wait_until(lambda: succeeded() >= 10, 60, "the first jobs to finish")
        hang_start = datetime.now(UTC)
        private_redis.stop_for(HANG)
        hang_end = datetime.now(UTC)
        time.sleep(2 * RETRY + 1)
        stop.set()
        thread.join(30)
        wait_until(lambda: succeeded() == len(ids), 60, "every submitted job to finish")
        for worker in workers:
            worker.stop()
    finally:
        stop.set()
        thread.join(30)
        producer.transport.close()
    assert not errors, errors

    sql.execute("SELECT status, count(*), min(attempts), max(attempts) FROM job_queue GROUP BY status")
    assert sql.fetchall() == [("succeeded", len(ids), 1, 1)]
    sql.execute("SELECT job_id FROM job_logs WHERE event = 'claimed' GROUP BY job_id HAVING count(*) <> 1")
    assert sql.fetchall() == []
    sql.execute("SELECT created_at FROM job_logs WHERE event = 'claimed' AND created_at BETWEEN %s AND %s "
                "ORDER BY created_at", (hang_start, hang_end))
    during = [row[0] for row in sql.fetchall()]
    assert len(during) > 0
    edges = [hang_start, *during, hang_end]
    longest_gap = max((b - a).total_seconds() for a, b in itertools.pairwise(edges))
    assert longest_gap < TIMEOUT + RETRY  # jobs kept coming: at worst a timeout, never the whole hang
    assert max(submit_seconds) < TIMEOUT + 1.0
    for worker in workers:
        output = worker.output()
        assert sum("redis unavailable" in line for line in output) == 1, worker.name
        assert any("redis reachable again" in line for line in output), worker.name
    record_figure("redis hang (worker processes): jobs claimed during the 10 s hang", str(len(during)))
    record_figure("redis hang (worker processes): longest time without a claim during the hang",
                  f"{longest_gap:.2f} s")
    record_figure("redis hang (worker processes): slowest submit (insert + publish)", f"{max(submit_seconds):.2f} s")
    record_figure("redis hang (worker processes): jobs, lost, claimed twice", f"{len(ids)}, 0, 0")
