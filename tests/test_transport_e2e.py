"""The queue-core contract through real worker processes, on both transports (QUEUE_BACKEND=postgres and =redis,
the latter on the real Redis): two workers run every job once, a SIGKILLed worker's job is rescued, retries back
off, cancel stops a job; and for Redis: a FLUSHDB mid-run, duplicate delivery, Redis going away, and switching the
backend of a live system."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Any

import pytest
from rq import Queue
from rq.serializers import JSONSerializer

from comfyq.db import Database
from comfyq.jobs import JobQueue, Lease, NewJob
from comfyq.processes import ManagedProcess
from comfyq.redis_transport import DELIVER, Bands
from comfyq.settings import PROJECT_ROOT
from comfyq.transport import PostgresTransport
from tests.e2e_support import TINY_GRAPH, Stack, free_port, wait_until
from tests.redis_support import FLOORS, Backend, flush_messages, queued_messages

pytestmark = pytest.mark.slow


def graph(n: int) -> dict[str, Any]:
    """A tiny graph whose output differs by n, so ComfyUI's cache never replays it."""
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": n}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}


def status_of(queue: JobQueue, job_id: int) -> str:
    row = queue.get(job_id, "default")
    assert row is not None
    return str(row["status"])


def claims_from(worker: Any) -> dict[str, int]:
    """The Redis transport's stop line: claims from messages and from Postgres, messages reconciled."""
    for line in worker.output():
        match = re.search(r"claims from Redis messages (\d+), from Postgres (\d+);.* reconciled (\d+)", line)
        if match:
            return {"redis": int(match.group(1)), "postgres": int(match.group(2)), "reconciled": int(match.group(3))}
    raise AssertionError(f"{worker.name} logged no transport summary")


def all_succeeded_once(sql: Any, count: int) -> None:
    sql.execute("SELECT status, count(*), min(attempts), max(attempts) FROM job_queue GROUP BY status")
    assert sql.fetchall() == [("succeeded", count, 1, 1)]
    sql.execute("SELECT job_id FROM job_logs WHERE event = 'claimed' GROUP BY job_id HAVING count(*) <> 1")
    assert sql.fetchall() == []


def test_two_workers_run_every_job_exactly_once(backend: Backend, stack: Stack, db: Database, sql: Any) -> None:
    stack.standin("--node-seconds", "0")
    backend.queue(db).enqueue_many([NewJob(graph=graph(i), priority=i % 5) for i in range(200)])
    workers = [stack.worker(f"w{n}", "--burst", **backend.env()) for n in (1, 2)]
    assert [w.wait(240) for w in workers] == [0, 0]
    all_succeeded_once(sql, 200)
    sql.execute("SELECT count(DISTINCT worker_id) FROM job_queue")
    assert sql.fetchone()[0] == 2
    assert len(list(stack.storage_dir.rglob("*.png"))) == 200
    assert len(list((stack.tmp_path / "comfyui-output").rglob("*.png"))) == 200  # ComfyUI ran each once
    if backend.name == "redis":
        assert queued_messages(backend) == 0
        assert sum(claims_from(w)["redis"] for w in workers) == 200  # every claim came through a message


def test_sigkilled_worker_loses_its_lease_and_another_finishes(backend: Backend, stack: Stack,
                                                                db: Database) -> None:
    stack.standin("--node-seconds", "1.5")
    queue = backend.queue(db)
    job_id = queue.enqueue(NewJob(graph=TINY_GRAPH))["id"]
    doomed = stack.worker("doomed", lease_seconds="2", **backend.env())
    wait_until(lambda: (queue.get(job_id, "default") or {}).get("prompt_id"), 20, "the job to reach ComfyUI")
    old = queue.get(job_id, "default")
    assert old is not None and old["status"] == "running"
    old_lease = Lease(job_id, old["attempts"], old["worker_id"])
    doomed.kill()
    stack.worker("rescuer", lease_seconds="2", poll_interval_seconds="120", **backend.env())
    wait_until(lambda: status_of(queue, job_id) == "succeeded", 60, "the rescuer to finish the job")
    row = queue.get(job_id, "default")
    assert row is not None and row["attempts"] == 2 and row["worker_id"] != old_lease.worker_id
    assert not queue.complete(old_lease, [{"key": "late"}])
    assert "rescued" in [r["event"] for r in queue.logs(job_id)]


def test_retries_back_off_then_fail(backend: Backend, stack: Stack, db: Database) -> None:
    stack.standin("--fail", "oom")  # out of memory every time: the job's own transient failure
    queue = backend.queue(db)
    job_id = queue.enqueue(NewJob(graph=TINY_GRAPH, max_attempts=4))["id"]
    stack.worker("w1", retry_base_seconds="0.3", **backend.env())
    wait_until(lambda: status_of(queue, job_id) == "failed", 60, "the job to fail")
    logs = queue.logs(job_id)
    assert [r["event"] for r in logs] == ["queued"] + ["claimed", "retry_scheduled"] * 3 + ["claimed", "failed"]
    claims = [r["created_at"] for r in logs if r["event"] == "claimed"]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(claims)]
    assert gaps[0] >= 0.15 and gaps[1] >= 0.3 and gaps[2] >= 0.6  # ceilings 0.3, 0.6, 1.2; draws >= half


def test_cancel_stops_a_running_job_and_a_queued_one_never_runs(backend: Backend, stack: Stack,
                                                                 db: Database) -> None:
    stack.standin("--node-seconds", "3")
    queue = backend.queue(db)
    running = queue.enqueue(NewJob(graph=graph(1), priority=5))["id"]
    queued = queue.enqueue(NewJob(graph=graph(2)))["id"]
    stack.worker("w1", prefetch_depth="0", **backend.env())
    wait_until(lambda: (queue.get(running, "default") or {}).get("prompt_id"), 20, "the job to start")
    assert queue.cancel(queued, "default") == {"id": queued, "status": "canceled"}
    assert queue.cancel(running, "default") == {"id": running, "status": "running"}
    wait_until(lambda: status_of(queue, running) == "canceled", 20, "the worker to stop the prompt")
    time.sleep(1.0)
    assert [r["event"] for r in queue.logs(queued)] == ["queued", "canceled"]


def test_an_idle_worker_picks_a_new_job_up_without_polling(backend: Backend, stack: Stack, db: Database) -> None:
    stack.standin()
    stack.worker("w1", poll_interval_seconds="120", **backend.env())
    time.sleep(1.0)  # idle: asleep on LISTEN, or on the Redis bands
    queue = backend.queue(db)
    job_id = queue.enqueue(NewJob(graph=TINY_GRAPH))["id"]
    wait_until(lambda: status_of(queue, job_id) == "succeeded", 30, "the job to be picked up")


def test_redis_flushed_mid_run_every_job_finishes_once(redis_backend: Backend, stack: Stack, db: Database,
                                                        sql: Any) -> None:
    """FLUSHDB while two workers drain 60 jobs: the reconciler publishes the lost jobs again, the workers take them
    from Redis (an idle one may also take one through its Postgres poll) and every job runs once."""
    stack.standin("--node-seconds", "0.05")
    queue = redis_backend.queue(db)
    queue.enqueue_many([NewJob(graph=graph(i)) for i in range(60)])
    env = redis_backend.env(poll_interval_seconds="120", prefetch_depth="0")
    workers = [stack.worker(f"w{n}", **env) for n in (1, 2)]
    wait_until(lambda: sum(1 for _ in stack.storage_dir.rglob("*.png")) >= 10, 60, "some jobs to finish")
    flush_messages(redis_backend.conn)  # type: ignore[arg-type]

    def finished() -> bool:
        sql.execute("SELECT count(*) FROM job_queue WHERE status = 'succeeded'")
        return bool(sql.fetchone()[0] == 60)

    wait_until(finished, 120, "every job to finish after the flush")
    all_succeeded_once(sql, 60)
    assert len(list((stack.tmp_path / "comfyui-output").rglob("*.png"))) == 60
    assert any("re-enqueued" in line for w in workers for line in w.output())
    for w in workers:
        w.stop()
    counts = [claims_from(w) for w in workers]
    assert sum(c["redis"] + c["postgres"] for c in counts) == 60
    assert sum(c["reconciled"] for c in counts) >= 1


def test_each_message_delivered_three_times_runs_once(redis_backend: Backend, stack: Stack, db: Database,
                                                       sql: Any) -> None:
    stack.standin("--node-seconds", "0")
    queue = redis_backend.queue(db)
    ids = [row["id"] for row in queue.enqueue_many([NewJob(graph=graph(i)) for i in range(50)])]
    band = Queue(Bands(redis_backend.prefix, FLOORS).name_for(0), connection=redis_backend.conn,
                 serializer=JSONSerializer)
    for copy in range(2):
        for job_id in ids:
            band.enqueue(DELIVER, job_id, job_id=f"{redis_backend.prefix}-{job_id}-0-copy{copy}")
    assert queued_messages(redis_backend) == 150
    workers = [stack.worker(f"w{n}", "--burst", **redis_backend.env()) for n in (1, 2)]
    assert [w.wait(120) for w in workers] == [0, 0]
    assert sum(claims_from(w)["redis"] for w in workers) == 50
    all_succeeded_once(sql, 50)
    assert len(list((stack.tmp_path / "comfyui-output").rglob("*.png"))) == 50
    assert queued_messages(redis_backend) == 0


def test_a_worker_whose_redis_is_down_claims_from_postgres(stack: Stack, db: Database, sql: Any) -> None:
    stack.standin("--node-seconds", "0")
    JobQueue(db).enqueue_many([NewJob(graph=graph(i)) for i in range(10)])
    dead = f"redis://127.0.0.1:{free_port()}/0"
    worker = stack.worker("w1", "--burst", QUEUE_BACKEND="redis", REDIS_URL=dead, redis_retry_seconds="30")
    assert worker.wait(60) == 0
    all_succeeded_once(sql, 10)
    assert any("redis unavailable" in line for line in worker.output())
    assert claims_from(worker) == {"redis": 0, "postgres": 10, "reconciled": 0}


def test_switching_backends_on_a_live_system_loses_nothing(redis_backend: Backend, stack: Stack, db: Database,
                                                            sql: Any) -> None:
    """Jobs queued under Postgres are run by a Redis worker; jobs published to Redis are run by a Postgres
    worker; the messages that are left then run nothing under Redis again."""
    stack.standin("--node-seconds", "0")
    pg_queue = JobQueue(db, transport=PostgresTransport())
    redis_queue = redis_backend.queue(db)
    pg_queue.enqueue_many([NewJob(graph=graph(i)) for i in range(10)])  # queued before the switch
    redis_worker = stack.worker("redis-1", **redis_backend.env(poll_interval_seconds="1"))
    redis_queue.enqueue_many([NewJob(graph=graph(100 + i)) for i in range(10)])  # after it
    wait_until(lambda: len(list(stack.storage_dir.rglob("*.png"))) == 20, 60, "the first 20 jobs")
    redis_worker.stop()
    redis_queue.enqueue_many([NewJob(graph=graph(200 + i)) for i in range(10)])  # published, then switch back
    assert queued_messages(redis_backend) == 10
    assert stack.worker("pg-1", "--burst", QUEUE_BACKEND="postgres").wait(60) == 0
    all_succeeded_once(sql, 30)
    assert queued_messages(redis_backend) == 10  # stale now: their jobs ran
    again = stack.worker("redis-2", "--burst", **redis_backend.env())
    assert again.wait(60) == 0
    assert queued_messages(redis_backend) == 0
    all_succeeded_once(sql, 30)
    assert len(list((stack.tmp_path / "comfyui-output").rglob("*.png"))) == 30


def start_private_redis(stack: Stack, port: int, name: str) -> ManagedProcess:
    """A redis-server of this test's own (no persistence), stopped with the stack."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    proc = ManagedProcess(name, [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no"], log_path=stack.log_dir / f"{name}.log")
    proc.start(r"Ready to accept connections", timeout=20)
    stack.processes.append(proc)
    return proc


def test_redis_outage_mid_run_falls_back_to_postgres_and_back(stack: Stack, db: Database, sql: Any) -> None:
    """Redis is killed while a worker drains 40 jobs: it goes on claiming from Postgres; Redis comes back empty and
    new jobs reach the worker through it again."""
    stack.standin("--node-seconds", "0.05")
    port = free_port()
    server = start_private_redis(stack, port, "redis-1")
    url = f"redis://127.0.0.1:{port}/0"
    private = Backend("redis", redis_url=url, prefix="outage")
    try:
        private.queue(db).enqueue_many([NewJob(graph=graph(i)) for i in range(40)])
        worker = stack.worker("w1", prefetch_depth="0", **private.env(redis_retry_seconds="0.5",
                                                                      poll_interval_seconds="120"))
        wait_until(lambda: len(list(stack.storage_dir.rglob("*.png"))) >= 5, 60, "some jobs to finish")
        server.kill()
        wait_until(lambda: len(list(stack.storage_dir.rglob("*.png"))) == 40, 60, "the rest, from Postgres")
        assert any("redis unavailable" in line for line in worker.output())
        start_private_redis(stack, port, "redis-2")
        time.sleep(1.5)  # the worker's retry window passes; it is back on BLPOP
        private.queue(db).enqueue_many([NewJob(graph=graph(100 + i)) for i in range(5)])
        wait_until(lambda: len(list(stack.storage_dir.rglob("*.png"))) == 45, 60, "the jobs sent after the return")
        worker.stop()
        all_succeeded_once(sql, 45)
        counts = claims_from(worker)
        assert counts["redis"] + counts["postgres"] == 45 and counts["redis"] >= 10 and counts["postgres"] >= 1
        assert any("redis reachable again" in line for line in worker.output())
    finally:
        private.close()


def test_the_transport_bench_still_runs(server_url: str, redis_url: str, tmp_path: Any) -> None:
    """bench/queue_backends.py --quick (figures are for a quiet machine, docs/benchmarks.md; here it only runs)."""
    env = {**os.environ, "DATABASE_URL": server_url, "REDIS_URL": redis_url, "PYTHONPATH": str(PROJECT_ROOT)}
    out = subprocess.run([sys.executable, "-m", "bench.queue_backends", "--quick", "--json", str(tmp_path / "r.json")],
                         env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    results = json.loads((tmp_path / "r.json").read_text())
    assert {(r["test"], r["backend"]) for r in results} == {(t, b) for t in ("pickup latency", "drain rate")
                                                            for b in ("postgres", "redis")}
