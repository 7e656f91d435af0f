"""The queue core against a real Postgres: order, leases, fencing, retries, cancel, rescue, expiry, logs."""

from __future__ import annotations

import itertools
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from comfyq.backoff import retry_delay
from comfyq.db import Database
from comfyq.errors import ConstraintViolation
from comfyq.jobs import JobQueue, NewJob

GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}


def job(**kwargs: Any) -> NewJob:
    return NewJob(graph=GRAPH, **kwargs)


def events(queue: JobQueue, job_id: int) -> list[str]:
    return [row["event"] for row in queue.logs(job_id)]


def test_priority_order_then_oldest_first(queue: JobQueue) -> None:
    priorities = [0, 5, -3, 5, 10, 0, 7, 10, -3, 1]
    ids = [queue.enqueue(job(priority=p))["id"] for p in priorities]
    claimed = []
    while (c := queue.claim("w1")) is not None:
        claimed.append(c.id)
    expected = [i for _, _, i in sorted(zip([-p for p in priorities], range(10), ids))]
    assert claimed == expected


def test_enqueue_many_is_one_statement_in_input_order(queue: JobQueue, sql: Any) -> None:
    rows = queue.enqueue_many([job(priority=i % 3, params={"n": i}) for i in range(250)])
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    sql.execute("SELECT params->>'n' FROM job_queue ORDER BY id")
    assert [int(r[0]) for r in sql.fetchall()] == list(range(250))
    sql.execute("SELECT count(*) FROM job_logs WHERE event = 'queued'")
    assert sql.fetchone()[0] == 250


def test_bad_rows_write_nothing(queue: JobQueue, sql: Any) -> None:
    with pytest.raises(ConstraintViolation):
        queue.enqueue_many([job(), job(priority=99999)])
    sql.execute("SELECT count(*) FROM job_queue")
    assert sql.fetchone()[0] == 0


def test_claim_skips_future_and_overdue_jobs(queue: JobQueue) -> None:
    now = datetime.now(UTC)
    queue.enqueue(job(run_at=now + timedelta(hours=1)))
    queue.enqueue(job(deadline=now - timedelta(seconds=1)))
    assert queue.claim("w1") is None
    assert len(queue.expire_overdue()) == 1


def test_completion_is_fenced_by_attempt(queue: JobQueue, sql: Any) -> None:
    job_id = queue.enqueue(job())["id"]
    first = queue.claim("w1")
    assert first is not None
    sql.execute("UPDATE job_queue SET lease_expires_at = now() - interval '1 second' WHERE id = %s", (job_id,))
    assert [r["status"] for r in queue.rescue_expired()] == ["queued"]
    second = queue.claim("w2")
    assert second is not None and second.attempt == 2
    assert not queue.complete(first.lease, [{"key": "stale"}])
    assert not queue.fail_attempt(first.lease, {"type": "x"}, retryable=True, delay_seconds=0)
    assert queue.renew("w1", [first.lease]) == {}
    assert queue.complete(second.lease, [{"key": f"{job_id}/2/a.png"}])
    row = queue.get(job_id, "default")
    assert row is not None and row["status"] == "succeeded" and row["outputs"] == [{"key": f"{job_id}/2/a.png"}]
    assert events(queue, job_id) == ["queued", "claimed", "rescued", "claimed", "succeeded"]


def test_retry_with_backoff_until_max_attempts(queue: JobQueue, sql: Any) -> None:
    job_id = queue.enqueue(job(max_attempts=3))["id"]
    statuses = []
    for _ in range(3):
        sql.execute("UPDATE job_queue SET run_at = now() WHERE id = %s", (job_id,))
        claimed = queue.claim("w1")
        assert claimed is not None
        row = queue.fail_attempt(claimed.lease, {"type": "comfyui_unavailable", "message": "down"},
                                 retryable=True, delay_seconds=30)
        assert row is not None
        statuses.append(row["status"])
    assert statuses == ["queued", "queued", "failed"]
    final = queue.get(job_id, "default")
    assert final is not None and final["attempts"] == 3 and final["error"]["message"] == "down"
    assert events(queue, job_id) == ["queued", "claimed", "retry_scheduled", "claimed", "retry_scheduled",
                                     "claimed", "failed"]


def test_retry_delay_waits_in_the_queue(queue: JobQueue) -> None:
    queue.enqueue(job())
    claimed = queue.claim("w1")
    assert claimed is not None
    queue.fail_attempt(claimed.lease, {"type": "t"}, retryable=True, delay_seconds=60)
    assert queue.claim("w1") is None


def test_permanent_failure_does_not_retry(queue: JobQueue) -> None:
    job_id = queue.enqueue(job(max_attempts=5))["id"]
    claimed = queue.claim("w1")
    assert claimed is not None
    row = queue.fail_attempt(claimed.lease, {"type": "validation_error"}, retryable=False, delay_seconds=0)
    assert row is not None and row["status"] == "failed"
    assert queue.get(job_id, "default")["finished_at"] is not None  # type: ignore[index]


def test_cancel_queued_and_running(queue: JobQueue) -> None:
    queued_id = queue.enqueue(job(priority=-1))["id"]
    running_id = queue.enqueue(job(priority=5))["id"]
    running = queue.claim("w1")
    assert running is not None and running.id == running_id
    assert queue.cancel(queued_id, "default") == {"id": queued_id, "status": "canceled"}
    assert queue.cancel(running_id, "default") == {"id": running_id, "status": "running"}
    assert queue.cancel(running_id, "other-tenant") is None
    assert queue.renew("w1", [running.lease]) == {running_id: True}
    assert queue.finish_canceled(running.lease)
    assert queue.cancel(running_id, "default") is None  # already finished
    assert events(queue, running_id) == ["queued", "claimed", "cancel_requested", "canceled"]
    assert events(queue, queued_id) == ["queued", "canceled"]


def test_release_does_not_count_an_attempt(queue: JobQueue) -> None:
    job_id = queue.enqueue(job())["id"]
    claimed = queue.claim("w1")
    assert claimed is not None
    assert queue.release(claimed.lease, "shutdown")
    again = queue.claim("w2")
    assert again is not None and again.id == job_id and again.attempt == 1


def test_a_released_job_keeps_its_place_in_the_queue(queue: JobQueue) -> None:
    """Handed back by no fault of its own, a job goes before the jobs that arrived after it."""
    first = queue.enqueue(job())["id"]
    claimed = queue.claim("w1")
    assert claimed is not None and claimed.id == first
    later = queue.enqueue(job())["id"]
    assert queue.release(claimed.lease, "outage budget")
    again = queue.claim("w2")
    assert again is not None and again.id == first and later != first


def test_rescue_fails_a_job_out_of_attempts(queue: JobQueue, sql: Any) -> None:
    job_id = queue.enqueue(job(max_attempts=1))["id"]
    assert queue.claim("w1") is not None
    sql.execute("UPDATE job_queue SET lease_expires_at = now() - interval '1 second' WHERE id = %s", (job_id,))
    assert [r["status"] for r in queue.rescue_expired()] == ["failed"]
    row = queue.get(job_id, "default")
    assert row is not None and row["error"]["type"] == "lease_expired"


def test_renew_extends_the_lease(queue: JobQueue, sql: Any) -> None:
    job_id = queue.enqueue(job())["id"]
    claimed = queue.claim("w1")
    assert claimed is not None
    sql.execute("UPDATE job_queue SET lease_expires_at = now() + interval '1 second' WHERE id = %s", (job_id,))
    assert queue.renew("w1", [claimed.lease]) == {job_id: False}
    sql.execute("SELECT lease_expires_at - now() > interval '20 seconds' FROM job_queue WHERE id = %s",
                (job_id,))
    assert sql.fetchone()[0] is True


def test_every_transition_is_logged_with_timestamps(queue: JobQueue) -> None:
    job_id = queue.enqueue(job())["id"]
    claimed = queue.claim("w1")
    assert claimed is not None
    queue.complete(claimed.lease, [])
    logs = queue.logs(job_id)
    assert [(r["from_status"], r["to_status"]) for r in logs] == [
        (None, "queued"), ("queued", "running"), ("running", "succeeded")]
    assert all(r["created_at"] is not None for r in logs)
    assert logs[2]["duration_ms"] is not None and logs[2]["worker_id"] == "w1"


def test_claim_plan_uses_the_partial_index(db: Database, queue: JobQueue, sql: Any) -> None:
    queue.enqueue_many([job(priority=i % 7) for i in range(2000)])
    sql.execute("ANALYZE job_queue")
    sql.execute("SET enable_seqscan = off")  # small tables: ask whether the index CAN serve the claim
    claim_sql = db.sql("claim_jobs")
    select_part = claim_sql[claim_sql.index("SELECT id"):claim_sql.index("FOR UPDATE")].replace("%(limit)s", "1")
    sql.execute("EXPLAIN (FORMAT JSON) " + select_part)
    plan = json.dumps(sql.fetchone()[0])
    assert "job_queue_claim_idx" in plan
    assert '"Sort"' not in plan.replace('"Sort Key"', "")


def test_backoff_grows_and_is_capped() -> None:
    rng = random.Random(7)
    delays = [retry_delay(n, base=1.0, cap=20.0, rng=rng) for n in range(1, 9)]
    growing = delays[:5]  # ceilings 1, 2, 4, 8, 16: each draw is at least the previous ceiling
    assert all(a <= b for a, b in itertools.pairwise(growing))
    assert all(10.0 <= d <= 20.0 for d in delays[5:])  # capped: jitter within [cap/2, cap]
    assert delays[0] >= 0.5
    with pytest.raises(ValueError):
        retry_delay(0, 1.0, 2.0)


def test_claim_many_takes_the_next_jobs_in_order_and_logs_each(queue: JobQueue, db: Database, sql: Any) -> None:
    db.execute("register_worker", {"id": "w1", "host": "h", "pid": 1, "comfyui_url": "none"})
    ids = [queue.enqueue(job(priority=p))["id"] for p in [0, 5, 1, 5, 0]]
    first = queue.claim_many("w1", 3)
    assert [c.id for c in first] == [ids[1], ids[3], ids[2]]
    assert all(c.attempt == 1 and c.lease.worker_id == "w1" for c in first)
    rest = queue.claim_many("w1", 10)
    assert [c.id for c in rest] == [ids[0], ids[4]]
    assert queue.claim_many("w1", 10) == []
    sql.execute("SELECT count(*) FROM job_logs WHERE event = 'claimed'")
    assert sql.fetchone()[0] == 5
    sql.execute("SELECT current_job_id FROM workers WHERE id = 'w1'")
    assert sql.fetchone()[0] == min(ids[0], ids[4])
    with pytest.raises(ValueError):
        queue.claim_many("w1", 0)


def test_claim_many_from_two_workers_never_shares_a_job(queue: JobQueue) -> None:
    queue.enqueue_many([job() for _ in range(30)])
    a = queue.claim_many("a", 12)
    b = queue.claim_many("b", 12)
    c = queue.claim_many("a", 12)
    taken = [j.id for j in a + b + c]
    assert len(taken) == 30 and len(set(taken)) == 30


def test_complete_many_records_held_leases_and_skips_lost_ones(queue: JobQueue, db: Database, sql: Any) -> None:
    db.execute("register_worker", {"id": "w1", "host": "h", "pid": 1, "comfyui_url": "none"})
    queue.enqueue_many([job() for _ in range(4)])
    claimed = queue.claim_many("w1", 4)
    stale = claimed[3].lease.__class__(claimed[3].id, claimed[3].attempt + 1, "w1")  # not the attempt it holds
    finished = [(c.lease, [{"filename": f"{c.id}.png"}]) for c in claimed[:3]] + [(stale, [])]
    recorded = queue.complete_many("w1", finished)
    assert recorded == {c.id for c in claimed[:3]}
    sql.execute("SELECT id, status, outputs FROM job_queue ORDER BY id")
    rows = sql.fetchall()
    assert [r[1] for r in rows] == ["succeeded"] * 3 + ["running"]
    assert rows[0][2] == [{"filename": f"{rows[0][0]}.png"}]
    sql.execute("SELECT jobs_done FROM workers WHERE id = 'w1'")
    assert sql.fetchone()[0] == 3
    sql.execute("SELECT count(*) FROM job_logs WHERE event = 'succeeded'")
    assert sql.fetchone()[0] == 3
    assert queue.complete_many("w1", finished[:1]) == set()  # a second finish of the same attempt changes nothing
    with pytest.raises(ValueError):
        queue.complete_many("w2", finished[:1])
