"""The events process (comfyq events, docs/events.md): what its NOTIFY costs the claim, and what a stream costs.

- claim: the round trip of one claim (JobQueue.claim_next) in a database with migration 0017's triggers against
  the same claim in one without them (dropped), alternating A B, B A; then 4 threads claiming at once in each,
  where the NOTIFY's commit-time queue lock would show as lost throughput; and a batch insert, where the
  trigger's transition table holds every inserted row.
- fan-out: 1,000 streams (half SSE, half WS, read by bench/stream_clients.py) open on one events process while
  2 real workers run jobs through the stand-in: the delay from each logged event's job_logs row to its arrival
  at every stream that should get it, and the process's memory per stream. First as clients use streams (one
  per job, 990, plus 10 tenant-wide dashboards), then with all 1,000 tenant-wide, where every event goes to
  every stream.
- submissions: single submits through the API (wrk) while jobs run, with and without those 1,000 streams open.
- wait: POST /jobs?wait= on an idle system, each job's time split into submit, pickup, ComfyUI, store and answer.

    .bench-venv/bin/python -m bench.events            # full: 1,000 jobs streamed, 10 s submit rounds, 50 waits
    .bench-venv/bin/python -m bench.events --quick    # 100 jobs streamed, 200 streams in 2 s rounds, 5 waits
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests

from bench.common import scratch_database
from bench.harness import Figure, comfyq_api, median, percentile, rss_mb, run_wrk, standalone, wrk_script
from bench.stream_clients import StreamReader, open_reader
from bench.submit import BODY as SUBMIT_BODY
from bench.submit import HEADERS as SUBMIT_HEADERS
from bench.submit import TOKEN as SUBMIT_TOKEN
from comfyq import tokens
from comfyq.db import Database
from comfyq.job_events import FINAL_STATUSES, EventLog
from comfyq.jobs import JobQueue, NewJob
from comfyq.processes import ManagedProcess
from comfyq.stack import start_standin, start_worker

GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "events"}}}
WORKER = "events-bench"
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


SUBSCRIBE_GROUP = 50  # connections opened at once (the listen backlog is 128)


def _start_events(work: Path, url: str, api_url: str) -> tuple[ManagedProcess, str, int]:
    """The events process as `comfyq events` runs it, on a free port."""
    events = ManagedProcess("comfyq-events", [sys.executable, "-m", "comfyq.cli", "events", "--bind", "127.0.0.1:0"],
                            env={**_env(), "DATABASE_URL": url, "COMFYQ_EVENTS_API_URL": api_url},
                            log_path=work / "logs" / "comfyq-events.log")
    match = events.start(r"comfyq events listening on (http://(\S+):(\d+))", timeout=30)
    assert match is not None
    return events, match.group(2), int(match.group(3))


@dataclass
class Running:
    events: ManagedProcess
    host: str
    port: int
    comfy_url: str


def _stack(work: Path, url: str, stack: contextlib.ExitStack, *, workers: int, name: str, node_seconds: float,
           api_url: str = "http://127.0.0.1:9", worker_env: dict[str, str] | None = None) -> Running:
    """The stand-in, the events process and `workers` real workers on database `url`, each stopped by `stack`."""
    standin, comfy_url = start_standin(work / "logs", work / "comfyui-output",
                                       args=("--node-seconds", str(node_seconds)))
    stack.callback(standin.stop)
    events, host, port = _start_events(work, url, api_url)
    stack.callback(events.stop)
    for index in range(workers):
        worker = start_worker(work / "logs", {"DATABASE_URL": url, "COMFYUI_URL": comfy_url,
                                              "COMFYQ_STORAGE_DIR": str(work / "outputs"), "COMFYQ_LOG_LEVEL": "INFO",
                                              **(worker_env or {})}, name=f"{name}-{index}")
        stack.callback(worker.stop)
    return Running(events, host, port, comfy_url)


async def _open_all(host: str, port: int, token: str, specs: list[tuple[str, int | None]]) -> list[StreamReader]:
    """Open every stream (kind, job id or None), a group at a time, and wait until each is ready."""
    readers: list[StreamReader] = []
    for first in range(0, len(specs), SUBSCRIBE_GROUP):
        readers += await asyncio.gather(*(open_reader(host, port, token, kind=kind, job_id=job_id)
                                          for kind, job_id in specs[first:first + SUBSCRIBE_GROUP]))
    await asyncio.wait_for(asyncio.gather(*(reader.ready for reader in readers)), 120)
    broken = [reader for reader in readers if reader.done.done()]
    if broken:
        raise RuntimeError(f"{len(broken)} of {len(readers)} streams closed before they were ready")
    return readers


@dataclass
class StreamRun:
    """One run of jobs through real workers with streams open: what arrived, and the process's memory."""

    subscribers: int
    jobs: int
    seconds: float
    delays_ms: list[float]
    by_event: dict[str, list[float]]  # the same delays by event (claimed, succeeded, ...)
    missing: int  # events a stream should have received and did not
    idle_mb: float
    connected_mb: float


def stream_run(work: Path, *, per_job: int, tenant_wide: int, jobs: int, node_seconds: float,
               workers: int = 2) -> StreamRun:
    """`jobs` jobs queued, `per_job` of them watched by a stream of their own and `tenant_wide` streams on the
    whole tenant (each half SSE, half WS). The `workers` real workers start first (their start-up is not part of
    the run) and the jobs are held back by their run_at until every stream is open; then they run through the
    stand-in. Each logged event's delay runs from its job_logs row's created_at (the start of the worker's
    transaction, so the delay includes its commit) to its arrival at each stream that should get it."""
    assert per_job <= jobs
    with scratch_database(work) as (url, db), contextlib.ExitStack() as stack:
        token = tokens.create(db, "default", "submitter").token
        # The workers start first: a worker's start-up burst of CPU is not part of the run.
        running = _stack(work, url, stack, workers=workers, name="events-worker", node_seconds=node_seconds,
                         worker_env={"COMFYQ_POLL_INTERVAL_SECONDS": "0.2"})
        events, host, port = running.events, running.host, running.port
        held = datetime.now(UTC) + timedelta(hours=1)  # queued, not due until every stream is open
        job_ids = [int(row["id"]) for row in JobQueue(db).enqueue_many(
            [NewJob(graph=GRAPH, run_at=held) for _ in range(jobs)])]
        specs: list[tuple[str, int | None]] = [("sse" if i % 2 == 0 else "ws", job_ids[i]) for i in range(per_job)]
        specs += [("sse" if i % 2 == 0 else "ws", None) for i in range(tenant_wide)]
        loop = asyncio.new_event_loop()
        stack.callback(loop.close)
        time.sleep(0.5)
        idle_mb = rss_mb(events.pid)
        readers = loop.run_until_complete(_open_all(host, port, token, specs))
        time.sleep(0.5)
        connected_mb = rss_mb(events.pid)
        started = time.monotonic()
        db.execute("release_delayed_jobs")
        loop.run_until_complete(_until_finished(db, job_ids, readers))
        seconds = time.monotonic() - started
        for reader in readers:
            reader.close()
        loop.run_until_complete(asyncio.sleep(0.1))
        rows = db.fetch_all("events_between", {"tenant": "default", "after": 0, "upto": 2**62, "job_id": None,
                                               "limit": 100_000})
    created = {int(row["id"]): float(row["created_at"].timestamp()) for row in rows}
    names = {int(row["id"]): str(row["event"]) for row in rows}
    by_job: dict[int, set[int]] = {}
    for row in rows:
        if row["event"] != "queued":  # written before the streams opened: in their snapshots
            by_job.setdefault(int(row["job_id"]), set()).add(int(row["id"]))
    every_id = set().union(*by_job.values()) if by_job else set()
    delays: list[float] = []
    by_event: dict[str, list[float]] = {}
    missing = 0
    for reader, (_kind, job_id) in zip(readers, specs, strict=True):
        got = {event_id for event_id, _ in reader.arrivals}
        want = by_job.get(job_id, set()) if job_id is not None else every_id
        missing += len(want - got)
        for event_id, arrived in reader.arrivals:
            if event_id in want:
                delay = (arrived - created[event_id]) * 1000
                delays.append(delay)
                by_event.setdefault(names[event_id], []).append(delay)
    return StreamRun(len(specs), jobs, seconds, delays, by_event, missing, idle_mb, connected_mb)


async def _until_finished(db: Database, job_ids: list[int], readers: list[StreamReader]) -> None:
    """Every job final (read from the queue) and every per-job stream closed after it, or a minute past the
    expected end at the latest."""
    queue = JobQueue(db)
    deadline = time.monotonic() + 30 + len(job_ids)
    while time.monotonic() < deadline:
        statuses = [await asyncio.to_thread(queue.status, job_id, "default") for job_id in job_ids[-10:]]
        if all(status in FINAL_STATUSES for status in statuses):
            break
        await asyncio.sleep(0.25)
    else:
        raise RuntimeError("the jobs did not finish in time")
    per_job = [reader.done for reader in readers if reader.per_job]
    if per_job:
        await asyncio.wait_for(asyncio.gather(*per_job), 30)
    last = await asyncio.to_thread(EventLog(db).last_id)
    wide = [reader for reader in readers if not reader.per_job]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(not r.arrivals or r.arrivals[-1][0] < last for r in wide):
        await asyncio.sleep(0.05)  # the last events on their way to the tenant-wide streams


def fanout(work: Path, quick: bool) -> list[Figure]:
    """The issue's scenario: 1,000 open streams, half SSE and half WS, while jobs run through 2 workers; first as
    clients use them (a stream per job, plus a few tenant-wide dashboards), then every stream tenant-wide."""
    dashboards = 10
    watched = 100 if quick else 990
    mixed = stream_run(work, per_job=watched, tenant_wide=dashboards, jobs=watched, node_seconds=0.02)
    wide = stream_run(work, per_job=0, tenant_wide=1_000, jobs=10 if quick else 60, node_seconds=0.1)
    figures = []
    for name, run, main_figure in (("a stream per job + 10 tenant-wide", mixed, True),
                                   ("all tenant-wide", wide, False)):
        deliveries = len(run.delays_ms)
        note = (f"{run.subscribers} streams (half SSE, half WS), {run.jobs} jobs through 2 workers in "
                f"{run.seconds:.1f} s: {deliveries:,} deliveries, {deliveries / run.seconds:,.0f}/s; "
                f"{run.missing} missed")
        figures += [
            Figure("events", f"delay from commit to stream, {name}, p50", "ms", median(run.delays_ms),
                   max_value=10, note=note, samples={"delays": run.delays_ms}),
            Figure("events", f"delay from commit to stream, {name}, p99", "ms", percentile(run.delays_ms, 99),
                   max_value=50, main=main_figure, note=note),
        ]
        if run.missing:
            raise RuntimeError(f"{name}: {run.missing} events never reached a stream that should have had them")
    per_subscriber = (mixed.connected_mb - mixed.idle_mb) * 1024 / mixed.subscribers
    figures.append(Figure("events", f"RSS per open stream ({mixed.subscribers} open, half SSE, half WS)", "KiB",
                          per_subscriber, max_value=100,
                          note=f"events process {mixed.idle_mb:.0f} MiB idle, {mixed.connected_mb:.0f} MiB with "
                               f"{mixed.subscribers} streams"))
    return figures


WATCHED_PRIORITY = 5  # the watched jobs run before the benchmark's own submissions pile up behind them


def submit_rate(work: Path, quick: bool) -> list[Figure]:
    """Single submits through the API (wrk, as bench/submit.py sends them) while 2 workers run jobs, with and
    without 1,000 streams open on the events process (990 watching a queued job each, 10 tenant-wide, half SSE
    half WS). Rounds alternate without / with, then with / without; before every round the same 990 jobs are
    queued ahead of the submissions, so the workers run the watched jobs in both and only the streams differ."""
    seconds, pairs = (2.0, 1) if quick else (10.0, 2)
    watched, dashboards = (190, 10) if quick else (990, 10)
    post = wrk_script(work / "post.lua", "POST", SUBMIT_BODY, SUBMIT_HEADERS)
    rates: dict[str, list[float]] = {"without": [], "with": []}
    with scratch_database(work) as (url, db), contextlib.ExitStack() as stack:
        api = comfyq_api(work, {"DATABASE_URL": url, "COMFYQ_API_TOKEN": SUBMIT_TOKEN})
        stack.callback(api.stop)
        token = tokens.create(db, "default", "submitter").token
        running = _stack(work, url, stack, workers=2, name="submit-worker", node_seconds=0.02, api_url=api.url)
        host, port = running.host, running.port
        loop = asyncio.new_event_loop()
        stack.callback(loop.close)
        queue = JobQueue(db)
        run_wrk(f"{api.url}/jobs", post, seconds=1.0)  # every API worker warm
        order = ["without", "with", "with", "without"] * pairs
        for name in order[:2 * pairs] if quick else order:
            rows = queue.enqueue_many([NewJob(graph=GRAPH, priority=WATCHED_PRIORITY) for _ in range(watched)])
            readers: list[StreamReader] = []
            if name == "with":
                specs: list[tuple[str, int | None]] = [("sse" if i % 2 == 0 else "ws", int(row["id"]))
                                                       for i, row in enumerate(rows)]
                specs += [("sse" if i % 2 == 0 else "ws", None) for i in range(dashboards)]
                readers = loop.run_until_complete(_open_all(host, port, token, specs))
            result = run_wrk(f"{api.url}/jobs", post, seconds=seconds)
            if result["errors"]:
                raise RuntimeError(f"{result['errors']} submissions failed in a round {name} streams")
            rates[name].append(float(result["rps"]))
            for reader in readers:
                reader.close()
            loop.run_until_complete(asyncio.sleep(0.2))
    return [Figure("events", f"single submits through the API with {watched + dashboards:,} streams open, while "
                   "jobs run",
                   "submits/s", median(rates["with"]), "no streams open", median(rates["without"]),
                   min_ratio=0.90, main=True,
                   note=f"{len(rates['with'])} rounds of {seconds:.0f} s each, alternating; 2 workers running the "
                        f"{watched} watched jobs in both", samples=rates)]


def wait_breakdown(work: Path, quick: bool) -> list[Figure]:
    """POST /jobs?wait= on an idle system, one job at a time, through the events process, the API, one worker
    and the stand-in; each job's time split at its job_logs rows and ComfyUI's own execution timestamps."""
    count = 5 if quick else 50
    phases: dict[str, list[float]] = {name: [] for name in WAIT_PHASES}
    with scratch_database(work) as (url, db), contextlib.ExitStack() as stack:
        api = comfyq_api(work, {"DATABASE_URL": url}, workers=2)
        stack.callback(api.stop)
        token = tokens.create(db, "default", "submitter").token
        running = _stack(work, url, stack, workers=1, name="wait-worker", node_seconds=0.02, api_url=api.url)
        host, port, comfy_url = running.host, running.port, running.comfy_url
        session = requests.Session()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        queue = JobQueue(db)
        for index in range(count + 2):  # the first two warm the API's and the events process's paths
            sent = time.time()
            answer = session.post(f"http://{host}:{port}/jobs?wait=30", data=SUBMIT_BODY, headers=headers,
                                  timeout=60)
            received = time.time()
            if answer.status_code != 200 or answer.json()["status"] != "succeeded":
                raise RuntimeError(f"POST /jobs?wait= answered {answer.status_code}: {answer.text[:300]}")
            time.sleep(0.2)
            if index < 2:
                continue
            job = answer.json()
            logged = {row["event"]: row["created_at"].timestamp() for row in queue.logs(int(job["id"]))}
            row = queue.get(int(job["id"]), "default")
            assert row is not None
            started, ended = _execution_times(comfy_url, str(row["prompt_id"]))
            marks = [sent, logged["queued"], logged["claimed"], started, ended, logged["succeeded"], received]
            for name, (begin, end) in zip(list(WAIT_PHASES)[:6], itertools.pairwise(marks), strict=True):
                phases[name].append((end - begin) * 1000)
            phases["total"].append((received - sent) * 1000)
            phases["total minus ComfyUI"].append((received - sent - (ended - started)) * 1000)
    return [Figure("events", f"POST /jobs?wait= on an idle system: {name}, p50", "ms", median(values),
                   note=(f"{count} jobs one at a time; p99 {percentile(values, 99):.1f} ms; "
                         + WAIT_PHASES.get(name, "")), samples={name: values}, main=name == "total minus ComfyUI")
            for name, values in phases.items()]


WAIT_PHASES = {
    "submit": "sent -> the job's row (the events process hands the POST to the API, which inserts it)",
    "pickup": "the row -> the worker's claim",
    "to ComfyUI": "the claim -> ComfyUI starts executing (graph, POST /prompt, queue)",
    "ComfyUI": "ComfyUI's execution_start -> execution_success (its history)",
    "store and record": "ComfyUI done -> the success row (history, download, store, complete)",
    "answer": "the success row -> the client has the answer (commit, NOTIFY, snapshot, response)",
    "total": "",
    "total minus ComfyUI": "what comfyq adds to ComfyUI's own time",
}


def _execution_times(comfy_url: str, prompt_id: str) -> tuple[float, float]:
    """ComfyUI's own execution_start and execution_success timestamps (ms) from the prompt's history entry."""
    entry = requests.get(f"{comfy_url}/history/{prompt_id}", timeout=10).json()[prompt_id]
    stamps = {name: data["timestamp"] / 1000 for name, data in entry["status"]["messages"]}
    return stamps["execution_start"], stamps["execution_success"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def run(work: Path, quick: bool) -> list[Figure]:
    claims = 400 if quick else 2_000
    return claim_cost(work, claims) + fanout(work, quick) + submit_rate(work, quick) + wait_breakdown(work, quick)


if __name__ == "__main__":
    sys.exit(standalone(run, __doc__))

