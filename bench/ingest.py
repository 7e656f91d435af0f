"""Batch ingest over HTTP: POST /jobs/batch with 10,000 txt2img jobs per request (each validated, rendered from
the template and written with its job_logs row, all or nothing), against, in the same run and interleaved:

- a direct multi-row INSERT of the same rendered rows into job_queue (psycopg2 execute_values, one statement,
  one commit): the database's own cost for these rows, with no HTTP, no validation and no job_logs;
- pgqueuer's enqueue of 100 jobs per call (asyncpg), payload = the same job as JSON, 100 calls.

Context rows: one job per call through the library (JobQueue.enqueue against pgqueuer's enqueue).

    .bench-venv/bin/python -m bench.ingest            # 5 rounds of 10,000 jobs
    .bench-venv/bin/python -m bench.ingest --quick    # 2 rounds
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extras
import requests

from bench.common import scratch_database
from bench.consumers import PGQ_ENTRYPOINT, pgq_install, pgq_queries
from bench.harness import Figure, comfyq_api, interleave, median, standalone
from comfyq.db import Database
from comfyq.jobs import JobQueue, NewJob
from comfyq.settings import get_settings
from comfyq.workflows import load_workflows

TOKEN = "bench-token-0123456789abcdefghijklmnop"
BATCH = 10_000


def job_requests(n: int) -> list[dict[str, Any]]:
    return [{"workflow": "txt2img", "params": {"prompt": f"a lighthouse at dawn, take {i}", "seed": i}}
            for i in range(n)]


def rendered_rows(items: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The rows the API writes for these requests, rendered here once (not timed)."""
    workflow = load_workflows(get_settings().workflows_dir)["txt2img"]
    rows = []
    for item in items:
        params = workflow.resolve_params(item["params"])
        rows.append(("default", "txt2img", json.dumps(params), json.dumps(workflow.render(params)), 0, 3))
    return rows


def truncate(db: Database) -> None:
    with db.session() as session:
        session.execute_file("TRUNCATE job_logs, job_queue, submissions RESTART IDENTITY CASCADE")
        session.execute_file("TRUNCATE pgqueuer, pgqueuer_log RESTART IDENTITY")


def http_batch(db: Database, http: requests.Session, api: str, body: bytes) -> float:
    truncate(db)
    started = time.perf_counter()
    resp = http.post(f"{api}/jobs/batch", data=body, timeout=120,
                     headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    elapsed = time.perf_counter() - started
    if resp.status_code != 202 or resp.json()["count"] != BATCH:
        raise SystemExit(f"POST /jobs/batch answered {resp.status_code}: {resp.text[:500]}")
    return BATCH / elapsed


def direct_insert(db: Database, url: str, rows: list[tuple[Any, ...]]) -> float:
    truncate(db)
    conn = psycopg2.connect(url)
    try:
        started = time.perf_counter()
        with conn.cursor() as cur:
            psycopg2.extras.execute_values(
                cur, "INSERT INTO job_queue (tenant, workflow, params, graph, priority, max_attempts) VALUES %s",
                rows, template="(%s, %s, %s::jsonb, %s::jsonb, %s, %s)", page_size=len(rows))
        conn.commit()
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return len(rows) / elapsed


def pgq_enqueue(db: Database, url: str, loop: asyncio.AbstractEventLoop, payloads: list[bytes], per_call: int) -> float:
    truncate(db)

    async def go() -> float:
        conn, queries = await pgq_queries(url)
        try:
            started = time.perf_counter()
            if per_call == 1:
                for payload in payloads:
                    await queries.enqueue(PGQ_ENTRYPOINT, payload, 0)
            else:
                for start in range(0, len(payloads), per_call):
                    chunk = payloads[start:start + per_call]
                    await queries.enqueue([PGQ_ENTRYPOINT] * len(chunk), chunk, [0] * len(chunk))
            return len(payloads) / (time.perf_counter() - started)
        finally:
            await conn.close()

    return float(loop.run_until_complete(go()))


def comfyq_single(db: Database, jobs: list[NewJob]) -> float:
    truncate(db)
    queue = JobQueue(db)
    started = time.perf_counter()
    for job in jobs:
        queue.enqueue(job)
    return len(jobs) / (time.perf_counter() - started)


def run(work: Path, quick: bool) -> list[Figure]:
    rounds, singles = (2, 300) if quick else (5, 2000)
    items = job_requests(BATCH)
    body = json.dumps({"jobs": items}).encode()
    rows = rendered_rows(items)
    payloads = [json.dumps({"workflow": r[1], "params": json.loads(r[2]), "graph": json.loads(r[3])}).encode()
                for r in rows]
    new_jobs = [NewJob(graph=json.loads(r[3]), workflow="txt2img", params=json.loads(r[2])) for r in rows[:singles]]
    loop = asyncio.new_event_loop()
    try:
        with scratch_database(work) as (url, db):
            loop.run_until_complete(pgq_install(url))
            api = comfyq_api(work, {"DATABASE_URL": url, "COMFYQ_API_TOKEN": TOKEN}, workers=2)
            api_url = api.url
            http = requests.Session()
            try:
                http_batch(db, http, api_url, body)  # warm-up: imports, template cache, pool
                results = interleave(rounds, {
                    "http": lambda: http_batch(db, http, api_url, body),
                    "insert": lambda: direct_insert(db, url, rows),
                    "pgq100": lambda: pgq_enqueue(db, url, loop, payloads, 100),
                })
                singles_results = interleave(rounds, {
                    "comfyq1": lambda: comfyq_single(db, new_jobs),
                    "pgq1": lambda: pgq_enqueue(db, url, loop, payloads[:singles], 1),
                })
            finally:
                http.close()
                api.stop()
    finally:
        loop.close()
    results.update(singles_results)
    size = len(body) // BATCH
    note = (f"{rounds} rounds of {BATCH:,} jobs (~{size} bytes of request per job), interleaved, medians; "
            "pgqueuer payload = the same job as JSON")
    http_rate = median(results["http"])
    return [
        Figure("ingest", "HTTP batch of 10k validated jobs", "jobs/s", http_rate, "direct multi-row INSERT",
               median(results["insert"]), min_value=25_000, main=True, note=note, samples=results),
        Figure("ingest", "HTTP batch against direct INSERT", "jobs/s", http_rate, "direct multi-row INSERT",
               median(results["insert"]), min_ratio=0.5, main=True),
        Figure("ingest", "HTTP batch against pgqueuer", "jobs/s", http_rate, "pgqueuer enqueue, 100 per call",
               median(results["pgq100"]), min_ratio=0.5, main=True),
        Figure("ingest", "library enqueue, 1 per call (context)", "jobs/s", median(results["comfyq1"]),
               "pgqueuer enqueue, 1 per call", median(results["pgq1"]),
               note=f"{singles:,} jobs per run, one commit each"),
    ]


if __name__ == "__main__":
    sys.exit(standalone(run, __doc__))
