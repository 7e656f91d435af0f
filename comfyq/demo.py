"""`comfyq demo`: the whole path on one machine with no outside services: embedded Postgres, the ComfyUI
stand-in, the API under gunicorn and two workers; 20 prompts in, a table of results out."""

from __future__ import annotations

import logging
import secrets
import shutil
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import requests

from comfyq import embedded
from comfyq.connect import open_database
from comfyq.migrate import migrate
from comfyq.processes import ManagedProcess
from comfyq.settings import PROJECT_ROOT, get_settings
from comfyq.stack import start_api, start_standin, start_worker

log = logging.getLogger(__name__)

PRIORITIES = (0, 5, 10, -5)
TERMINAL = {"succeeded", "failed", "canceled", "expired"}


def read_prompts(path: Path, count: int) -> list[str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    if len(prompts) < count:
        raise SystemExit(f"{path} holds {len(prompts)} prompts; the demo needs {count}")
    return prompts[:count]


def submit_all(api: str, token: str, prompts: list[str]) -> list[dict[str, Any]]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    jobs = []
    for index, prompt in enumerate(prompts):
        priority = PRIORITIES[index % len(PRIORITIES)]
        body = {"workflow": "txt2img", "priority": priority,
                "params": {"prompt": prompt, "seed": 1000 + index, "steps": 12, "width": 256, "height": 256}}
        response = session.post(f"{api}/jobs", json=body, timeout=10)
        response.raise_for_status()
        jobs.append({"id": response.json()["id"], "priority": priority, "prompt": prompt})
    return jobs


def wait_for_all(api: str, token: str, jobs: list[dict[str, Any]], timeout: float = 300) -> list[dict[str, Any]]:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    deadline = time.monotonic() + timeout
    last_line = ""
    while True:
        states = [session.get(f"{api}/jobs/{job['id']}", timeout=10).json() for job in jobs]
        counts: dict[str, int] = {}
        for state in states:
            counts[state["status"]] = counts.get(state["status"], 0) + 1
        line = "progress: " + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        if line != last_line:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
            last_line = line
        if all(state["status"] in TERMINAL for state in states) or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def render_table(jobs: list[dict[str, Any]], states: list[dict[str, Any]]) -> str:
    header = f"{'job':>5}  {'prio':>4}  {'status':<10} {'tries':>5}  {'secs':>5}  output"
    rows = [header, "-" * len(header)]
    for job, state in sorted(zip(jobs, states), key=lambda pair: pair[1].get("started_at") or ""):
        outputs = state.get("outputs") or []
        where = outputs[0]["location"] if outputs else (state.get("error") or {}).get("message", "")
        seconds = ""
        if state.get("started_at") and state.get("finished_at"):
            from datetime import datetime  # noqa: PLC0415

            started = datetime.fromisoformat(state["started_at"])
            seconds = f"{(datetime.fromisoformat(state['finished_at']) - started).total_seconds():.2f}"
        rows.append(f"{job['id']:>5}  {job['priority']:>4}  {state['status']:<10} {state['attempts']:>5}  "
                    f"{seconds:>5}  {where}")
    return "\n".join(rows)


def run_demo(jobs: int = 20, workers: int = 2) -> int:
    settings = get_settings()
    run_dir = settings.data_dir / "demo"
    shutil.rmtree(run_dir, ignore_errors=True)
    log_dir = run_dir / "logs"
    storage_dir = settings.storage_dir
    started_embedded = not settings.database_url
    database_url = settings.database_url or embedded.start(settings.data_dir / "pg")
    token = secrets.token_urlsafe(24)
    with ExitStack() as stack:
        if started_embedded:
            stack.callback(embedded.stop, settings.data_dir / "pg")
        db = open_database(settings.model_copy(update={"database_url": database_url}))
        applied = migrate(db, settings.sql_dir / "migrations")
        db.close()
        log.info("database ready (%s); migrations applied now: %s", "embedded" if started_embedded else "external",
                 applied or "none")
        processes: list[ManagedProcess] = []
        stack.callback(lambda: [p.stop() for p in reversed(processes)])
        standin, comfy_url = start_standin(log_dir, run_dir / "comfyui-output",
                                           args=("--node-seconds", "0.05", "--sampler-step-seconds", "0.01"))
        processes.append(standin)
        env = {"DATABASE_URL": database_url, "COMFYQ_API_TOKEN": token, "COMFYUI_URL": comfy_url,
               "COMFYQ_STORAGE_DIR": str(storage_dir), "COMFYQ_POLL_INTERVAL_SECONDS": "2"}
        api_proc, api = start_api(log_dir, env)
        processes.append(api_proc)
        log.info("ComfyUI stand-in at %s, API at %s", comfy_url, api)
        submitted = submit_all(api, token, read_prompts(PROJECT_ROOT / "examples" / "prompts.txt", jobs))
        log.info("submitted %d jobs with priorities %s", len(submitted), sorted({j['priority'] for j in submitted}))
        for n in range(workers):
            processes.append(start_worker(log_dir, env, name=f"worker-{n + 1}"))
        states = wait_for_all(api, token, submitted)
        sys.stdout.write("\n" + render_table(submitted, states) + "\n\n")
        succeeded = sum(1 for s in states if s["status"] == "succeeded")
        sys.stdout.write(f"{succeeded}/{len(states)} jobs succeeded; outputs under {storage_dir}; logs under "
                         f"{log_dir}\n")
        return 0 if succeeded == len(states) else 1
