"""Starts the pieces of a local comfyq stack as child processes (stand-in, API under gunicorn, workers), for
the demo and the end-to-end tests. Every server binds port 0 and reports the port it got."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from comfyq.processes import ManagedProcess
from comfyq.resources import gunicorn_config
from comfyq.settings import PROJECT_ROOT

STANDIN_READY = r"comfyui-standin listening on (http://\S+)"
GUNICORN_READY = r"Listening at: (http://\S+)"
WORKER_READY = r"worker (\S+) started against"


def _env(extra: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def start_standin(log_dir: Path, output_dir: Path, *, port: int = 0, args: tuple[str, ...] = (),
                  name: str = "comfyui-standin", timeout: float = 30.0) -> tuple[ManagedProcess, str]:
    """Start the stand-in and wait for its announcement. With `--startup-delay` in args it listens only
    after that delay, so give a `timeout` longer than the delay's upper end."""
    proc = ManagedProcess(name, [sys.executable, "-m", "comfyq.standin", "--host", "127.0.0.1", "--port", str(port),
                                 "--output-dir", str(output_dir), "--input-dir", str(output_dir.parent / "input"),
                                 *args], env=_env({}), log_path=log_dir / f"{name}.log")
    match = proc.start(STANDIN_READY, timeout=timeout)
    assert match is not None
    return proc, match.group(1)


def start_api(log_dir: Path, env: Mapping[str, str], *, workers: int = 2) -> tuple[ManagedProcess, str]:
    argv = [sys.executable, "-m", "gunicorn", "-c", str(gunicorn_config()),
            "--bind", "127.0.0.1:0", "--workers", str(workers), "comfyq.api.app:create_app()"]
    proc = ManagedProcess("webhook-api", argv, env=_env(env), log_path=log_dir / "webhook-api.log",
                          cwd=PROJECT_ROOT)
    match = proc.start(GUNICORN_READY, timeout=30)
    assert match is not None
    proc.wait_for(r"Booting worker", timeout=30)
    return proc, match.group(1)


def start_worker(log_dir: Path, env: Mapping[str, str], *, name: str = "worker",
                 args: tuple[str, ...] = ()) -> ManagedProcess:
    argv = [sys.executable, "-m", "comfyq.worker", *args]
    proc = ManagedProcess(name, argv, env=_env(env), log_path=log_dir / f"{name}.log")
    proc.start(WORKER_READY, timeout=30)
    return proc
