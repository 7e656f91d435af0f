"""PostgreSQL stopped and started again while jobs arrive: the API under gunicorn answers 503 (JSON error,
Retry-After) while the database is down, never 500 and never hangs, writes no partial rows, loses no
acknowledged job, and serves normally afterwards without a restart. A 503 is database_unavailable (nothing was
written) unless the shutdown cut a submission's insert short: then outcome_unknown, and only such a job may be
stored without having been acknowledged.

The database is an embedded server of this test's own (in tmp_path), never the shared one other tests use."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from comfyq import embedded
from comfyq.db import connect_once
from comfyq.processes import ManagedProcess
from comfyq.stack import start_api
from tests.e2e_support import TINY_GRAPH, wait_until
from tests.support.private_pg import private_postgres

pytestmark = pytest.mark.slow

TOKEN = "outage-token-0123456789abcdefghijklmnop"
REQUEST_TIMEOUT = 10.0  # a request slower than this counts as a hang
OUTAGE_CODES = {"database_unavailable", "outcome_unknown"}
POSTERS = 3  # concurrent clients, so both workers serve and hold pooled connections


@dataclass
class Answer:
    started: float
    seconds: float
    status: int | None  # None: no HTTP answer at all (connection error or timeout)
    body: Any
    retry_after: str | None
    problem: str | None = None


@pytest.fixture
def own_postgres() -> Iterator[tuple[Path, str]]:
    """A migrated cluster of this test's own: (data dir, URL), stopped and removed in teardown."""
    with private_postgres() as pg:
        yield pg.data_dir, pg.url


class Posters:
    """POST /jobs in a loop from a few threads until stopped, recording every answer."""

    def __init__(self, api: str, limit: int = 20000) -> None:
        self.api = api
        self.limit = limit
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"poster-{i}", daemon=True) for i in range(POSTERS)]

    def __enter__(self) -> Posters:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(REQUEST_TIMEOUT + 5)
        assert not any(thread.is_alive() for thread in self._threads)

    def _run(self) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {TOKEN}"
        while not self._stop.is_set() and len(self.answers) < self.limit:
            started = time.monotonic()
            try:
                response = session.post(f"{self.api}/jobs", json={"graph": TINY_GRAPH}, timeout=REQUEST_TIMEOUT)
                try:
                    body = response.json()
                except ValueError:
                    body = response.text
                answer = Answer(started, time.monotonic() - started, response.status_code, body,
                                response.headers.get("Retry-After"))
            except requests.RequestException as exc:
                answer = Answer(started, time.monotonic() - started, None, None, None, repr(exc))
            with self._lock:
                self.answers.append(answer)
            time.sleep(0.01)

    def count(self, status: int, since: float = 0.0) -> int:
        with self._lock:
            return sum(1 for a in self.answers if a.status == status and a.started >= since)


def readyz(api: str) -> int:
    return requests.get(f"{api}/readyz", timeout=REQUEST_TIMEOUT).status_code


def test_postgres_restart_while_jobs_arrive(tmp_path: Path, own_postgres: tuple[Path, str],
                                            record_figure: Any) -> None:
    data_dir, url = own_postgres
    api_proc: ManagedProcess | None = None
    try:
        api_proc, api = start_api(tmp_path / "logs", {"DATABASE_URL": url, "COMFYQ_API_TOKEN": TOKEN,
                                                      "COMFYQ_DB_CONNECT_TIMEOUT": "2"}, workers=2)
        assert readyz(api) == 200
        with Posters(api) as posters:
            wait_until(lambda: posters.count(202) >= 30, 30, "jobs accepted before the outage")

            embedded.stop(data_dir)
            stopped = time.monotonic()
            wait_until(lambda: posters.count(503, since=stopped) >= 20 and time.monotonic() - stopped > 1.5, 30,
                       "503 answers while postgres is down")
            down = requests.get(f"{api}/readyz", timeout=REQUEST_TIMEOUT)
            assert down.status_code == 503 and down.headers.get("Retry-After")
            assert down.json() == {"status": "unavailable"}

            assert embedded.start(data_dir) == url  # same data dir, same socket: the API's URL still holds
            restarted = time.monotonic()
            wait_until(lambda: readyz(api) == 200, 30, "/readyz to recover without restarting gunicorn")
            wait_until(lambda: posters.count(202, since=restarted) >= 30, 30, "jobs accepted after the restart")
        answers = list(posters.answers)
        assert api_proc.running()
    finally:
        if api_proc is not None:
            api_proc.stop(timeout=15)

    problems = [a for a in answers if a.status not in (202, 503)]
    assert not problems, f"answers other than 202/503: {problems[:5]}"
    slowest = max(a.seconds for a in answers)
    assert slowest < REQUEST_TIMEOUT
    for answer in answers:
        if answer.status == 503:
            assert answer.retry_after and answer.body["error"]["code"] in OUTAGE_CODES, answer
            assert set(answer.body["error"]) == {"code", "message", "details"}
    unknown = sum(1 for a in answers if a.status == 503 and a.body["error"]["code"] == "outcome_unknown")
    after_restart = [a for a in answers if a.started >= restarted]
    failed_after = sum(1 for a in after_restart if a.status != 202)
    accepted = [a.body["id"] for a in answers if a.status == 202]
    record_figure("outage: answers (202 / 503, of which outcome_unknown)",
                  f"{len(accepted)} / {len(answers) - len(accepted)}, {unknown}")
    record_figure("outage: 503 after postgres was back", f"{failed_after} of {len(after_restart)}")
    record_figure("outage: slowest answer", f"{slowest:.2f}s")

    # Every acknowledged job is stored, and nothing else but what an outcome_unknown answer may have committed:
    # a submit refused with database_unavailable left no row behind.
    conn = connect_once(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, graph, status FROM job_queue ORDER BY id")
            rows = cur.fetchall()
    finally:
        conn.close()
    stored = {row[0] for row in rows}
    assert stored >= set(accepted)
    assert len(stored) - len(accepted) <= unknown
    assert all(row[1] == TINY_GRAPH and row[2] == "queued" for row in rows)
    # Once postgres answered again, no request was refused for a connection the outage had broken.
    assert failed_after == 0


def test_quick_restart_leaves_no_broken_connection_in_the_pools(tmp_path: Path, own_postgres: tuple[Path, str],
                                                               record_figure: Any) -> None:
    """Postgres restarts between requests (nothing in flight, so no request discards the broken
    connections): the first requests afterwards must still get fresh connections, not 503."""
    data_dir, url = own_postgres
    api_proc: ManagedProcess | None = None
    try:
        api_proc, api = start_api(tmp_path / "logs", {"DATABASE_URL": url, "COMFYQ_API_TOKEN": TOKEN}, workers=2)
        with Posters(api) as posters:  # concurrent load: both workers' pools hold several connections
            wait_until(lambda: posters.count(202) >= 60, 30, "jobs accepted before the restart")
        assert all(a.status == 202 for a in posters.answers)
        accepted = len(posters.answers)

        embedded.stop(data_dir)
        assert embedded.start(data_dir) == url

        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {TOKEN}"
        posted: list[int] = []
        ready: list[int] = []
        for _ in range(20):  # a write first: it must not land on a connection the restart broke
            posted.append(session.post(f"{api}/jobs", json={"graph": TINY_GRAPH}, timeout=REQUEST_TIMEOUT)
                          .status_code)
            ready.append(session.get(f"{api}/readyz", timeout=REQUEST_TIMEOUT).status_code)
    finally:
        if api_proc is not None:
            api_proc.stop(timeout=15)
    record_figure("quick restart: POST and /readyz answers", f"{posted} {ready}")
    conn = connect_once(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM job_queue")
            assert cur.fetchone() == (accepted + posted.count(202),)
    finally:
        conn.close()
    assert posted == [202] * 20
    assert ready == [200] * 20
