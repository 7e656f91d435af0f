"""Memory: does a long run leak? Two runs at once, each on a database of its own:

- worker: the real worker (prefetch 1, local storage) drains N jobs through the ComfyUI stand-in; its RSS is
  sampled every second. Baseline = its RSS once the first 10% of the jobs are done (imports, pools, caches all
  warm); the figure is the RSS at the end. Target: growth <= 10 MB over 10,000 jobs.
- API: wrk POSTs single jobs to comfyq's API (gunicorn, default worker count) in 5-second slices until M
  requests are answered; after each slice the RSS of every gunicorn worker is read. Baseline = the sum after
  the slice that passes 10% of the requests; the figure is the sum at the end. Target: flat, i.e. no worker
  grows by more than 5 MB.

    .bench-venv/bin/python -m bench.memory            # 10,000 jobs, 100,000 requests
    .bench-venv/bin/python -m bench.memory --quick    # 400 jobs, 5,000 requests (2-second slices)
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import scratch_database
from bench.harness import Figure, api_workers_default, comfyq_api, rss_mb, run_wrk, standalone, wrk_script
from comfyq.db import Database
from comfyq.jobs import JobQueue, NewJob
from comfyq.stack import start_standin, start_worker

GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "b"}}}
TOKEN = "bench-token-0123456789abcdefghijklmnop"
BODY = json.dumps({"workflow": "txt2img", "params": {"prompt": "a lighthouse at dawn", "seed": 42}})
WORKER_GROWTH_MB = 10.0
API_GROWTH_MB = 5.0


def done_count(db: Database) -> int:
    return sum(int(r["n"]) for r in db.fetch_all("count_jobs_by_status") if r["status"] in ("succeeded", "failed"))


def worker_run(work: Path, url: str, db: Database, jobs: int, out: dict[str, Any]) -> None:
    queue = JobQueue(db)
    for start in range(0, jobs, 5000):
        queue.enqueue_many([NewJob(graph=GRAPH) for _ in range(start, min(jobs, start + 5000))])
    standin, comfy_url = start_standin(work / "logs", work / "comfyui-output", args=("--node-seconds", "0"))
    series: list[tuple[float, int, float]] = []
    started = time.monotonic()
    try:
        worker = start_worker(work / "logs", {"DATABASE_URL": url, "COMFYUI_URL": comfy_url,
                                              "COMFYQ_STORAGE_DIR": str(work / "outputs"),
                                              "COMFYQ_LOG_LEVEL": "INFO"}, name="memory-worker")
        try:
            deadline = started + jobs * 0.5 + 120
            while time.monotonic() < deadline:
                done = done_count(db)
                series.append((time.monotonic() - started, done, rss_mb(worker.pid)))
                if done >= jobs:
                    break
                time.sleep(1.0)
            else:
                raise SystemExit(f"the worker finished {done}/{jobs} jobs in time; see {work / 'logs'}")
        finally:
            worker.stop()
    finally:
        standin.stop()
    out["series"] = series
    out["seconds"] = time.monotonic() - started


def api_run(work: Path, url: str, requests_total: int, slice_s: float, out: dict[str, Any]) -> None:
    script = wrk_script(work / "memory-post.lua", "POST", BODY,
                        {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    api = comfyq_api(work, {"DATABASE_URL": url, "COMFYQ_API_TOKEN": TOKEN})
    series: list[tuple[int, dict[int, float]]] = []
    answered = errors = 0
    try:
        deadline = time.monotonic() + 20
        while len(api.workers()) < api_workers_default() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        pids = api.workers()
        run_wrk(f"{api.url}/jobs", script, seconds=1)  # every worker opens its pool and loads the templates
        series.append((0, {pid: rss_mb(pid) for pid in pids}))
        while answered < requests_total:
            result = run_wrk(f"{api.url}/jobs", script, seconds=slice_s)
            answered += result["requests"]
            errors += result["errors"]
            if sorted(api.workers()) != sorted(pids):
                raise SystemExit("a gunicorn worker was replaced during the run (max_requests or a crash)")
            series.append((answered, {pid: rss_mb(pid) for pid in pids}))
    finally:
        api.stop()
    out.update(series=series, requests=answered, errors=errors)


def run(work: Path, quick: bool) -> list[Figure]:
    jobs, requests_total, slice_s = (400, 5_000, 2.0) if quick else (10_000, 100_000, 5.0)
    worker_out: dict[str, Any] = {}
    api_out: dict[str, Any] = {}
    failures: list[BaseException] = []

    def guarded(fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except BaseException as exc:
            failures.append(exc)

    with scratch_database(work) as (worker_url, worker_db), scratch_database(work) as (api_url, _api_db):
        threads = [threading.Thread(target=guarded, args=(worker_run, work, worker_url, worker_db, jobs, worker_out)),
                   threading.Thread(target=guarded, args=(api_run, work, api_url, requests_total, slice_s, api_out))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if failures:
        raise failures[0]
    series = worker_out["series"]
    warm = next(s for s in series if s[1] >= jobs // 10)
    end = series[-1]
    growth = end[2] - warm[2]
    api_series = api_out["series"]
    api_warm = next(s for s in api_series if s[0] >= requests_total // 10)
    api_end = api_series[-1]
    per_worker = {pid: api_end[1][pid] - api_warm[1][pid] for pid in api_end[1]}
    worst = max(per_worker.values())
    scale = "" if not quick else " (quick)"
    return [
        Figure("memory", f"worker RSS after {jobs:,} jobs{scale}", "MB", end[2],
               f"RSS after {warm[1]:,} jobs", warm[2], main=True,
               target_text=f"growth <= {WORKER_GROWTH_MB:g} MB", met_override=growth <= WORKER_GROWTH_MB,
               note=f"growth {growth:+.1f} MB from job {warm[1]:,} to {end[1]:,} in {worker_out['seconds']:.0f} s "
                    f"({end[1] / worker_out['seconds']:.0f} jobs/s with the API run beside it); RSS at start "
                    f"{series[0][2]:.1f} MB",
               samples={"t": [s[0] for s in series], "done": [s[1] for s in series],
                        "rss": [s[2] for s in series]}),
        Figure("memory", f"API RSS (sum of {len(per_worker)} workers) after {api_out['requests']:,} POSTs{scale}",
               "MB", sum(api_end[1].values()), f"after {api_warm[0]:,} requests", sum(api_warm[1].values()),
               main=True, target_text=f"each worker grows <= {API_GROWTH_MB:g} MB",
               met_override=worst <= API_GROWTH_MB and api_out["errors"] == 0,
               note=f"largest growth of one worker {worst:+.1f} MB; {api_out['errors']} failed requests",
               samples={"requests": [s[0] for s in api_series],
                        "rss_sum": [sum(s[1].values()) for s in api_series]}),
    ]


if __name__ == "__main__":
    sys.exit(standalone(run, __doc__))
