"""GPU busy ratio: the stand-in runs jobs of a fixed ~200 ms that each save a ~1 MB PNG; one worker drains
N of them with prefetch off (the baseline) and on, storing to the local folder and to an S3 server. The ratio
is the stand-in's executing time divided by the wall time from the first prompt's start to the last's end.

    .venv/bin/python -m bench.gpu_busy            # 200 jobs per run
    .venv/bin/python -m bench.gpu_busy --quick    # 20 jobs per run (CI: proves it still runs)
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from bench.common import scratch_database
from comfyq.db import Database
from comfyq.jobs import JobQueue, NewJob
from comfyq.logs import configure
from comfyq.stack import start_standin, start_worker
from tests.s3_server import S3Server

log = logging.getLogger("bench.gpu_busy")


def job_graph(index: int) -> dict[str, Any]:
    """600x600 image, two executed nodes of 100 ms: ~200 ms and ~1 MB per job (the stand-in adds grain)."""
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 600, "height": 600, "batch_size": 1,
                                                         "color": index}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench"}}}


def run_once(db: Database, db_url: str, work: Path, comfy_url: str, jobs: int, prefetch: int,
             storage_env: dict[str, str], name: str) -> dict[str, Any]:
    queue = JobQueue(db)
    queue.enqueue_many([NewJob(graph=job_graph(i)) for i in range(jobs)])
    requests.delete(f"{comfy_url}/standin/stats", timeout=5)
    env = {"DATABASE_URL": db_url, "COMFYUI_URL": comfy_url, "COMFYQ_PREFETCH_DEPTH": str(prefetch),
           "COMFYQ_LOG_LEVEL": "WARNING", **storage_env}
    started = time.monotonic()
    worker = start_worker(work / "logs", {**env, "COMFYQ_LOG_LEVEL": "INFO"}, name=name, args=("--burst",))
    code = worker.wait(jobs * 5 + 60)
    worker.stop()
    wall = time.monotonic() - started
    stats = requests.get(f"{comfy_url}/standin/stats", timeout=5).json()
    if code != 0 or stats["prompts"] != jobs:
        raise SystemExit(f"{name}: worker exit {code}, {stats['prompts']}/{jobs} prompts; see {work / 'logs'}")
    span = stats["last_end"] - stats["first_start"]
    return {"run": name, "jobs": jobs, "prefetch": prefetch, "busy_s": round(stats["busy_seconds"], 3),
            "span_s": round(span, 3), "ratio": round(stats["busy_seconds"] / span, 4),
            "per_job_ms": round(1000 * stats["busy_seconds"] / jobs, 1), "wall_s": round(wall, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 jobs per run")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    configure("INFO")
    jobs = 20 if args.quick else args.jobs
    work = Path(tempfile.mkdtemp(prefix="comfyq-bench-"))
    with scratch_database(work) as (db_url, db):
        results = run_all(db, db_url, work, jobs)
    header = f"{'run':<18} {'jobs':>5} {'ms/job':>7} {'busy s':>8} {'span s':>8} {'busy ratio':>10}"
    lines = [header] + [f"{r['run']:<18} {r['jobs']:>5} {r['per_job_ms']:>7} {r['busy_s']:>8} {r['span_s']:>8} "
                        f"{r['ratio']:>10.4f}" for r in results]
    sys.stdout.write("\n".join(lines) + f"\n\nmachine: {platform.machine()}, {platform.python_version()}\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def run_all(db: Database, db_url: str, work: Path, jobs: int) -> list[dict[str, Any]]:
    standin, comfy_url = start_standin(work / "logs", work / "comfyui-output",
                                       args=("--node-seconds", "0.1", "--grain"))
    s3 = S3Server(work / "logs").start()
    results = []
    try:
        backends = {"local": {"COMFYQ_STORAGE_DIR": str(work / "outputs")},
                    "s3": {"COMFYQ_STORAGE_BACKEND": "s3", "COMFYQ_S3_ENDPOINT": s3.endpoint,
                           "COMFYQ_S3_ACCESS_KEY": s3.access_key, "COMFYQ_S3_SECRET_KEY": s3.secret_key,
                           "COMFYQ_S3_BUCKET": "bench"}}
        for backend, storage_env in backends.items():
            for prefetch in (0, 1):
                name = f"{backend}-prefetch{prefetch}"
                result = run_once(db, db_url, work, comfy_url, jobs, prefetch, storage_env, name)
                results.append(result)
                log.info("%s", result)
    finally:
        s3.stop()
        standin.stop()
    return results


if __name__ == "__main__":
    sys.exit(main())
