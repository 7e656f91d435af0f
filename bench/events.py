"""The events process (comfyq events, docs/events.md): what its NOTIFY costs the claim, and what a stream costs.

- claim: the round trip of one claim (JobQueue.claim_next) in a database with migration 0017's triggers against
  the same claim in one without them (dropped), alternating A B, B A; then 4 threads claiming at once in each,
  where the NOTIFY's commit-time queue lock would show as lost throughput; and a batch insert, where the
  trigger's transition table holds every inserted row.
- streams: 100, then 1,000 tenant-wide SSE subscribers on one events process that read everything: the
  process's RSS per subscriber, and the delay from a job_logs row's created_at to its arrival at every
  subscriber (p50, p99), for jobs submitted one by one every 20 ms (so 1,000 subscribers ask for 50,000
  deliveries a second); next to the RSS of one API gunicorn worker, which a stream would hold whole.

    .bench-venv/bin/python -m bench.events            # 2,000 claims; 100 and 1,000 subscribers, 200 jobs
    .bench-venv/bin/python -m bench.events --quick    # 400 claims; 100 and 1,000 subscribers, 50 jobs
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import time
from pathlib import Path

import aiohttp

from bench.common import scratch_database
from bench.harness import Figure, comfyq_api, median, percentile, rss_mb, standalone
from comfyq import tokens
from comfyq.db import Database
from comfyq.jobs import JobQueue, NewJob
from comfyq.processes import ManagedProcess

GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}}}
WORKER = "events-bench"
SUBMIT_GAP_SECONDS = 0.02
DROP_TRIGGERS = ("DROP TRIGGER job_logs_notify_insert ON job_logs; "
                 "DROP TRIGGER job_queue_notify_progress ON job_queue")


def _claims(queue: JobQueue, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        queue.claim_next(WORKER)
    return time.perf_counter() - started


def claim_cost(work: Path, claims: int) -> list[Figure]:
    threads = 4
    per_thread = claims // 2
    with scratch_database(work) as (_a, notify), scratch_database(work) as (_b, silent):
        with silent.session() as session, session.conn.cursor() as cur:
            cur.execute(DROP_TRIGGERS)
        queues = {"notify": JobQueue(notify), "silent": JobQueue(silent)}
        for queue in queues.values():
            queue.enqueue_many([NewJob(graph=GRAPH) for _ in range(claims + 10 + threads * per_thread)])
            queue.db.execute("register_worker", {"id": WORKER, "host": socket.gethostname(), "pid": 0,
                                                 "comfyui_url": "none"})
            _claims(queue, 5)
        times: dict[str, list[float]] = {"notify": [], "silent": []}
        for index in range(claims):
            order = ("notify", "silent") if index % 2 == 0 else ("silent", "notify")
            for name in order:
                times[name].append(_claims(queues[name], 1) * 1000)
        batch = 2_000 if claims < 1_000 else 10_000
        inserts: dict[str, list[float]] = {"notify": [], "silent": []}
        for index in range(6):
            order = ("notify", "silent") if index % 2 == 0 else ("silent", "notify")
            for name in order:
                started = time.perf_counter()
                queues[name].enqueue_many([NewJob(graph=GRAPH) for _ in range(batch)])
                inserts[name].append((time.perf_counter() - started) * 1000)
        rates: dict[str, float] = {}
        for name, queue in queues.items():
            workers = [threading.Thread(target=_claims, args=(queue, per_thread)) for _ in range(threads)]
            started = time.perf_counter()
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            rates[name] = threads * per_thread / (time.perf_counter() - started)
    return [
        Figure("events", "claim round trip with the job_logs NOTIFY, median", "ms", median(times["notify"]),
               "without", median(times["silent"]), max_ratio=1.10, main=True,
               note=f"{claims} claims each, alternating; p99 {percentile(times['notify'], 99):.2f} ms vs "
                    f"{percentile(times['silent'], 99):.2f} ms", samples=times),
        Figure("events", f"one batch of {batch:,} jobs with the job_logs NOTIFY, median", "ms",
               median(inserts["notify"]), "without", median(inserts["silent"]), max_ratio=1.10,
               note="6 batches each, alternating", samples=inserts),
        Figure("events", f"claims per second, {threads} threads at once, with the NOTIFY", "claims/s",
               rates["notify"], "without", rates["silent"], min_ratio=0.90,
               note=f"{threads} x {per_thread} claims in each database"),
    ]


async def _subscribe(url: str, token: str, count: int, want: int, arrivals: dict[int, list[float]],
                     connected: asyncio.Event, done: asyncio.Event) -> None:
    """count tenant-wide SSE readers; arrivals[id] gets the wall-clock arrival of event `id` at each."""
    finished = 0
    open_count = 0

    async def reader(session: aiohttp.ClientSession) -> None:
        nonlocal finished, open_count
        async with session.get(f"{url}/events", headers={"Authorization": f"Bearer {token}"}) as response:
            open_count += 1
            if open_count == count:
                connected.set()
            seen = 0
            event_id = None
            async for raw in response.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("id: "):
                    event_id = int(line[4:])
                elif line.startswith("data: ") and event_id is not None:
                    arrivals.setdefault(event_id, []).append(time.time())
                    seen += 1
                    event_id = None
                    if seen >= want:
                        break
        finished += 1
        if finished == count:
            done.set()

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:
        tasks = [asyncio.create_task(reader(session)) for _ in range(count)]
        await asyncio.gather(*tasks)


def stream_cost(work: Path, subscribers: int, jobs: int) -> list[Figure]:
    with scratch_database(work) as (url, db):
        token = tokens.create(db, "default", "submitter").token
        events = ManagedProcess("comfyq-events", [sys.executable, "-m", "comfyq.cli", "events", "--bind",
                                                  "127.0.0.1:0"],
                                env={**_env(), "DATABASE_URL": url,
                                     "COMFYQ_EVENTS_SUBSCRIBER_BUFFER": "10000"},
                                log_path=work / "logs" / "comfyq-events.log")
        match = events.start(r"comfyq events listening on (http://\S+)", timeout=30)
        assert match is not None
        api = comfyq_api(work, {"DATABASE_URL": url}, workers=1)
        try:
            api_worker_mb = max(rss_mb(pid) for pid in api.workers())
            idle_mb = rss_mb(events.pid)
            arrivals: dict[int, list[float]] = {}
            loop = asyncio.new_event_loop()
            connected, done = asyncio.Event(), asyncio.Event()
            runner = threading.Thread(target=loop.run_until_complete, daemon=True, args=(
                _subscribe(match.group(1), token, subscribers, jobs, arrivals, connected, done),))
            runner.start()
            deadline = time.monotonic() + 60
            while not connected.is_set() and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(0.5)
            connected_mb = rss_mb(events.pid)
            queue = JobQueue(db)
            for _ in range(jobs):
                queue.enqueue(NewJob(graph=GRAPH))
                time.sleep(SUBMIT_GAP_SECONDS)
            runner.join(120)
            created = _created(db)
        finally:
            api.stop()
            events.stop()
    delays = [(arrived - created[event_id]) * 1000 for event_id, times in arrivals.items() for arrived in times]
    per_subscriber_kib = (connected_mb - idle_mb) * 1024 / subscribers
    rate = subscribers * jobs / (jobs * SUBMIT_GAP_SECONDS)
    return [
        Figure("events", f"RSS per open SSE subscriber ({subscribers} open)", "KiB", per_subscriber_kib,
               "one API gunicorn worker (a sync worker per stream)", api_worker_mb * 1024, max_ratio=0.01,
               note=f"events process {idle_mb:.0f} MiB idle, {connected_mb:.0f} MiB with {subscribers} streams"),
        Figure("events", f"delay from job_logs row to {subscribers} subscribers, p50", "ms", median(delays),
               note=f"{jobs} jobs one by one, every {SUBMIT_GAP_SECONDS * 1000:.0f} ms: {rate:,.0f} deliveries/s "
                    f"asked, {len(delays)} made"),
        Figure("events", f"delay from job_logs row to {subscribers} subscribers, p99", "ms",
               percentile(delays, 99), main=subscribers == 100),
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _created(db: Database) -> dict[int, float]:
    """When each event was written (job_logs.created_at, the database's clock on this same host)."""
    rows = db.fetch_all("events_between", {"tenant": "default", "after": 0, "upto": 2**62, "job_id": None,
                                           "limit": 100_000})
    return {int(row["id"]): float(row["created_at"].timestamp()) for row in rows}


def run(work: Path, quick: bool) -> list[Figure]:
    claims = 400 if quick else 2_000
    figures = claim_cost(work, claims)
    for subscribers, jobs in ((100, 50), (1_000, 50)) if quick else ((100, 200), (1_000, 200)):
        figures += stream_cost(work, subscribers, jobs)
    return figures


if __name__ == "__main__":
    sys.exit(standalone(run, __doc__))

