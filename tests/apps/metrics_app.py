"""The real API (comfyq.api.app:create_app()) under gunicorn with the project's config, as the metrics tests run
it, and what they read from it: which worker process served which request, and /metrics from every worker."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import requests

from comfyq.processes import ManagedProcess, ProcessFailed
from comfyq.resources import gunicorn_config
from comfyq.settings import PROJECT_ROOT
from comfyq.stack import GUNICORN_READY
from tests.e2e_support import wait_until

APP_SPEC = "comfyq.api.app:create_app()"
BOOTED = re.compile(r"Booting worker with pid: (\d+)")
ACCESS = re.compile(r'"GET (/\S*) HTTP/[\d.]+" (\d{3}) .* pid=<(\d+)>$')


def start_metrics_api(log_dir: Path, env: Mapping[str, str], *, workers: int = 2,
                      timeout: float = 30.0) -> tuple[ManagedProcess, str]:
    """comfyq.stack.start_api, but returned only once every worker has booted, so that concurrent requests reach
    all of them. Returns the process and its base URL; the caller stops the process."""
    argv = [sys.executable, "-m", "gunicorn", "-c", str(gunicorn_config()),
            "--bind", "127.0.0.1:0", "--workers", str(workers), APP_SPEC]
    proc = ManagedProcess("webhook-api", argv, env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                          log_path=log_dir / "webhook-api.log", cwd=PROJECT_ROOT)
    try:
        match = proc.start(GUNICORN_READY, timeout=timeout)
        assert match is not None
        deadline = time.monotonic() + timeout
        while len(worker_pids(proc)) < workers:
            if time.monotonic() > deadline or not proc.running():
                raise ProcessFailed(f"gunicorn did not boot {workers} workers; see {proc.log_path}")
            time.sleep(0.05)
    except BaseException:
        proc.stop(timeout=10)
        raise
    return proc, match.group(1)


def worker_pids(proc: ManagedProcess) -> set[int]:
    return {int(m.group(1)) for line in proc.output() if (m := BOOTED.search(line))}


def access_lines(proc: ManagedProcess, path: str | None = None) -> list[re.Match[str]]:
    """gunicorn's access log entries (path, status, pid), of one path or of all but /metrics."""
    matches = [m for line in proc.output() if (m := ACCESS.search(line))]
    return [m for m in matches if (m.group(1) == path if path else m.group(1) != "/metrics")]


def _logged(proc: ManagedProcess, path: str, n: int) -> bool:
    return len(access_lines(proc, path)) >= n


def scrape_every_worker(proc: ManagedProcess, api: str, headers: Mapping[str, str]) -> list[str]:
    """/metrics in concurrent batches until every gunicorn worker has answered at least one scrape (sync workers
    take one request at a time, so the kernel hands the rest to idle ones); bounded, so a broken spread fails
    instead of looping. Returns every answer."""
    pids = worker_pids(proc)
    texts: list[str] = []
    served: set[int] = set()

    def scrape(_: int) -> str:
        response = requests.get(f"{api}/metrics", headers=dict(headers), timeout=10)
        assert response.status_code == 200, response.text
        return response.text

    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(30):
            texts += pool.map(scrape, range(4 * len(pids)))
            wait_until(partial(_logged, proc, "/metrics", len(texts)), 10, "the access log of every scrape")
            served = {int(m.group(3)) for m in access_lines(proc, "/metrics")}
            if served >= pids:
                break
    assert served == pids, f"scrapes never reached every worker {pids}: {served}"
    return texts
