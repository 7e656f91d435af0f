"""Single submits through the API: wrk (1 thread, 8 connections, loopback, bounded runs) POSTs one txt2img job
per request to comfyq's POST /jobs, and the same body to a minimal Flask app under gunicorn doing one INSERT per
POST (bench/baseline_app.py), with the same number of gunicorn workers; runs interleaved, medians.

comfyq runs as `comfyq api` does (comfyq/api/gunicorn_conf.py: its access log, metrics, auth, validation, the
template rendered, the row and its job_logs row in one statement). The baseline has none of that.

    .bench-venv/bin/python -m bench.submit            # 3 rounds of 10 s each
    .bench-venv/bin/python -m bench.submit --quick    # 2 rounds of 3 s
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import psycopg2
import requests

from bench.baseline_app import SCHEMA
from bench.common import scratch_database
from bench.harness import (
    Figure,
    Gunicorn,
    api_workers_default,
    comfyq_api,
    interleave,
    median,
    run_wrk,
    standalone,
    wrk_script,
)
from comfyq.settings import PROJECT_ROOT

TOKEN = "bench-token-0123456789abcdefghijklmnop"
BODY = json.dumps({"workflow": "txt2img", "params": {"prompt": "a lighthouse at dawn", "seed": 42}})
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def run(work: Path, quick: bool) -> list[Figure]:
    rounds, seconds = (2, 3.0) if quick else (3, 10.0)
    workers = api_workers_default()
    post = wrk_script(work / "post.lua", "POST", BODY, HEADERS)
    get = wrk_script(work / "get.lua", "GET")
    with scratch_database(work) as (url, _db):
        conn = psycopg2.connect(url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(SCHEMA)
        conn.close()
        api = comfyq_api(work, {"DATABASE_URL": url, "COMFYQ_API_TOKEN": TOKEN})
        flask = Gunicorn(["--workers", str(workers), "bench.baseline_app:app"], {"BENCH_DATABASE_URL": url},
                         work / "logs" / "baseline-flask.log", PROJECT_ROOT)
        try:
            for target in (f"{api.url}/jobs", f"{flask.url}/jobs"):  # each worker opens its pool, loads templates
                resp = requests.post(target, data=BODY, headers=HEADERS, timeout=10)
                if resp.status_code != 202:
                    raise SystemExit(f"{target} answered {resp.status_code}: {resp.text[:300]}")
                run_wrk(target, post, seconds=1.0)
            results: dict[str, list[Any]] = interleave(rounds, {
                "comfyq": lambda: run_wrk(f"{api.url}/jobs", post, seconds=seconds),
                "flask": lambda: run_wrk(f"{flask.url}/jobs", post, seconds=seconds),
            })
            constant = run_wrk(f"{flask.url}/ping", get, seconds=seconds)
        finally:
            api.stop()
            flask.stop()
    for name, runs in results.items():
        errors = sum(r["errors"] for r in runs)
        if errors:
            raise SystemExit(f"{name}: {errors} failed requests; see {work / 'logs'}")
    rps = {k: [r["rps"] for r in v] for k, v in results.items()}
    p99 = {k: [r["p99_ms"] for r in v] for k, v in results.items()}
    p50 = {k: [r["p50_ms"] for r in v] for k, v in results.items()}
    note = (f"wrk -t1 -c8, {rounds} rounds of {seconds:g} s interleaved, medians; {workers} gunicorn sync workers "
            f"each; p50 {median(p50['comfyq']):.2f} ms (Flask {median(p50['flask']):.2f} ms); the same Flask "
            f"answering a constant: {constant['rps']:,.0f} requests/s")
    return [
        Figure("submit", "POST /jobs, 8 connections", "req/s", median(rps["comfyq"]), "Flask + 1 INSERT per POST",
               median(rps["flask"]), min_ratio=0.8, main=True, note=note,
               samples={**rps, "constant": [constant["rps"]]}),
        Figure("submit", "POST /jobs p99, 8 connections", "ms", median(p99["comfyq"]), "Flask + 1 INSERT per POST",
               median(p99["flask"]), max_value=15.0, samples=p99),
    ]


if __name__ == "__main__":
    sys.exit(standalone(run, __doc__))
