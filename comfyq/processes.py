"""Child processes for the demo and the tests: start, wait for a readiness line (the port chosen by the OS),
and stop by PID with SIGTERM then SIGKILL, so nothing outlives its owner."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)


class ProcessFailed(RuntimeError):
    """The child exited or never printed its readiness line."""


class ManagedProcess:
    """A child whose merged stdout/stderr is pumped to a log file and scanned for a readiness pattern."""

    def __init__(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                 log_path: Path, cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env) if env is not None else dict(os.environ)
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen[str] | None = None
        self._lines: deque[str] = deque(maxlen=2000)
        self._new_line = threading.Condition()
        self._pump: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, ready_pattern: str | None = None, timeout: float = 30.0) -> re.Match[str] | None:
        """Start the child; with ready_pattern, block until a line matches it and return the match."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, bufsize=1,
                                     start_new_session=True)
        self._pump = threading.Thread(target=self._pump_output, name=f"pump-{self.name}", daemon=True)
        self._pump.start()
        if ready_pattern is None:
            return None
        try:
            return self.wait_for(ready_pattern, timeout)
        except ProcessFailed:
            self.stop()  # never ready: the caller gets no handle to stop it, so it must not live on
            raise

    def _pump_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with self.log_path.open("a", encoding="utf-8") as sink:
            for line in self.proc.stdout:
                sink.write(line)
                sink.flush()
                with self._new_line:
                    self._lines.append(line.rstrip("\n"))
                    self._new_line.notify_all()
        with self._new_line:
            self._new_line.notify_all()

    def wait_for(self, pattern: str, timeout: float = 30.0, *, since: int = 0) -> re.Match[str]:
        """Block until an output line (from index `since`) matches pattern."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._new_line:
            while True:
                for line in list(self._lines)[since:]:
                    match = regex.search(line)
                    if match:
                        return match
                if self.proc is not None and self.proc.poll() is not None and not (
                        self._pump and self._pump.is_alive()):
                    raise ProcessFailed(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ProcessFailed(f"{self.name} did not print {pattern!r} within {timeout}s; "
                                        f"see {self.log_path}")
                self._new_line.wait(min(remaining, 0.2))

    def output(self) -> list[str]:
        with self._new_line:
            return list(self._lines)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        if self.running():
            os.kill(self.pid, signum)

    def wait(self, timeout: float) -> int | None:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait, then SIGKILL the whole process group; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s ignored SIGTERM for %ss; killing", self.name, timeout)
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        else:
            # The leader is gone; make sure nothing it started is left in its group.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._pump is not None:
            self._pump.join(timeout=5)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the leader only (a crash, as tests simulate)."""
        if self.running():
            os.kill(self.pid, signal.SIGKILL)
            assert self.proc is not None
            self.proc.wait(10)
