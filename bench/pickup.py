"""Pickup latency of an idle worker: one job submitted at a time to an idle consumer; latency = the server's
now() in the claiming statement - the server's now() in the inserting statement, read from each queue's own
tables afterwards, so every queue is timed by the same clock and the measuring costs nothing while it runs.

- comfyq: the real worker (worker/worker.py, LISTEN + poll fallback, prefetch 1) driving the ComfyUI stand-in
  with a two-node graph; submit = JobQueue.enqueue; claimed_at - created_at.
- pgqueuer (asyncpg, batch 10): Queries.enqueue; pgqueuer_log 'picked' - 'queued'.
- procrastinate (psycopg 3, listen_notify): defer_async; procrastinate_events 'started' - 'deferred'.
- plain: a psycopg2 loop woken by LISTEN claiming with one UPDATE ... SKIP LOCKED (the floor).

All four consumers run at once, idle; the submits rotate between them (the order reversed every other job), and
each job is left to finish before the next submit, so no consumer is ever busy when its job arrives.

    .bench-venv/bin/python -m bench.pickup            # 200 jobs per queue
    .bench-venv/bin/python -m bench.pickup --quick    # 25 jobs per queue
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2

from bench.common import scratch_database
from bench.consumers import (
    PGQ_ENTRYPOINT,
    Children,
    pgq_consumer,
    pgq_install,
    pgq_queries,
    plain_consumer,
    plain_install,
    procrastinate_app,
    procrastinate_consumer,
    procrastinate_install,
)
from bench.harness import Figure, median, percentile, standalone
from comfyq.jobs import JobQueue, NewJob
from comfyq.stack import start_standin, start_worker

GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "b"}}}
FIRST_LOOK = 0.015  # seconds after a submit before the bench looks (it would otherwise compete for the CPU)
SETTLE = 0.02  # after a job is finished, before the next submit

LATENCY_SQL = {
    "comfyq": "SELECT 1000 * extract(epoch FROM claimed_at - created_at)::float8 FROM job_queue "
              "WHERE claimed_at IS NOT NULL ORDER BY id",
    "pgqueuer": "SELECT 1000 * extract(epoch FROM p.created - q.created)::float8 FROM pgqueuer_log q "
                "JOIN pgqueuer_log p ON p.job_id = q.job_id AND p.status = 'picked' WHERE q.status = 'queued' "
                "ORDER BY q.job_id",
    "procrastinate": "SELECT 1000 * extract(epoch FROM s.at - d.at)::float8 FROM procrastinate_events d "
                     "JOIN procrastinate_events s ON s.job_id = d.job_id AND s.type = 'started' "
                     "WHERE d.type = 'deferred' ORDER BY d.job_id",
    "plain": "SELECT 1000 * extract(epoch FROM claimed_at - created_at)::float8 FROM bench_plain "
             "WHERE claimed_at IS NOT NULL ORDER BY id",
}
DONE_SQL = {
    "comfyq": "SELECT status IN ('succeeded', 'failed') FROM job_queue WHERE id = %s",
    "pgqueuer": "SELECT count(*) > 0 FROM pgqueuer_log WHERE job_id = %s AND status = 'picked'",
    "procrastinate": "SELECT status::text IN ('succeeded', 'failed') FROM procrastinate_jobs WHERE id = %s",
    "plain": "SELECT claimed_at IS NOT NULL FROM bench_plain WHERE id = %s",
}


def wait_done(cur: Any, backend: str, job_id: int, timeout: float = 30.0) -> None:
    time.sleep(FIRST_LOOK)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cur.execute(DONE_SQL[backend], (job_id,))
        row = cur.fetchone()
        if row and row[0]:
            if backend == "pgqueuer":
                time.sleep(0.03)  # its completion is written by a buffer a moment later
            return
        time.sleep(0.005)
    raise SystemExit(f"{backend}: job {job_id} was not picked up within {timeout} s")


def run(work: Path, quick: bool) -> list[Figure]:
    jobs = 25 if quick else 200
    loop = asyncio.new_event_loop()
    try:
        with scratch_database(work) as (url, db), contextlib.ExitStack() as stack:
            loop.run_until_complete(pgq_install(url))
            loop.run_until_complete(procrastinate_install(url))
            plain_install(url)
            standin, comfy_url = start_standin(work / "logs", work / "comfyui-output", args=("--node-seconds", "0"))
            stack.callback(standin.stop)
            worker = start_worker(work / "logs", {"DATABASE_URL": url, "COMFYUI_URL": comfy_url,
                                                  "COMFYQ_STORAGE_DIR": str(work / "outputs"),
                                                  "COMFYQ_LOG_LEVEL": "INFO"}, name="pickup-worker")
            stack.callback(worker.stop)
            for kids in (Children(pgq_consumer, lambda n, s, g, r: (url, 10, False, s, g, r), 1),
                         Children(procrastinate_consumer, lambda n, s, g, r: (url, s, g, r), 1),
                         Children(plain_consumer, lambda n, s, g, r: (url, s, g, r), 1)):
                stack.callback(kids.close)

            queue = JobQueue(db)
            _pgq_conn, pgq = loop.run_until_complete(pgq_queries(url))
            stack.callback(lambda: loop.run_until_complete(_pgq_conn.close()))
            app = procrastinate_app(url)
            loop.run_until_complete(app.open_async().__aenter__())
            stack.callback(lambda: loop.run_until_complete(app.close_async()))
            noop = app.tasks["noop"]
            plain = psycopg2.connect(url)
            plain.autocommit = True
            stack.callback(plain.close)
            watch = psycopg2.connect(url)
            watch.autocommit = True
            stack.callback(watch.close)

            def plain_submit() -> int:
                with plain.cursor() as cur:
                    cur.execute("INSERT INTO bench_plain DEFAULT VALUES RETURNING id")
                    return int(cur.fetchone()[0])

            submit: dict[str, Callable[[], int]] = {
                "comfyq": lambda: int(queue.enqueue(NewJob(graph=GRAPH))["id"]),
                "pgqueuer": lambda: int(loop.run_until_complete(pgq.enqueue(PGQ_ENTRYPOINT, b"{}", 0))[0]),
                "procrastinate": lambda: int(loop.run_until_complete(noop.defer_async())),
                "plain": plain_submit,
            }
            time.sleep(1.0)  # everyone idle, asleep on LISTEN
            with watch.cursor() as cur:
                for index in range(jobs):
                    order = list(submit.items())
                    if index % 2:
                        order.reverse()
                    for backend, send in order:
                        job_id = send()
                        wait_done(cur, backend, job_id)
                        time.sleep(SETTLE)
                ms = {}
                for backend, sql in LATENCY_SQL.items():
                    cur.execute(sql)
                    ms[backend] = [float(r[0]) for r in cur.fetchall()]
    finally:
        loop.close()
    for backend, values in ms.items():
        if len(values) != jobs:
            raise SystemExit(f"{backend}: {len(values)} latencies for {jobs} jobs")
    p50 = {k: median(v) for k, v in ms.items()}
    p99 = {k: percentile(v, 99) for k, v in ms.items()}
    worst = max(range(jobs), key=lambda i: ms["comfyq"][i])
    note = (f"{jobs} jobs per queue, submits rotated between the four idle consumers; server clock, insert -> "
            f"claim statement. p99: pgqueuer {p99['pgqueuer']:.2f}, procrastinate {p99['procrastinate']:.2f}, "
            f"plain {p99['plain']:.2f} ms. Slowest comfyq pickup: job {worst + 1}, {ms['comfyq'][worst]:.1f} ms "
            f"(same round: pgqueuer {ms['pgqueuer'][worst]:.1f}, plain {ms['plain'][worst]:.1f} ms)")
    return [
        Figure("pickup", "idle worker p50", "ms", p50["comfyq"], "pgqueuer p50", p50["pgqueuer"], max_value=2.0,
               main=True, note=note, samples=ms),
        Figure("pickup", "idle worker p50 against pgqueuer", "ms", p50["comfyq"], "pgqueuer p50", p50["pgqueuer"],
               max_ratio=0.5, main=True),
        Figure("pickup", "idle worker p99", "ms", p99["comfyq"], "pgqueuer p99", p99["pgqueuer"], max_value=6.0,
               main=True),
        Figure("pickup", "idle worker p50 (context)", "ms", p50["comfyq"], "procrastinate p50", p50["procrastinate"]),
        Figure("pickup", "idle worker p50 (context)", "ms", p50["comfyq"], "plain psycopg2 LISTEN loop p50",
               p50["plain"]),
    ]


if __name__ == "__main__":
    sys.exit(standalone(run, __doc__))
