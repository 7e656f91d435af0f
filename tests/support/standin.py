"""Runs the ComfyUI stand-in as a real subprocess for tests: free or fixed port, its own input/output
directories, the URL parsed from its announcement line, and a teardown that never leaves it running."""

from __future__ import annotations

import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

ANNOUNCEMENT = re.compile(r"^comfyui-standin listening on (http://(\S+):(\d+))\s*$")


def _flag_args(options: dict[str, Any]) -> list[str]:
    """`node_seconds=0.01` -> `--node-seconds 0.01`; lists are comma-joined; True -> bare flag."""
    args: list[str] = []
    for name, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif isinstance(value, (list, tuple)):
            args += [flag, ",".join(str(item) for item in value)]
        else:
            args += [flag, str(value)]
    return args


def _longest_startup_delay(value: Any) -> float:
    """The upper end of a `startup_delay` option (`7`, `"6-13"`), which the announcement may take on top."""
    if value is None:
        return 0.0
    return float(str(value).rpartition("-")[2] or 0)


class StandinProcess:
    """`with StandinProcess(tmp_path, node_seconds=0.01) as standin: requests.get(standin.url + ...)`.

    tmp_path: directory for this process's `output/` and `input/` dirs (unless `output_dir=` /
    `input_dir=` are given) and its stderr log. port: 0 = any free port; give the old port to restart
    "the same server". Every other keyword maps to a CLI flag (`fail="drop"` -> `--fail drop`,
    `startup_delay="6-13"`, `ws_silent=True`); the longest startup delay is added to `startup_timeout`.
    """

    _log_counter = 0

    def __init__(
        self, tmp_path: Path | str, port: int = 0, *, startup_timeout: float = 20.0, **options: Any
    ) -> None:
        self.tmp_path = Path(tmp_path)
        self.requested_port = port
        self.startup_timeout = startup_timeout
        self.output_dir = Path(options.pop("output_dir", self.tmp_path / "output"))
        self.input_dir = Path(options.pop("input_dir", self.tmp_path / "input"))
        self.host: str = options.pop("host", "127.0.0.1")
        self.options = options
        self.startup_timeout += _longest_startup_delay(options.get("startup_delay"))
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self.ws_url = ""
        self.port = 0
        StandinProcess._log_counter += 1
        self.log_path = self.tmp_path / f"standin-{os.getpid()}-{StandinProcess._log_counter}.log"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("stand-in not started")
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "comfyq.standin",
            "--host", self.host,
            "--port", str(self.requested_port),
            "--output-dir", str(self.output_dir),
            "--input-dir", str(self.input_dir),
            *_flag_args(self.options),
        ]  # fmt: skip

    def start(self) -> StandinProcess:
        if self.process is not None:
            raise RuntimeError("already started")
        self.tmp_path.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("a", encoding="utf-8")
        try:
            self.process = subprocess.Popen(
                self.command(),
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                text=True,
            )
        finally:
            log.close()
        try:
            line = self._first_line(self.process, self.startup_timeout)
            match = ANNOUNCEMENT.match(line)
            if match is None:
                raise RuntimeError(f"unexpected first stdout line from stand-in: {line!r}")
        except BaseException:
            self.stop()
            raise
        self.url = match.group(1)
        self.port = int(match.group(3))
        self.ws_url = self.url.replace("http://", "ws://", 1) + "/ws"
        logger.info("stand-in pid %s at %s (log %s)", self.process.pid, self.url, self.log_path)
        return self

    def _first_line(self, process: subprocess.Popen[str], timeout: float) -> str:
        lines: queue.Queue[str] = queue.Queue()
        stdout: IO[str] | None = process.stdout
        assert stdout is not None

        def read() -> None:
            lines.put(stdout.readline())

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=0.05)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"stand-in did not announce itself within {timeout}s: {self.log_tail()}"
                    ) from None
                continue
            if not line:
                process.wait(timeout=5)
                raise RuntimeError(f"stand-in exited with {process.returncode} before listening: {self.log_tail()}")
            return line

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Safe to call twice or before start()."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning("stand-in %s ignored SIGTERM; killing it", process.pid)
                process.kill()
                process.wait(timeout=timeout)
        self._close_pipes(process)
        return process.returncode

    def kill(self) -> int | None:
        """SIGKILL, as a crash would end it."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        self._close_pipes(process)
        return process.returncode

    @staticmethod
    def _close_pipes(process: subprocess.Popen[str]) -> None:
        if process.stdout is not None and not process.stdout.closed:
            try:
                process.stdout.close()
            except OSError:
                pass

    def __enter__(self) -> StandinProcess:
        return self.start()

    def __exit__(self, *_exc_info: object) -> None:
        self.stop()
