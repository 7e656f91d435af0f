"""Drain rate of the queue core: N jobs already queued, K consumers that claim and complete them with a no-op
executor (no ComfyUI), against pgqueuer draining the same number of jobs with the same payload (batch 10, one
worker, asyncpg) in the same run, rounds interleaved.

comfyq: 4 processes as registered workers running JobQueue.claim_many / complete_many with batch 10 (the
figure, the same batch as pgqueuer's), and JobQueue.claim / complete, one job per round trip, as the ComfyUI
worker claims (context). Rate = N / (last finished_at - first claimed_at).
pgqueuer: QueueManager in drain mode. Rate = N / (last 'successful' - first 'picked' in pgqueuer_log).

    .bench-venv/bin/python -m bench.drain            # 20,000 jobs, 3 rounds
    .bench-venv/bin/python -m bench.drain --quick    # 2,000 jobs, 2 rounds
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from bench.common import scratch_database
from bench.consumers import PGQ_ENTRYPOINT, Children, comfyq_consumer, pgq_consumer, pgq_install, pgq_queries
from bench.harness import Figure, interleave, median, standalone
from comfyq.db import Database
from comfyq.jobs import JobQueue, NewJob

GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "b"}}}
COMFYQ_WORKERS = 4
BATCH = 10


def scalar(db: Database, sql: str) -> Any:
    with db.session() as session, session.conn.cursor() as cur:
        cur.execute(sql)
        row = cur.fetchone()
        return row[0] if row else None


def execute(db: Database, sql: str) -> None:
    """Statements separated by '; ', each on its own (VACUUM refuses a transaction block)."""
    with db.session() as session:
        for statement in sql.split("; "):
            session.execute_file(statement)


def drain_rate(db: Database, name: str, jobs: int, kids: Children, *, done_sql: str, span_sql: str) -> float:
    """Release the started consumers at once, wait until they have drained the queue, check that every job
    finished, and return jobs / span, the span read from the queue's own timestamps."""
    try:
        kids.go.set()
        if not kids.join(600):
            raise SystemExit(f"{name} consumers did not drain the queue within 600 s")
    finally:
        kids.close()
    done = scalar(db, done_sql)
    if done != jobs:
        raise SystemExit(f"{name} drained {done}/{jobs} jobs")
    return float(jobs / scalar(db, span_sql))


def comfyq_drain(db: Database, url: str, jobs: int, workers: int, batch: int) -> float:
    execute(db, "TRUNCATE job_logs, job_queue RESTART IDENTITY CASCADE; DELETE FROM workers; VACUUM ANALYZE job_queue")
    queue = JobQueue(db)
    for start in range(0, jobs, 5000):
        queue.enqueue_many([NewJob(graph=GRAPH, priority=i % 3) for i in range(start, min(jobs, start + 5000))])
    execute(db, "VACUUM ANALYZE job_queue")
    return drain_rate(db, "comfyq", jobs, Children(
        comfyq_consumer, lambda n, stop, go, ready: (url, f"drain-{n}", stop, go, ready, batch), workers, settle=0.3),
        done_sql="SELECT count(*) FROM job_queue WHERE status = 'succeeded'",
        span_sql="SELECT extract(epoch FROM max(finished_at) - min(claimed_at))::float8 FROM job_queue")


def pgq_drain(db: Database, url: str, jobs: int, workers: int, loop: asyncio.AbstractEventLoop) -> float:
    execute(db, "TRUNCATE pgqueuer, pgqueuer_log RESTART IDENTITY; VACUUM ANALYZE pgqueuer")
    payload = json.dumps(GRAPH).encode()

    async def fill() -> None:
        conn, queries = await pgq_queries(url)
        try:
            for start in range(0, jobs, 1000):
                n = min(jobs, start + 1000) - start
                await queries.enqueue([PGQ_ENTRYPOINT] * n, [payload] * n, [i % 3 for i in range(n)])
        finally:
            await conn.close()

    loop.run_until_complete(fill())
    execute(db, "VACUUM ANALYZE pgqueuer")
    return drain_rate(db, "pgqueuer", jobs, Children(
        pgq_consumer, lambda n, stop, go, ready: (url, BATCH, True, stop, go, ready), workers, settle=0.3),
        done_sql="SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'",
        span_sql="SELECT extract(epoch FROM max(created) FILTER (WHERE status = 'successful') "
                 "- min(created) FILTER (WHERE status = 'picked'))::float8 FROM pgqueuer_log")


def run(work: Path, quick: bool) -> list[Figure]:
    jobs, rounds = (2000, 2) if quick else (20000, 3)
    loop = asyncio.new_event_loop()
    try:
        with scratch_database(work) as (url, db):
            loop.run_until_complete(pgq_install(url))
            runs = {
                "comfyq": lambda: comfyq_drain(db, url, jobs, COMFYQ_WORKERS, BATCH),
                "comfyq1": lambda: comfyq_drain(db, url, jobs, COMFYQ_WORKERS, 1),
                "pgqueuer": lambda: pgq_drain(db, url, jobs, 1, loop),
                "pgqueuer4": lambda: pgq_drain(db, url, jobs, COMFYQ_WORKERS, loop),
            }
            results = interleave(rounds, runs)
    finally:
        loop.close()
    note = f"{jobs:,} jobs per run, {rounds} rounds interleaved, medians; no-op executor, no ComfyUI"
    return [
        Figure("drain", f"queue core, batch {BATCH}, {COMFYQ_WORKERS} workers", "jobs/s", median(results["comfyq"]),
               f"pgqueuer, batch {BATCH}, 1 worker", median(results["pgqueuer"]), min_ratio=0.5, main=True,
               note=note, samples=results),
        Figure("drain", f"queue core, batch {BATCH}, {COMFYQ_WORKERS} workers (context)", "jobs/s",
               median(results["comfyq"]), f"pgqueuer, batch {BATCH}, {COMFYQ_WORKERS} workers",
               median(results["pgqueuer4"])),
        Figure("drain", f"queue core, one job per claim, {COMFYQ_WORKERS} workers (context)", "jobs/s",
               median(results["comfyq1"]), f"pgqueuer, batch {BATCH}, 1 worker", median(results["pgqueuer"])),
    ]


if __name__ == "__main__":
    sys.exit(standalone(run, __doc__))
