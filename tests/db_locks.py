"""Helpers for tests that make a statement block on a lock the test holds, then end its backend with
pg_terminate_backend(): what a dropped connection looks like to the caller, made deterministic."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

WAIT = 10.0  # longest wait for the blocked statement to show up, and for the blocked call to end


class Blocked:
    """Runs call() in a thread; the caller ends it by terminating its backend, then reads what it raised."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test
            self.error = exc

    def result(self) -> BaseException | None:
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "the blocked call did not end"
        return self.error


def blocked_backend(admin: Any, query_start: str) -> int:
    """The pid of the backend waiting for a lock while running a statement that starts with query_start (after
    its comment lines)."""
    deadline = time.monotonic() + WAIT
    with admin.cursor() as cur:
        while time.monotonic() < deadline:
            cur.execute("SELECT pid, query FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")
            for pid, query in cur.fetchall():
                text = "\n".join(line for line in query.splitlines() if not line.lstrip().startswith("--"))
                if text.lstrip().startswith(query_start):
                    return int(pid)
            time.sleep(0.02)
    raise AssertionError(f"no backend blocked in {query_start!r}")


def terminate(admin: Any, pid: int) -> None:
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))


def lock(locker: Any, mode: str, table: str = "job_queue") -> None:
    with locker.cursor() as cur:
        cur.execute(f"LOCK TABLE {table} IN {mode} MODE")
