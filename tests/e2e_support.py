"""Fixtures-in-code for multi-process tests: the stand-in, workers and the API as real child processes,
each stopped by PID in teardown."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from comfyq.processes import ManagedProcess
from comfyq.stack import start_standin, start_worker

TINY_GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 7}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll predicate until it returns something truthy; fail the test with `what` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


class Stack:
    """The processes of one test. Everything started here is stopped in close()."""

    def __init__(self, tmp_path: Path, db_url: str) -> None:
        self.tmp_path = tmp_path
        self.db_url = db_url
        self.log_dir = tmp_path / "logs"
        self.storage_dir = tmp_path / "outputs"
        self.processes: list[ManagedProcess] = []
        self.comfy_url: str | None = None

    def standin(self, *args: str, port: int = 0, name: str = "comfyui-standin") -> tuple[ManagedProcess, str]:
        proc, url = start_standin(self.log_dir, self.tmp_path / "comfyui-output", port=port, args=args, name=name)
        self.processes.append(proc)
        self.comfy_url = url
        return proc, url

    def worker_env(self, **overrides: Any) -> dict[str, str]:
        env = {"DATABASE_URL": self.db_url, "COMFYUI_URL": self.comfy_url or "", "COMFYQ_STORAGE_DIR":
               str(self.storage_dir), "COMFYQ_LEASE_SECONDS": "5", "COMFYQ_HEARTBEAT_SECONDS": "0.5",
               "COMFYQ_RESCUE_INTERVAL_SECONDS": "0.5", "COMFYQ_POLL_INTERVAL_SECONDS": "1",
               "COMFYQ_RETRY_BASE_SECONDS": "0.2", "COMFYQ_RETRY_MAX_SECONDS": "5",
               "COMFYQ_COMFYUI_CONNECT_TIMEOUT": "1", "COMFYQ_LOG_LEVEL": "INFO"}
        env.update({f"COMFYQ_{k.upper()}" if not k.isupper() else k: str(v) for k, v in overrides.items()})
        return env

    def worker(self, name: str = "worker", *args: str, **overrides: Any) -> ManagedProcess:
        proc = start_worker(self.log_dir, self.worker_env(**overrides), name=name, args=args)
        self.processes.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.processes):
            proc.stop(timeout=10)


@pytest.fixture
def stack(tmp_path: Path, db_url: str) -> Iterator[Stack]:
    s = Stack(tmp_path, db_url)
    try:
        yield s
    finally:
        s.close()
