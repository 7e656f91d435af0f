"""The queue-core contract, run against both transports (QUEUE_BACKEND=postgres and =redis) from one suite: priority
order, two workers claiming at once, a dead worker's job rescued, retries after their delay, cancel. In process
here (each JobQueue with its own transport, as each worker process has); tests/test_transport_e2e.py runs the
same contract through real worker processes."""

from __future__ import annotations

import threading
import time
from typing import Any

from comfyq.db import Database
from comfyq.jobs import JobQueue, NewJob
from tests.e2e_support import TINY_GRAPH, wait_until
from tests.redis_support import Backend


def job(**kwargs: Any) -> NewJob:
    return NewJob(graph=TINY_GRAPH, **kwargs)


def events(queue: JobQueue, job_id: int) -> list[str]:
    return [row["event"] for row in queue.logs(job_id)]


def claim_all(queue: JobQueue, worker_id: str) -> list[int]:
    claimed = []
    while (c := queue.claim(worker_id)) is not None:
        claimed.append(c.id)
    return claimed


def test_priority_order(backend: Backend, db: Database) -> None:
    """Highest priority first, oldest first among equals. Redis orders by band (floors 100,10,1,0,-9,-99), FIFO
    inside a band; with one priority per band both transports give the same order."""
    queue = backend.queue(db)
    priorities = [0, 5, -3, 5, 10, 0, 7, 10, -3, 1, 150, -200, -50]
    ids = [queue.enqueue(job(priority=p))["id"] for p in priorities]
    expected = [i for _, _, i in sorted(zip([backend.rank(p) for p in priorities], range(len(ids)), ids))]
    assert claim_all(queue, "w1") == expected
    one_per_band = [-500, 0, 500, 5, -5, 50, -50]
    ids = [queue.enqueue(job(priority=p))["id"] for p in one_per_band]
    by_priority = [i for _, i in sorted(zip([-p for p in one_per_band], ids))]
    assert claim_all(queue, "w1") == by_priority
    assert backend.claims_through_redis() in (None, len(priorities) + len(one_per_band))


def test_two_workers_claim_each_job_once(backend: Backend, db: Database, sql: Any) -> None:
    producer = backend.queue(db)
    producer.enqueue_many([job(priority=i % 5) for i in range(300)])
    claimed: dict[str, list[int]] = {"w1": [], "w2": []}

    def work(worker_id: str) -> None:
        queue = backend.queue(db)  # each worker has its own transport (its own Redis consumer)
        while (c := queue.claim(worker_id)) is not None:
            claimed[worker_id].append(c.id)
            assert queue.complete(c.lease, [])

    threads = [threading.Thread(target=work, args=(w,)) for w in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    everything = claimed["w1"] + claimed["w2"]
    assert len(everything) == 300 and len(set(everything)) == 300
    assert claimed["w1"] and claimed["w2"]
    sql.execute("SELECT status, count(*), max(attempts) FROM job_queue GROUP BY status")
    assert sql.fetchall() == [("succeeded", 300, 1)]
    sql.execute("SELECT count(*) FROM job_logs WHERE event = 'claimed'")
    assert sql.fetchone()[0] == 300


def test_a_dead_workers_job_is_rescued_and_claimed_again(backend: Backend, db: Database, sql: Any) -> None:
    dead = backend.queue(db)
    job_id = dead.enqueue(job())["id"]
    first = dead.claim("dead")
    assert first is not None and first.id == job_id
    sql.execute("UPDATE job_queue SET lease_expires_at = now() - interval '1 second' WHERE id = %s", (job_id,))
    rescuer = backend.queue(db)
    assert [r["status"] for r in rescuer.rescue_expired()] == ["queued"]
    second = rescuer.claim("rescuer")
    assert second is not None and second.id == job_id and second.attempt == 2
    assert not dead.complete(first.lease, [{"key": "late"}])
    assert rescuer.complete(second.lease, [])
    assert events(rescuer, job_id) == ["queued", "claimed", "rescued", "claimed", "succeeded"]


def test_a_retry_waits_its_delay_then_runs(backend: Backend, db: Database) -> None:
    queue = backend.queue(db)
    job_id = queue.enqueue(job(max_attempts=2))["id"]
    claimed = queue.claim("w1")
    assert claimed is not None
    failed_at = time.monotonic()
    row = queue.fail_attempt(claimed.lease, {"type": "comfyui_unavailable", "message": "down"}, retryable=True,
                             delay_seconds=1.0)
    assert row is not None and row["status"] == "queued"
    assert queue.claim("w1") is None  # not due yet

    def retried() -> Any:
        backend.tick()  # Redis: RQ's scheduler moves the delayed message when it is due
        return queue.claim("w1")

    again = wait_until(retried, 10, "the retry to become claimable", interval=0.05)
    assert time.monotonic() - failed_at >= 1.0
    assert again.id == job_id and again.attempt == 2
    assert backend.claims_through_redis() in (None, 2)  # the retry came as a delayed RQ message
    again_row = queue.fail_attempt(again.lease, {"type": "comfyui_unavailable"}, retryable=True, delay_seconds=0)
    assert again_row is not None and again_row["status"] == "failed"  # out of attempts
    assert events(queue, job_id) == ["queued", "claimed", "retry_scheduled", "claimed", "failed"]


def test_a_released_job_is_claimed_again_without_losing_an_attempt(backend: Backend, db: Database) -> None:
    queue = backend.queue(db)
    job_id = queue.enqueue(job())["id"]
    claimed = queue.claim("w1")
    assert claimed is not None
    assert queue.release(claimed.lease, "shutdown")
    again = backend.queue(db).claim("w2")
    assert again is not None and again.id == job_id and again.attempt == 1


def test_canceled_jobs_never_run(backend: Backend, db: Database) -> None:
    queue = backend.queue(db)
    doomed = queue.enqueue(job(priority=5))["id"]
    kept = queue.enqueue(job())["id"]
    assert queue.cancel(doomed, "default") == {"id": doomed, "status": "canceled"}
    assert claim_all(queue, "w1") == [kept]
    assert events(queue, doomed) == ["queued", "canceled"]


def test_api_retry_puts_a_failed_job_back(backend: Backend, db: Database) -> None:
    queue = backend.queue(db)
    job_id = queue.enqueue(job(max_attempts=1))["id"]
    claimed = queue.claim("w1")
    assert claimed is not None
    queue.fail_attempt(claimed.lease, {"type": "validation_error"}, retryable=False, delay_seconds=0)
    assert queue.retry(job_id, "default") == {"id": job_id, "status": "queued"}
    again = backend.queue(db).claim("w2")
    assert again is not None and again.id == job_id and again.attempt == 1
