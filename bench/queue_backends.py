"""Queue transports compared in one run: QUEUE_BACKEND=postgres (SKIP LOCKED claim, LISTEN when idle) against
QUEUE_BACKEND=redis (RQ bands, claim by id, BLPOP when idle), with the same consumer loop and no ComfyUI, so the
figures are the queue's own.

- pickup latency: K idle consumer processes; jobs submitted one at a time (50 ms apart). Latency = claimed_at -
  created_at of each row, both Postgres clocks: submit (and, for Redis, the publish after the commit) to claim.
- drain rate: N jobs submitted in one batch to K idle consumer processes that claim and complete them.
  Rate = N / (last finished_at - first created_at).
- statements/job: the Postgres statements the consumers sent, per job (claims that found nothing included): what
  a NOTIFY that wakes every idle worker costs, against one BLPOP that wakes one.

    DATABASE_URL=... .venv/bin/python -m bench.queue_backends              # 200 pickups, 5000 jobs, 1 and 8 workers
    DATABASE_URL=... .venv/bin/python -m bench.queue_backends --quick      # CI: proves it still runs

Redis: REDIS_URL's server (default redis://127.0.0.1:6379); the bench uses an empty database number of its own and
flushes it at the end. Run it on a quiet machine: other load moves both figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing as mp
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

from bench.common import scratch_database
from comfyq.db import Database
from comfyq.jobs import JobQueue, NewJob
from comfyq.logs import configure
from comfyq.redis_transport import RedisTransport
from comfyq.settings import PROJECT_ROOT
from comfyq.transport import PostgresTransport, Transport

log = logging.getLogger("bench.queue_backends")

GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "b"}}}
RESERVATION_KEY = "comfyq:bench-run"
POLL_SECONDS = 5.0  # the worker's default poll interval


@contextlib.contextmanager
def scratch_redis() -> Iterator[str]:
    """An empty Redis database number, reserved for this run and flushed afterwards."""
    server = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    parts = urlsplit(server)
    probe = redis.Redis.from_url(server)
    databases = int(probe.config_get("databases").get("databases") or 16)
    probe.close()
    token = uuid.uuid4().hex
    for number in range(databases - 1, 0, -1):
        url = urlunsplit((parts.scheme, parts.netloc, f"/{number}", parts.query, parts.fragment))
        conn = redis.Redis.from_url(url)
        if conn.dbsize() == 0 and conn.set(RESERVATION_KEY, token, nx=True, ex=3600):
            try:
                yield url
            finally:
                conn.flushdb()
                conn.close()
            return
        conn.close()
    raise SystemExit(f"no empty Redis database on {server}")


def make_transport(backend: str, redis_url: str, prefix: str) -> Transport:
    if backend == "postgres":
        return PostgresTransport()
    return RedisTransport(redis.Redis.from_url(redis_url, socket_timeout=10), prefix=prefix, owner=uuid.uuid4().hex)


class CountingDatabase(Database):
    """Counts the statements a consumer sends (every named query goes through fetch_all or execute)."""

    statements = 0

    def fetch_all(self, name: str, params: Any = None) -> list[dict[str, Any]]:
        self.statements += 1
        return super().fetch_all(name, params)

    def execute(self, name: str, params: Any = None) -> int:
        self.statements += 1
        return super().execute(name, params)


def consumer(backend: str, db_url: str, redis_url: str, prefix: str, name: str, ready: Any, report: Any) -> None:
    """The worker's claim loop without ComfyUI: claim, complete at once; idle: wait on LISTEN or BLPOP (poll
    interval 5 s, as the worker). SIGTERM ends it and it reports its claims and statements."""
    db = CountingDatabase(db_url, PROJECT_ROOT / "sql", max_size=2)
    queue = JobQueue(db, lease_seconds=60, transport=make_transport(backend, redis_url, prefix))
    waiter = queue.transport.waiter(db)
    wake_read, wake_write = os.pipe()
    stopping = []

    def stop(_signum: int, _frame: Any) -> None:
        stopping.append(True)
        os.write(wake_write, b"x")

    signal.signal(signal.SIGTERM, stop)
    claimed = 0
    ready.release()
    try:
        while not stopping:
            job = queue.claim(name)
            if job is not None:
                queue.complete(job.lease, [])
                claimed += 1
                continue
            waiter.wait(POLL_SECONDS, wake_fds=[wake_read])
    finally:
        waiter.close()
        queue.transport.close()
        db.close()
        report.put({"claimed": claimed, "statements": db.statements})


class Consumers:
    def __init__(self, backend: str, db_url: str, redis_url: str, prefix: str, count: int) -> None:
        ctx = mp.get_context("spawn")
        ready = ctx.Semaphore(0)
        self.reports = ctx.Queue()
        self.procs = [ctx.Process(target=consumer, args=(backend, db_url, redis_url, prefix, f"c{n}", ready,
                                                          self.reports), daemon=True) for n in range(count)]
        for proc in self.procs:
            proc.start()
        for _ in self.procs:
            if not ready.acquire(timeout=60):
                raise SystemExit("a consumer did not start")
        time.sleep(1.0)  # all of them idle, asleep on LISTEN / BLPOP

    def close(self) -> dict[str, int]:
        """Stop every consumer; their claims and statements, added up."""
        for proc in self.procs:
            proc.terminate()
        totals = {"claimed": 0, "statements": 0}
        for _ in self.procs:
            report = self.reports.get(timeout=30)
            for key in totals:
                totals[key] += report[key]
        for proc in self.procs:
            proc.join(15)
            if proc.is_alive():
                proc.kill()
        return totals


def reset(db: Database, redis_url: str) -> None:
    with db.session() as session:
        session.execute_file("TRUNCATE job_logs, job_queue RESTART IDENTITY CASCADE")
    conn = redis.Redis.from_url(redis_url)
    token = conn.get(RESERVATION_KEY)
    conn.flushdb()
    if token:
        conn.set(RESERVATION_KEY, token, ex=3600)
    conn.close()


def wait_done(db: Database, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    done = 0
    while time.monotonic() < deadline:
        done = sum(r["n"] for r in db.fetch_all("count_jobs_by_status") if r["status"] == "succeeded")
        if done >= count:
            return
        time.sleep(0.05)
    raise SystemExit(f"only {done}/{count} jobs finished within {timeout}s")


def timings(db: Database, sql: str) -> list[float]:
    with db.session() as session, session.conn.cursor() as cur:
        cur.execute(sql)
        return [float(r[0]) for r in cur.fetchall()]


@contextlib.contextmanager
def consumers_and_producer(backend: str, db: Database, db_url: str, redis_url: str,
                           workers: int) -> Iterator[tuple[JobQueue, dict[str, Any]]]:
    """An emptied queue, `workers` idle consumers and a producer on one transport, under a fresh message prefix.
    The consumers' totals (statements sent, ...) fill the yielded dict once they have stopped."""
    reset(db, redis_url)
    prefix = f"b{uuid.uuid4().hex[:6]}"
    consumers = Consumers(backend, db_url, redis_url, prefix, workers)
    producer = JobQueue(db, transport=make_transport(backend, redis_url, prefix))
    totals: dict[str, Any] = {}
    try:
        yield producer, totals
    finally:
        totals.update(consumers.close())
        producer.transport.close()


def pickup(backend: str, db: Database, db_url: str, redis_url: str, jobs: int, workers: int) -> dict[str, Any]:
    with consumers_and_producer(backend, db, db_url, redis_url, workers) as (producer, totals):
        for _ in range(jobs):
            producer.enqueue(NewJob(graph=GRAPH))
            time.sleep(0.05)
        wait_done(db, jobs, 60)
    ms = sorted(1000 * v for v in timings(db, "SELECT extract(epoch FROM claimed_at - created_at) FROM job_queue"))
    return {"test": "pickup latency", "backend": backend, "jobs": jobs, "workers": workers,
            "p50_ms": round(statistics.median(ms), 2), "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 2),
            "max_ms": round(ms[-1], 2), "statements_per_job": round(totals["statements"] / jobs, 2)}


def drain(backend: str, db: Database, db_url: str, redis_url: str, jobs: int, workers: int) -> dict[str, Any]:
    with consumers_and_producer(backend, db, db_url, redis_url, workers) as (producer, totals):
        started = time.monotonic()
        producer.enqueue_many([NewJob(graph=GRAPH, priority=i % 3) for i in range(jobs)])
        submitted = time.monotonic() - started
        wait_done(db, jobs, 600)
    [span] = timings(db, "SELECT extract(epoch FROM max(finished_at) - min(created_at)) FROM job_queue")
    [claims] = timings(db, "SELECT count(*) FROM job_logs WHERE event = 'claimed'")
    assert claims == jobs, f"{claims} claims for {jobs} jobs"
    return {"test": "drain rate", "backend": backend, "jobs": jobs, "workers": workers,
            "submit_s": round(submitted, 3), "span_s": round(span, 3), "jobs_per_s": round(jobs / span, 1),
            "statements_per_job": round(totals["statements"] / jobs, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 pickups, 200 jobs, 1 and 2 workers")
    parser.add_argument("--pickups", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--workers", default="1,8", help="consumer counts for the drain runs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    configure("WARNING")
    pickups, jobs, workers = (20, 200, [1, 2]) if args.quick else (
        args.pickups, args.jobs, [int(w) for w in args.workers.split(",")])
    work = Path(tempfile.mkdtemp(prefix="comfyq-bench-"))
    results = []
    with scratch_database(work) as (db_url, db), scratch_redis() as redis_url:
        for count in workers:
            for backend in ("postgres", "redis"):
                results.append(pickup(backend, db, db_url, redis_url, pickups, count))
        for count in workers:
            for backend in ("postgres", "redis"):
                results.append(drain(backend, db, db_url, redis_url, jobs, count))
    lines = []
    for r in results:
        if r["test"] == "pickup latency":
            lines.append(f"pickup latency  {r['backend']:<8}  {r['jobs']:>5} jobs {r['workers']:>2} idle  "
                         f"p50 {r['p50_ms']:>7} ms  p95 {r['p95_ms']:>7} ms  max {r['max_ms']:>7} ms  "
                         f"{r['statements_per_job']:>6} statements/job")
        else:
            lines.append(f"drain rate      {r['backend']:<8}  {r['jobs']:>5} jobs {r['workers']:>2} wrk   "
                         f"{r['jobs_per_s']:>8} jobs/s  (span {r['span_s']} s, submit {r['submit_s']} s)  "
                         f"{r['statements_per_job']:>6} statements/job")
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    sys.stdout.write("\n".join(lines) + f"\n\nmachine: {platform.machine()}, {os.cpu_count()} cpus, Python "
                     f"{platform.python_version()}, load average at the end (1/5/15 min) {load}\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
