"""Claim cost at scale: the round trip of one claim (JobQueue.claim_next, claim_jobs with limit 1: SKIP LOCKED over
the partial index job_queue_claim_idx, the UPDATE, its job_logs row, the worker row) in a table holding 1M
finished and 100k queued jobs, against the same claim in a table holding only the jobs being claimed; claims
alternate between the two databases (A B, B A, ...), medians. Both tables are vacuumed and analyzed after
loading, as autovacuum would leave them. EXPLAIN (ANALYZE, BUFFERS) of one claim in each goes to the work folder.

    .bench-venv/bin/python -m bench.claim_scale            # 1,000,000 finished + 100,000 queued, 2,000 claims
    .bench-venv/bin/python -m bench.claim_scale --quick    # 100,000 finished + 10,000 queued, 400 claims
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

from bench.common import scratch_database
from bench.harness import Figure, median, percentile, standalone
from comfyq.db import Database
from comfyq.jobs import JobQueue, NewJob

GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 512, "height": 512, "batch_size": 1, "color": 0}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "comfyq"}}}
WORKER = "claim-bench"

FILL_FINISHED = """
INSERT INTO job_queue (workflow, params, graph, status, priority, attempts, worker_id, outputs, created_at,
                       updated_at, run_at, started_at, claimed_at, finished_at)
SELECT 'txt2img', jsonb_build_object('prompt', 'finished ' || g), %(graph)s::jsonb, 'succeeded', g %% 3, 1,
       'w-old', '[{"key": "outputs/x.png", "node": "2"}]'::jsonb, t, t, t, t, t, t + interval '2 seconds'
FROM generate_series(1, %(n)s) AS g, LATERAL (SELECT now() - interval '30 days' + g * interval '1 second' AS t) s
"""
FILL_QUEUED = """
INSERT INTO job_queue (workflow, params, graph, priority, created_at, updated_at, run_at)
SELECT 'txt2img', jsonb_build_object('prompt', 'queued ' || g), %(graph)s::jsonb, g %% 3, t, t, t
FROM generate_series(1, %(n)s) AS g, LATERAL (SELECT now() - interval '1 hour' + g * interval '1 millisecond' AS t) s
"""
EXPLAIN_CLAIM = "EXPLAIN (ANALYZE, BUFFERS) "


def prepare(db: Database, finished: int, queued: int) -> float:
    started = time.monotonic()
    with db.session() as session, session.conn.cursor() as cur:
        if finished:
            cur.execute(FILL_FINISHED, {"graph": json.dumps(GRAPH), "n": finished})
        if queued:
            cur.execute(FILL_QUEUED, {"graph": json.dumps(GRAPH), "n": queued})
        cur.execute("VACUUM ANALYZE job_queue")
        cur.execute("VACUUM ANALYZE job_logs")
    db.execute("register_worker", {"id": WORKER, "host": socket.gethostname(), "pid": 0, "comfyui_url": "none"})
    return time.monotonic() - started


def explain(db: Database) -> str:
    with db.session() as session, session.conn.cursor() as cur:
        cur.execute(EXPLAIN_CLAIM + db.sql("claim_jobs"), {"worker_id": WORKER, "lease_seconds": 60, "limit": 1})
        return "\n".join(r[0] for r in cur.fetchall())


def execution_ms(plan: str) -> float:
    for line in plan.splitlines():
        if line.strip().startswith("Execution Time:"):
            return float(line.split(":")[1].split()[0])
    return float("nan")


def run(work: Path, quick: bool) -> list[Figure]:
    finished, queued, claims = (100_000, 10_000, 400) if quick else (1_000_000, 100_000, 2_000)
    with scratch_database(work) as (_small_url, small), scratch_database(work) as (_big_url, big):
        JobQueue(small).enqueue_many([NewJob(graph=GRAPH, workflow="txt2img", priority=i % 3)
                                      for i in range(claims + 10)])
        prepare(small, 0, 0)
        load_s = prepare(big, finished, queued)
        queues = {"empty": JobQueue(small), "big": JobQueue(big)}
        for queue in queues.values():  # warm the pools and the caches
            for _ in range(5):
                queue.claim_next(WORKER)
        times: dict[str, list[float]] = {"empty": [], "big": []}
        for index in range(claims):
            order = ["empty", "big"] if index % 2 == 0 else ["big", "empty"]
            for name in order:
                started = time.perf_counter()
                job = queues[name].claim_next(WORKER)
                times[name].append(1000 * (time.perf_counter() - started))
                if job is None:
                    raise SystemExit(f"{name}: the queue ran dry")
        plans = {name: explain(db) for name, db in (("empty", small), ("big", big))}
    plan_path = work / "claim_scale_explain.txt"
    plan_path.write_text("\n\n".join(f"-- {name}\n{plan}" for name, plan in plans.items()))
    scale = "1M finished + 100k queued" if not quick else "QUICK: 100k finished + 10k queued (full: 1M + 100k)"
    note = (f"{scale}, loaded and vacuumed in {load_s:.0f} s; {claims} claims each, alternating; p99 "
            f"{percentile(times['big'], 99):.2f} ms vs {percentile(times['empty'], 99):.2f} ms; EXPLAIN ANALYZE "
            f"execution {execution_ms(plans['big']):.3f} ms vs {execution_ms(plans['empty']):.3f} ms ({plan_path})")
    label = "claim round trip, 1M finished + 100k queued" if not quick else "claim round trip, 100k + 10k (quick)"
    return [Figure("claim_scale", label, "ms", median(times["big"]), "same claim, table holding only the queue",
                   median(times["empty"]), max_ratio=1.5, main=True, note=note, samples=times)]


if __name__ == "__main__":
    sys.exit(standalone(run, __doc__))
