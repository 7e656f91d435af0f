"""Cancel latency: from the API's answer to POST /jobs/{id}/cancel to the job's `canceled`, for a job waiting in
ComfyUI's queue (prefetched) and for one that runs. Both sides run the real stack (gunicorn API, the worker
process, the stand-in with 0.2 s nodes) with the same heartbeat (2 s); the product hears the cancel through
NOTIFY, the baseline is the same worker with COMFYQ_CANCEL_LISTEN=false, where the cancel arrives with the next
heartbeat (how cancels travelled before). Both ends are read from job_logs ('cancel_requested', written in the
API's transaction, and 'canceled'), so one clock times them.

    .bench-venv/bin/python -m bench.cancel            # 30 pairs of cancels per side
    .bench-venv/bin/python -m bench.cancel --quick    # 6 pairs per side
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import requests

from bench.common import scratch_database
from bench.harness import Figure, median, percentile, standalone
from comfyq.db import Database, connect_once
from comfyq.jobs import JobQueue, NewJob
from comfyq.stack import start_api, start_standin, start_worker

TOKEN = "bench-cancel-token-0123456789abcdefghijklmn"
HEARTBEAT = "2"
NODES = 25  # 0.2 s each: a job runs ~5 s, longer than a heartbeat, so a cancel always finds it running


def chain(index: int) -> dict[str, Any]:
    graph: dict[str, Any] = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                                           "color": index % 256}}}
    for n in range(2, NODES + 1):
        graph[str(n)] = {"class_type": "ImageInvert", "inputs": {"image": [str(n - 1), 0]}}
    graph[str(NODES + 1)] = {"class_type": "SaveImage", "inputs": {"images": [str(NODES), 0], "filename_prefix": "c"}}
    return graph


def latency_ms(url: str, job_id: int) -> float:
    """'canceled' minus 'cancel_requested' in job_logs, in ms (both written by the server's clock)."""
    conn = connect_once(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT extract(epoch FROM max(created_at) FILTER (WHERE event = 'canceled') - "
                        "max(created_at) FILTER (WHERE event = 'cancel_requested')) * 1000 FROM job_logs "
                        "WHERE job_id = %s", (job_id,))
            return float(cur.fetchone()[0])
    finally:
        conn.close()


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"cancel bench: timed out waiting for {what}")
        time.sleep(0.01)


def measure(db: Database, url: str, work: Path, listen: bool, pairs: int) -> dict[str, list[float]]:
    name = "notify" if listen else "heartbeat"
    standin, comfy = start_standin(work / name, work / name / "comfy-out", args=("--node-seconds", "0.2"),
                                   name=f"standin-{name}")
    api_proc = worker = None
    try:
        api_proc, api = start_api(work / name, {"DATABASE_URL": url, "COMFYQ_API_TOKEN": TOKEN}, workers=1)
        worker = start_worker(work / name, {
            "DATABASE_URL": url, "COMFYUI_URL": comfy, "COMFYQ_STORAGE_DIR": str(work / name / "out"),
            "COMFYQ_HEARTBEAT_SECONDS": HEARTBEAT, "COMFYQ_PREFETCH_DEPTH": "1",
            "COMFYQ_CANCEL_LISTEN": "true" if listen else "false", "COMFYQ_LOG_LEVEL": "INFO"}, name=f"w-{name}")
        queue = JobQueue(db)
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {TOKEN}"
        result: dict[str, list[float]] = {"prefetched": [], "running": []}
        for i in range(pairs):
            running = queue.enqueue(NewJob(graph=chain(2 * i), priority=1))["id"]
            prefetched = queue.enqueue(NewJob(graph=chain(2 * i + 1)))["id"]

            def status(job_id: int) -> Any:
                return (queue.get(job_id, "default") or {}).get("status")

            def held(job_id: int) -> bool:
                row = queue.get(job_id, "default") or {}
                return bool(row.get("status") == "running" and row.get("prompt_id"))

            wait_for(lambda r=running, p=prefetched: held(r) and held(p), 30, "a running and a prefetched job")
            time.sleep(0.3)  # the first has started in ComfyUI
            for kind, job_id in (("prefetched", prefetched), ("running", running)):
                answer = session.post(f"{api}/jobs/{job_id}/cancel", timeout=10)
                if answer.status_code >= 300:
                    raise SystemExit(f"cancel bench: cancel answered {answer.status_code}: {answer.text}")
                wait_for(lambda j=job_id: status(j) == "canceled", 30, f"job {job_id} to be canceled")
                result[kind].append(latency_ms(url, job_id))
        return result
    finally:
        for proc in (worker, api_proc, standin):
            if proc is not None:
                proc.stop(timeout=15)


def run(work: Path, quick: bool) -> list[Figure]:
    pairs = 6 if quick else 30
    with scratch_database(work) as (url, db):
        notify = measure(db, url, work, True, pairs)
        heartbeat = measure(db, url, work, False, pairs)
    note = f"{pairs} cancels per kind and side; heartbeat {HEARTBEAT} s on both sides; nodes of 0.2 s"
    figures = []
    for kind in ("prefetched", "running"):
        ours, base = notify[kind], heartbeat[kind]
        figures.append(Figure("cancel", f"cancel of a {kind} job, p99", "ms", percentile(ours, 99),
                              "heartbeat only, p99", percentile(base, 99), max_value=1000, main=kind == "prefetched",
                              note=f"{note}; p50 {median(ours):.0f} ms vs {median(base):.0f} ms",
                              samples={"notify": ours, "heartbeat": base}))
    return figures


if __name__ == "__main__":
    sys.exit(standalone(run, __doc__))
