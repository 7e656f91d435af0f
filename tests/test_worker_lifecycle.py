"""The workers' lifecycle against a real database, without worker processes: a worker silent past the bound is
declared dead once, by any other worker's tick, however many run it at once; a dead worker that heartbeats is alive
again, a forgotten one registers again; the silent_workers alert counts only workers nobody has taken over from and
resolves once the dead worker's jobs are rescued and another worker is live; operators forget dead or stopped
workers through the API, never live ones. tests/test_worker_death_e2e.py does the same with real processes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from pydantic import ValidationError

from comfyq.db import Database, Row
from comfyq.jobs import JobQueue, NewJob
from comfyq.settings import Settings
from comfyq.workers_registry import WorkerRegistry, declare_dead_workers
from tests.e2e_support import TINY_GRAPH
from tests.support.api_app import api_app, bearer

Headers = dict[str, str]
BOUND = 30.0


def add_worker(sql: Any, worker_id: str, *, silent_for: float = 0, status: str = "running") -> None:
    sql.execute("INSERT INTO workers (id, host, pid, comfyui_url, status, heartbeat_at) "
                "VALUES (%s, 'gpu', 1, 'http://gpu:8188', %s, now() - make_interval(secs => %s))",
                (worker_id, status, silent_for))


def statuses(sql: Any) -> dict[str, str]:
    sql.execute("SELECT id, status FROM workers")
    return dict(sql.fetchall())


def snapshot(db: Database) -> Row:
    row = db.fetch_one("monitoring_snapshot")
    assert row is not None
    return row


def test_silent_workers_are_declared_dead_once_and_never_the_declarer(db: Database, sql: Any,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    add_worker(sql, "alive")
    add_worker(sql, "quiet", silent_for=BOUND / 2)
    add_worker(sql, "gone", silent_for=BOUND * 2)
    add_worker(sql, "leaving", silent_for=BOUND * 2, status="draining")
    add_worker(sql, "done", silent_for=BOUND * 10, status="stopped")
    add_worker(sql, "me", silent_for=BOUND * 2)  # the declarer itself, just woken from a freeze
    with caplog.at_level(logging.WARNING, logger="comfyq.workers_registry"):
        declared = declare_dead_workers(db, BOUND, declared_by="me")
    assert sorted(row["id"] for row in declared) == ["gone", "leaving"]
    assert statuses(sql) == {"alive": "running", "quiet": "running", "gone": "dead", "leaving": "dead",
                             "done": "stopped", "me": "running"}
    lines = [r for r in caplog.records if getattr(r, "action", None) == "worker_declared_dead"]
    assert sorted(r.worker_id for r in lines) == ["gone", "leaving"]  # type: ignore[attr-defined]
    assert all(r.declared_by == "me" for r in lines)  # type: ignore[attr-defined]
    assert declare_dead_workers(db, BOUND, declared_by="me") == []  # idempotent


def test_many_workers_declaring_at_once_declare_each_death_once(db: Database, sql: Any) -> None:
    for n in range(20):
        add_worker(sql, f"gone-{n}", silent_for=BOUND * 2)
    results: list[list[Row]] = []
    start = threading.Barrier(6)

    def tick(n: int) -> None:
        start.wait()
        results.append(declare_dead_workers(db, BOUND, declared_by=f"live-{n}"))

    threads = [threading.Thread(target=tick, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    declared = [row["id"] for rows in results for row in rows]
    assert len(results) == 6 and sorted(declared) == sorted(f"gone-{n}" for n in range(20))


def test_a_dead_worker_that_heartbeats_is_alive_again(db: Database, sql: Any,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    registry = WorkerRegistry(db, "frozen")
    registry.register(host="gpu", pid=7, comfyui_url="http://gpu:8188")
    sql.execute("UPDATE workers SET heartbeat_at = now() - interval '1 hour' WHERE id = 'frozen'")
    assert [row["id"] for row in declare_dead_workers(db, BOUND, declared_by="other")] == ["frozen"]
    with caplog.at_level(logging.WARNING, logger="comfyq.workers_registry"):
        registry.heartbeat("draining", [])
        registry.heartbeat("draining", [])
    assert statuses(sql) == {"frozen": "draining"}
    assert [getattr(r, "action", None) for r in caplog.records][-1:] == ["worker_alive_again"]
    assert [getattr(r, "action", None) for r in caplog.records].count("worker_alive_again") == 1  # not per beat


def test_a_forgotten_worker_that_heartbeats_registers_again(db: Database, sql: Any) -> None:
    registry = WorkerRegistry(db, "back")
    registry.register(host="gpu", pid=7, comfyui_url="http://gpu:8188")
    sql.execute("DELETE FROM workers")
    registry.heartbeat("running", ["comfyui"])
    sql.execute("SELECT status, host, pid, comfyui_url FROM workers WHERE id = 'back'")
    assert sql.fetchall() == [("running", "gpu", 7, "http://gpu:8188")]


def test_silent_workers_counts_only_workers_nobody_took_over_from(db: Database, queue: JobQueue, sql: Any) -> None:
    """The alert's measure through a death: silent (fires), declared dead while its job is held (still fires), its
    job rescued with another worker live (resolved); dead with nobody live fires again."""
    add_worker(sql, "live")
    add_worker(sql, "killed")
    job = queue.enqueue(NewJob(graph=TINY_GRAPH))
    claimed = queue.claim("killed")
    assert claimed is not None and claimed.id == job["id"]
    assert (snapshot(db)["silent_workers"], snapshot(db)["live_workers"]) == (0, 2)

    sql.execute("UPDATE workers SET heartbeat_at = now() - interval '90 seconds' WHERE id = 'killed'")
    silent = snapshot(db)
    assert (silent["silent_workers"], silent["silent_worker_ids"], silent["dead_workers"]) == (1, ["killed"], 0)

    declare_dead_workers(db, 60, declared_by="live")
    dead = snapshot(db)  # declared dead, but its job still waits for its lease to expire
    assert (dead["silent_workers"], dead["dead_workers"], dead["live_workers"]) == (1, 1, 1)

    sql.execute("UPDATE job_queue SET lease_expires_at = now() - interval '1 second' WHERE id = %s", (job["id"],))
    assert [row["id"] for row in queue.rescue_expired()] == [job["id"]]
    assert (snapshot(db)["silent_workers"], snapshot(db)["dead_workers"]) == (0, 1)  # the alert resolves

    sql.execute("UPDATE workers SET status = 'stopped' WHERE id = 'live'")
    assert snapshot(db)["silent_workers"] == 1  # a dead worker and no live one left: not healthy
    sql.execute("UPDATE workers SET status = 'running', heartbeat_at = now() WHERE id = 'live'")
    sql.execute("DELETE FROM workers WHERE id = 'killed'")
    assert (snapshot(db)["silent_workers"], snapshot(db)["dead_workers"]) == (0, 0)


def test_the_alert_fires_for_a_killed_worker_and_resolves_by_itself(db: Database, queue: JobQueue, sql: Any) -> None:
    for name in ("queue_depth", "oldest_queued_seconds", "failures", "overdue_jobs"):
        assert db.fetch_one("monitor_threshold_set", {"name": name, "value": None}) is not None
    add_worker(sql, "live")
    add_worker(sql, "killed", silent_for=90)
    fired = {row["alert"]: row for row in db.fetch_all("alert_transitions")}
    assert fired["silent_workers"]["transition"] == "firing" and "killed" in fired["silent_workers"]["message"]
    declare_dead_workers(db, 60, declared_by="live")
    [resolved] = db.fetch_all("alert_transitions")
    assert (resolved["alert"], resolved["transition"], resolved["value"]) == ("silent_workers", "resolved", 0)
    assert db.fetch_all("alert_transitions") == []


def test_the_dead_bound_spans_several_heartbeats() -> None:
    assert Settings().worker_dead_after_seconds == 120
    assert Settings(heartbeat_seconds=0.5, worker_dead_after_seconds=1.5).worker_dead_after_seconds == 1.5
    with pytest.raises(ValidationError, match="at least 3 x COMFYQ_HEARTBEAT_SECONDS"):
        Settings(heartbeat_seconds=10, worker_dead_after_seconds=29)
    with pytest.raises(ValidationError):
        Settings(worker_dead_after_seconds=0)


# Forgetting through the API ---------------------------------------------------------------------------------------
@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Iterator[FlaskClient]:
    with api_app(database_url=db_url, storage_dir=tmp_path / "out", worker_dead_after_seconds=BOUND) as app:
        yield app.test_client()


@pytest.fixture
def token(db: Database) -> Callable[[str, str], Headers]:
    return lambda tenant, role: bearer(db, tenant, role)


def test_operators_forget_dead_or_stopped_workers_never_live_ones(client: FlaskClient, db: Database, sql: Any,
                                                                  token: Callable[[str, str], Headers]) -> None:
    add_worker(sql, "live")
    add_worker(sql, "slow", silent_for=BOUND / 2)  # silent, not past the bound: may still be alive
    add_worker(sql, "dead", silent_for=BOUND * 2, status="dead")
    add_worker(sql, "done", silent_for=BOUND * 2, status="stopped")
    add_worker(sql, "orphan", silent_for=BOUND * 2)  # past the bound, but nobody was left to declare it dead
    operator = token("ops", "operator")
    assert client.delete("/admin/workers/dead", headers=token("ops", "admin")).status_code == 403

    listed = client.get("/admin/workers", headers=operator).get_json()["workers"]
    assert {w["id"]: w["status"] for w in listed} == {"live": "running", "slow": "running", "dead": "dead",
                                                     "orphan": "running"}  # stopped ones only with all=true
    for worker_id in ("live", "slow"):
        refused = client.delete(f"/admin/workers/{worker_id}", headers=operator)
        assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "worker_alive"
        assert refused.get_json()["error"]["details"]["status"] == "running"
    for worker_id, status in (("dead", "dead"), ("done", "stopped"), ("orphan", "running")):
        forgotten = client.delete(f"/admin/workers/{worker_id}", headers=operator)
        assert forgotten.status_code == 200, forgotten.get_json()
        assert (forgotten.get_json()["id"], forgotten.get_json()["status"]) == (worker_id, status)
    assert statuses(sql) == {"live": "running", "slow": "running"}
    for worker_id in ("dead", "nobody", "a%00b"):
        missing = client.delete(f"/admin/workers/{worker_id}", headers=operator)
        assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"


def test_stats_count_dead_workers_apart(client: FlaskClient, sql: Any,
                                        token: Callable[[str, str], Headers]) -> None:
    add_worker(sql, "live")
    add_worker(sql, "quiet", silent_for=BOUND * 2)
    add_worker(sql, "dead", silent_for=BOUND * 2, status="dead")
    add_worker(sql, "done", silent_for=BOUND * 2, status="stopped")
    stats = client.get("/stats", headers=token("ops", "operator")).get_json()
    assert stats["workers"] == {"alive": 1, "silent": 1, "dead": 1}
