"""The API with /metrics as gunicorn runs it in the metrics and outage tests (until create_app() calls
init_metrics itself; init_metrics is idempotent, so this stays correct afterwards), and a launcher for it."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from flask import Flask

from comfyq.api.app import create_app
from comfyq.api.metrics import init_metrics
from comfyq.processes import ManagedProcess, ProcessFailed
from comfyq.resources import gunicorn_config
from comfyq.settings import PROJECT_ROOT
from comfyq.stack import GUNICORN_READY

APP_SPEC = "tests.apps.metrics_app:create_app_with_metrics()"
BOOTED = re.compile(r"Booting worker with pid: (\d+)")


def create_app_with_metrics() -> Flask:
    app = create_app()
    init_metrics(app)
    return app


def start_metrics_api(log_dir: Path, env: Mapping[str, str], *, workers: int = 2,
                      timeout: float = 30.0) -> tuple[ManagedProcess, str]:
    """comfyq.stack.start_api with this module's app: gunicorn with the project's config on port 0, returned
    once every worker has booted. Returns the process and its base URL; the caller stops the process."""
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
