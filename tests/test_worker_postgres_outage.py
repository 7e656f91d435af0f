"""Postgres restarted (`-m fast`, `-m immediate`) and stopped for 6 s then started again, while clients submit
through the API and two workers drain: no worker exits, no acknowledged job is lost, none is recorded twice,
the API answers 503 while the database is down and recovers by itself. A hung Postgres (SIGSTOP) is handled
the same way. The database is a cluster of the test's own (tests/support/private_pg.py)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from comfyq.db import connect_once
from comfyq.processes import ManagedProcess
from comfyq.stack import start_api
from tests.e2e_support import Stack, wait_until
from tests.support.private_pg import PrivatePostgres, private_postgres

pytestmark = pytest.mark.slow

TOKEN = "pg-outage-token-0123456789abcdefghijklmnop"
WORKER_SETTINGS = {"lease_seconds": "60", "heartbeat_seconds": "2", "rescue_interval_seconds": "5",
                   "db_connect_timeout": "2"}


def tiny(color: int) -> dict[str, Any]:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1,
                                                          "color": color % 256}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}


class Submitters:
    """Clients that POST jobs with an Idempotency-Key each and retry a refused or unknown outcome with the same
    key, as docs/api.md tells clients to: every key ends acknowledged exactly once."""

    def __init__(self, api: str, total: int, clients: int = 2) -> None:
        self.api = api
        self.total = total
        self.acknowledged: dict[str, int] = {}
        self.statuses: list[tuple[float, int | None, str]] = []
        self._lock = threading.Lock()
        self._next = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Submitters:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def wait_done(self, timeout: float) -> None:
        for thread in self._threads:
            thread.join(timeout)
        assert not any(t.is_alive() for t in self._threads), "submitters did not finish"

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= self.total:
                return None
            self._next += 1
            return self._next

    def _run(self) -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {TOKEN}"
        while not self._stop.is_set():
            n = self._take()
            if n is None:
                return
            key = uuid.uuid4().hex
            while not self._stop.is_set():
                code: int | None
                try:
                    response = session.post(f"{self.api}/jobs", json={"graph": tiny(n)}, timeout=15,
                                            headers={"Idempotency-Key": key})
                    code, body = response.status_code, response.json()
                except (requests.RequestException, ValueError) as exc:
                    code, body = None, {"error": {"code": exc.__class__.__name__}}
                with self._lock:
                    self.statuses.append((time.monotonic(), code, str((body.get("error") or {}).get("code", ""))))
                if code in (200, 201, 202):
                    with self._lock:
                        self.acknowledged[key] = int(body["id"])
                    break
                time.sleep(0.2)
            time.sleep(0.05)


@pytest.fixture
def own_pg() -> Iterator[PrivatePostgres]:
    with private_postgres() as pg:
        yield pg


def succeeded(url: str) -> int:
    conn = connect_once(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM job_queue WHERE status = 'succeeded'")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def safe_succeeded(url: str) -> int:
    try:
        return succeeded(url)
    except Exception:  # the server is down between two checks
        return -1


def insert_jobs(url: str, count: int) -> None:
    """`count` two-node jobs written straight into the test's own cluster (the API is not part of these tests)."""
    conn = connect_once(url)
    try:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO job_queue (graph) SELECT jsonb_build_object('1', jsonb_build_object("
                        "'class_type', 'EmptyImage', 'inputs', jsonb_build_object('width', 16, 'height', 16, "
                        "'batch_size', 1, 'color', g %% 256)), '2', jsonb_build_object('class_type', 'SaveImage', "
                        "'inputs', jsonb_build_object('images', jsonb_build_array('1', 0), 'filename_prefix', 't'))) "
                        "FROM generate_series(1, %s) g", (count,))
    finally:
        conn.close()


def run_counts(url: str) -> dict[str, int]:
    conn = connect_once(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT status, count(*) FROM job_queue GROUP BY status")
            by_status = dict(cur.fetchall())
            cur.execute("SELECT count(*) FROM (SELECT job_id FROM job_logs WHERE event = 'succeeded' GROUP BY job_id "
                        "HAVING count(*) > 1) x")
            twice = int(cur.fetchone()[0])
            cur.execute("SELECT count(*) FROM (SELECT job_id FROM job_logs WHERE event = 'claimed' GROUP BY job_id "
                        "HAVING count(*) > 1) x")
            claimed_twice = int(cur.fetchone()[0])
            cur.execute("SELECT coalesce(sum(attempts - 1), 0) FROM job_queue")
            extra = int(cur.fetchone()[0])
    finally:
        conn.close()
    return {"succeeded": by_status.get("succeeded", 0), "failed": by_status.get("failed", 0),
            "queued": by_status.get("queued", 0), "running": by_status.get("running", 0),
            "recorded_twice": twice, "run_twice": claimed_twice, "attempts_spent": extra}


def test_postgres_restarts_while_clients_submit_and_workers_drain(stack: Stack, own_pg: PrivatePostgres,
                                                                 record_figure: Any) -> None:
    total = 600
    stack.db_url = own_pg.url
    stack.standin("--node-seconds", "0.01")
    api_proc: ManagedProcess | None = None
    try:
        api_proc, api = start_api(stack.log_dir, {"DATABASE_URL": own_pg.url, "COMFYQ_API_TOKEN": TOKEN,
                                                  "COMFYQ_DB_CONNECT_TIMEOUT": "2"}, workers=2)
        workers = [stack.worker(f"w{n}", **WORKER_SETTINGS) for n in (1, 2)]
        with Submitters(api, total) as submitters:
            for label, outage in (("restart -m fast", lambda: own_pg.restart("fast")),
                                  ("restart -m immediate", lambda: own_pg.restart("immediate")),
                                  ("stop 6 s, start", lambda: (own_pg.stop("fast"), time.sleep(6), own_pg.start()))):
                before = safe_succeeded(own_pg.url)
                wait_until(lambda b=before: safe_succeeded(own_pg.url) >= b + 60, 120, f"progress before {label}")
                outage()
            submitters.wait_done(240)
        acknowledged = dict(submitters.acknowledged)
        wait_until(lambda: safe_succeeded(own_pg.url) >= len(acknowledged), 240, "every acknowledged job to run")
        exits = [w.proc.poll() if w.proc else None for w in workers]
        assert exits == [None, None], f"a worker exited: {exits}"
        assert [w.stop(timeout=15) for w in workers] == [0, 0]
        assert api_proc.running()
    finally:
        if api_proc is not None:
            api_proc.stop(timeout=15)
    counts = run_counts(own_pg.url)
    unavailable = sum(1 for _, code, _ in submitters.statuses if code == 503)
    codes = sorted({error for _, code, error in submitters.statuses if code == 503})
    record_figure("postgres restarts (fast, immediate, stop 6 s)", f"{counts}; API 503 answers: {unavailable} {codes}")
    assert len(acknowledged) == total and len(set(acknowledged.values())) == total  # one job per key
    assert counts["succeeded"] == total and counts["failed"] == 0 and counts["running"] == 0
    assert counts["recorded_twice"] == 0 and counts["attempts_spent"] == 0
    assert unavailable > 0  # the API said so while the database was down
    assert all(code in (200, 201, 202, 503) for _, code, _ in submitters.statuses)


def test_hung_postgres_is_an_outage_for_the_worker(stack: Stack, own_pg: PrivatePostgres, tmp_path: Path,
                                                   record_figure: Any) -> None:
    """Every process of the cluster SIGSTOPped for 10 s while a worker drains: calls give up after the I/O
    timeout, the worker waits it out and finishes every job once, without exiting."""
    stack.db_url = own_pg.url
    stack.standin("--node-seconds", "0.02")
    insert_jobs(own_pg.url, 150)
    worker = stack.worker("w1", lease_seconds="60", heartbeat_seconds="2", db_io_timeout_seconds="2",
                          db_connect_timeout="2", outage_backoff_max_seconds="3")
    wait_until(lambda: succeeded(own_pg.url) >= 20, 60, "jobs before the hang")
    mark = len(worker.output())
    with own_pg.frozen():
        frozen_at = time.monotonic()
        worker.wait_for(r"database unavailable", timeout=15, since=mark)
        detected = time.monotonic() - frozen_at
        time.sleep(max(0.0, 10 - detected))
    wait_until(lambda: safe_succeeded(own_pg.url) == 150, 120, "every job after the hang")
    counts = run_counts(own_pg.url)
    record_figure("postgres SIGSTOP 10 s: worker detected after", f"{detected:.1f}s (I/O timeout 2 s); {counts}")
    assert worker.running()
    assert counts["recorded_twice"] == 0 and counts["failed"] == 0 and counts["attempts_spent"] == 0


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc (clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_worker_waits_out_a_database_outage_without_spinning(stack: Stack, own_pg: PrivatePostgres,
                                                               record_figure: Any) -> None:
    """Postgres stopped under an idle worker: the worker backs off between probes instead of looping (it once
    burned 60% of a core for as long as the database was gone), and claims again once it is back."""
    stack.db_url = own_pg.url
    stack.standin("--node-seconds", "0.01")
    worker = stack.worker("w1", db_connect_timeout="2", outage_backoff_max_seconds="3")
    assert worker.proc is not None
    own_pg.stop("fast")
    try:
        worker.wait_for(r"database unavailable", timeout=30)
        before, started = _cpu_seconds(worker.proc.pid), time.monotonic()
        time.sleep(5)
        used = _cpu_seconds(worker.proc.pid) - before
        share = used / (time.monotonic() - started)
    finally:
        own_pg.start()
    record_figure("worker CPU while the database is down", f"{share:.1%} of a core")
    assert share < 0.10, f"the worker used {share:.0%} of a core while the database was down"
    insert_jobs(own_pg.url, 1)
    wait_until(lambda: succeeded(own_pg.url) == 1, 60, "a job after the database came back")
