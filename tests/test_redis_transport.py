"""QUEUE_BACKEND=redis beyond the shared contract: duplicate and stale messages run nothing, the reconciler finds
jobs whose message was lost, Redis going away falls back to Postgres, and switching backends loses nothing."""

from __future__ import annotations

import os
import shutil
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from rq import Queue
from rq.registry import ScheduledJobRegistry
from rq.serializers import JSONSerializer

from comfyq.db import Database
from comfyq.jobs import JobQueue, NewJob
from comfyq.processes import ManagedProcess
from comfyq.redis_transport import DELIVER, Bands, RedisTransport
from comfyq.settings import Settings
from comfyq.transport import Message, PostgresTransport, build_transport
from tests.e2e_support import TINY_GRAPH, free_port
from tests.redis_support import FLOORS, Backend, flush_messages, queued_messages


def job(**kwargs: Any) -> NewJob:
    return NewJob(graph=TINY_GRAPH, **kwargs)


def lose_messages(backend: Backend) -> None:
    """Drop every message of this backend (and nothing else)."""
    assert backend.conn is not None
    for key in backend.conn.scan_iter(f"rq:*{backend.prefix}*"):
        backend.conn.delete(key)


def transport_of(queue: JobQueue) -> RedisTransport:
    assert isinstance(queue.transport, RedisTransport)
    return queue.transport


def test_one_message_delivered_twice_runs_once(redis_backend: Backend, db: Database, sql: Any) -> None:
    producer = redis_backend.queue(db)
    job_id = producer.enqueue(job())["id"]
    transport_of(producer).publish([Message(job_id, 0, 0)])  # the same message again (same RQ id)
    band = Queue(Bands(redis_backend.prefix, FLOORS).name_for(0), connection=redis_backend.conn,
                 serializer=JSONSerializer)
    band.enqueue(DELIVER, job_id, job_id=f"{redis_backend.prefix}-{job_id}-0-copy")  # and a copy under another id
    assert queued_messages(redis_backend) == 3
    a, b = redis_backend.queue(db), redis_backend.queue(db)
    first = a.claim("a")
    assert first is not None and first.id == job_id
    assert b.claim("b") is None and a.claim("a") is None
    assert queued_messages(redis_backend) == 0
    assert transport_of(a).counts["redis_claims"] + transport_of(b).counts["redis_claims"] == 1
    assert transport_of(a).counts["dropped"] + transport_of(b).counts["dropped"] >= 1
    sql.execute("SELECT count(*) FROM job_logs WHERE job_id = %s AND event = 'claimed'", (job_id,))
    assert sql.fetchone()[0] == 1


def test_concurrent_duplicates_claim_once(redis_backend: Backend, db: Database, sql: Any) -> None:
    """Ten copies of every message, eight consumers at once: each job is claimed exactly once."""
    producer = redis_backend.queue(db)
    ids = [row["id"] for row in producer.enqueue_many([job() for _ in range(40)])]
    band = Queue(Bands(redis_backend.prefix, FLOORS).name_for(0), connection=redis_backend.conn,
                 serializer=JSONSerializer)
    for copy in range(9):
        for job_id in ids:
            band.enqueue(DELIVER, job_id, job_id=f"{redis_backend.prefix}-{job_id}-0-c{copy}")
    claimed: list[int] = []
    lock = threading.Lock()

    def consume(name: str) -> None:
        queue = redis_backend.queue(db)
        while (c := queue.claim(name)) is not None:
            with lock:
                claimed.append(c.id)

    threads = [threading.Thread(target=consume, args=(f"w{n}",)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(claimed) == sorted(ids)
    sql.execute("SELECT count(*) FROM job_logs WHERE event = 'claimed'")
    assert sql.fetchone()[0] == 40


def test_messages_of_canceled_and_finished_jobs_run_nothing(redis_backend: Backend, db: Database) -> None:
    queue = redis_backend.queue(db)
    canceled = queue.enqueue(job())["id"]
    queue.cancel(canceled, "default")
    done = queue.enqueue(job())["id"]
    claimed = queue.claim_next("pg")  # claimed without its message
    assert claimed is not None and claimed.id == canceled + 1 == done
    queue.complete(claimed.lease, [])
    consumer = redis_backend.queue(db)
    transport_of(consumer)._poll_due = False  # only the messages
    assert consumer.claim("w1") is None
    assert transport_of(consumer).counts["dropped"] == 2 and queued_messages(redis_backend) == 0


def test_a_message_that_arrives_early_is_scheduled_again(redis_backend: Backend, db: Database) -> None:
    queue = redis_backend.queue(db)
    job_id = queue.enqueue(job(run_at=datetime.now(UTC) + timedelta(seconds=30)))["id"]
    transport = transport_of(queue)
    scheduled = ScheduledJobRegistry(Bands(redis_backend.prefix, FLOORS).name_for(0), connection=redis_backend.conn,
                                     serializer=JSONSerializer)
    assert scheduled.get_job_ids() == [f"{redis_backend.prefix}-{job_id}-0"]
    band = Queue(scheduled.name, connection=redis_backend.conn, serializer=JSONSerializer)
    band.enqueue(DELIVER, job_id, job_id=f"{redis_backend.prefix}-{job_id}-0-early")
    transport._poll_due = False
    assert queue.claim("w1") is None
    assert transport.counts["rescheduled"] == 1 and queued_messages(redis_backend) == 0
    assert f"{redis_backend.prefix}-{job_id}-0" in scheduled.get_job_ids()


def test_reconciler_re_enqueues_jobs_whose_message_was_flushed(redis_backend: Backend, db: Database) -> None:
    producer = redis_backend.queue(db)
    ids = [row["id"] for row in producer.enqueue_many([job(priority=p) for p in (0, 50, -20, 0, 5)])]
    assert queued_messages(redis_backend) == 5
    flush_messages(redis_backend.conn)  # type: ignore[arg-type]
    consumer = redis_backend.queue(db)
    transport = transport_of(consumer)
    transport._poll_due = False  # a worker that already drained Redis once: no Postgres poll until idle
    assert consumer.claim("w1") is None
    assert transport.reconcile(db) == 5
    assert transport.reconcile(db) == 0  # every queued job has its message again
    claimed = []
    while (c := consumer.claim("w1")) is not None:
        claimed.append(c.id)
    assert sorted(claimed) == sorted(ids) and transport.counts["redis_claims"] == 5
    assert claimed[0] == ids[1]  # the band order is back


def test_reconciler_leaves_fresh_rows_and_live_messages_alone(redis_backend: Backend, db: Database) -> None:
    producer = redis_backend.queue(db)
    producer.enqueue_many([job() for _ in range(3)])
    graceful = redis_backend.transport(reconcile_grace_seconds=60.0, reconcile_seconds=0.01)
    assert isinstance(graceful, RedisTransport)
    flush_messages(redis_backend.conn)  # type: ignore[arg-type]
    assert graceful.reconcile(db) == 0  # younger than the grace period: their publish may be under way
    time.sleep(0.15)  # past the reconciler lock of that tick
    eager = redis_backend.transport(reconcile_grace_seconds=0.0, reconcile_seconds=0.01)
    assert isinstance(eager, RedisTransport)
    assert eager.reconcile(db) == 3
    time.sleep(0.15)
    assert eager.reconcile(db) == 0 and queued_messages(redis_backend) == 3


def test_only_one_worker_reconciles_per_tick(redis_backend: Backend, db: Database) -> None:
    redis_backend.queue(db).enqueue_many([job() for _ in range(4)])
    flush_messages(redis_backend.conn)  # type: ignore[arg-type]
    first, second = (redis_backend.transport(reconcile_seconds=5.0) for _ in range(2))
    assert isinstance(first, RedisTransport) and isinstance(second, RedisTransport)
    assert first.reconcile(db) == 4
    lose_messages(redis_backend)
    assert second.reconcile(db) == 0  # the first one's lock holds for this tick
    redis_backend.conn.delete(f"{redis_backend.prefix}:reconciler")  # type: ignore[union-attr]
    assert second.reconcile(db) == 4


def test_redis_down_falls_back_to_postgres(db: Database, db_url: str) -> None:
    dead = RedisTransport(redis.Redis(port=free_port(), socket_connect_timeout=0.5), retry_seconds=30)
    queue = JobQueue(db, lease_seconds=30, transport=dead)
    job_id = queue.enqueue(job())["id"]  # the publish fails quietly; the row is committed
    assert not dead.redis_ok()
    claimed = queue.claim("w1")
    assert claimed is not None and claimed.id == job_id and dead.counts["postgres_claims"] == 1
    waiter = dead.waiter(db)
    try:
        started = time.monotonic()
        threading.Timer(0.3, lambda: queue.enqueue(job())).start()
        assert waiter.wait(10) is True  # woken by NOTIFY on Postgres, as QUEUE_BACKEND=postgres would be
        assert time.monotonic() - started < 5
    finally:
        waiter.close()
    assert queue.claim("w1") is not None


def test_redis_dying_right_after_a_claim_does_not_lose_the_claim(db: Database, tmp_path: Any) -> None:
    """A real redis-server is killed between claim_by_id (committed in Postgres) and the delete of the message:
    the worker still gets its job, instead of leaving it claimed by nobody until the lease runs out."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    server = ManagedProcess("redis-private", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                              "--appendonly", "no"], log_path=tmp_path / "redis.log")
    server.start(r"Ready to accept connections", timeout=20)
    try:
        transport = RedisTransport(redis.Redis(port=port, socket_connect_timeout=0.5), prefix="dies",
                                   retry_seconds=30)

        class RedisDiesAfterTheClaim(JobQueue):
            def claim_by_id(self, job_id: int, worker_id: str) -> Any:
                claimed = super().claim_by_id(job_id, worker_id)
                server.kill()
                return claimed

        queue = RedisDiesAfterTheClaim(db, lease_seconds=30, transport=transport)
        job_id = queue.enqueue(job())["id"]
        claimed = queue.claim("w1")
        assert claimed is not None and claimed.id == job_id and claimed.attempt == 1
        assert queue.complete(claimed.lease, [])
        assert queue.claim("w1") is None  # Redis is down now: the Postgres safety net finds nothing more
    finally:
        server.stop()


def test_jobs_queued_under_postgres_are_claimed_under_redis(redis_backend: Backend, db: Database) -> None:
    old = JobQueue(db, transport=PostgresTransport())
    ids = [row["id"] for row in old.enqueue_many([job() for _ in range(3)])]
    consumer = redis_backend.queue(db)
    claimed = []
    while (c := consumer.claim("w1")) is not None:  # a fresh worker polls Postgres until it says none
        claimed.append(c.id)
    assert claimed == ids and transport_of(consumer).counts["postgres_claims"] == 3


def test_messages_left_after_a_switch_to_postgres_run_nothing(redis_backend: Backend, db: Database) -> None:
    ids = [row["id"] for row in redis_backend.queue(db).enqueue_many([job() for _ in range(3)])]
    pg = JobQueue(db, transport=PostgresTransport())
    drained = []
    while (c := pg.claim("pg")) is not None:
        drained.append(c.id)
        pg.complete(c.lease, [])
    assert drained == ids and queued_messages(redis_backend) == 3
    back = redis_backend.queue(db)
    assert back.claim("w1") is None
    assert transport_of(back).counts["dropped"] == 3 and queued_messages(redis_backend) == 0


def test_idle_wait_returns_on_a_message_and_on_a_wake_byte(redis_backend: Backend, db: Database) -> None:
    consumer = redis_backend.queue(db)
    waiter = transport_of(consumer).waiter(db)
    producer = redis_backend.queue(db)
    try:
        started = time.monotonic()
        threading.Timer(0.2, lambda: producer.enqueue(job())).start()
        assert waiter.wait(10) is True
        assert time.monotonic() - started < 1.5
        claimed = consumer.claim("w1")
        assert claimed is not None and transport_of(consumer).counts["redis_claims"] == 1
        read, write = os.pipe()
        try:
            threading.Timer(0.2, lambda: os.write(write, b"x")).start()
            started = time.monotonic()
            assert waiter.wait(30, wake_fds=[read]) is False
            assert time.monotonic() - started < 2.5
        finally:
            os.close(read)
            os.close(write)
    finally:
        waiter.close()


def test_a_message_taken_but_not_claimed_is_handed_back(redis_backend: Backend, db: Database) -> None:
    job_id = redis_backend.queue(db).enqueue(job())["id"]
    leaving = redis_backend.queue(db)
    waiter = transport_of(leaving).waiter(db)
    assert waiter.wait(5) is True and queued_messages(redis_backend) == 0
    waiter.close()
    leaving.transport.close()  # a worker stopping between its wait and its claim
    assert queued_messages(redis_backend) == 1
    claimed = redis_backend.queue(db).claim("w2")
    assert claimed is not None and claimed.id == job_id


def test_settings_and_build() -> None:
    assert isinstance(build_transport(Settings()), PostgresTransport)
    made = build_transport(Settings(QUEUE_BACKEND="redis", REDIS_URL="redis://127.0.0.1:6379/0",
                                    redis_band_floors="5, 0"))
    assert isinstance(made, RedisTransport) and made.bands.names == ["comfyq.ge5", "comfyq.ge0", "comfyq.lt0"]
    made.close()
    with pytest.raises(ValueError, match="REDIS_URL"):
        Settings(QUEUE_BACKEND="redis")
    with pytest.raises(ValueError, match="queue backend"):
        Settings(QUEUE_BACKEND="rabbit")
    with pytest.raises(ValueError, match="descending"):
        Settings(redis_band_floors="0,10")
    bands = Bands("p", (100, 0))
    assert [bands.rank(p) for p in (1000, 100, 99, 0, -1, -1000)] == [0, 0, 1, 1, 2, 2]


def test_the_api_publishes_submissions_and_retries(redis_backend: Backend, db: Database, db_url: str) -> None:
    from comfyq.api.app import create_app  # noqa: PLC0415

    token = "t0ken-123-0123456789abcdefghijklmnop"
    app = create_app(Settings(database_url=db_url, api_token=token, QUEUE_BACKEND="redis",
                              REDIS_URL=redis_backend.redis_url, redis_prefix=redis_backend.prefix))
    auth = {"Authorization": f"Bearer {token}"}
    try:
        with app.test_client() as client:
            one = client.post("/jobs", json={"graph": TINY_GRAPH, "priority": 50}, headers=auth)
            batch = client.post("/jobs/batch", json={"jobs": [{"graph": TINY_GRAPH}] * 3},
                                headers={**auth, "Idempotency-Key": "k1"})
            again = client.post("/jobs/batch", json={"jobs": [{"graph": TINY_GRAPH}] * 3},
                                headers={**auth, "Idempotency-Key": "k1"})
            assert (one.status_code, batch.status_code, again.status_code) == (202, 202, 200)
            assert queued_messages(redis_backend) == 4  # the replay published nothing
            consumer = redis_backend.queue(db)
            transport_of(consumer)._poll_due = False  # messages only
            claimed = [c for c in iter(lambda: consumer.claim("w1"), None)]
            assert [c.id for c in claimed] == [one.get_json()["id"]] + [j["id"] for j in batch.get_json()["jobs"]]
            first = claimed[0]
            consumer.fail_attempt(first.lease, {"type": "validation_error"}, retryable=False, delay_seconds=0)
            assert client.post(f"/jobs/{first.id}/retry", headers=auth).status_code in (200, 202)
            assert queued_messages(redis_backend) == 1
            retried = consumer.claim("w1")
            assert retried is not None and retried.id == first.id
    finally:
        services = app.extensions.get("comfyq")
        if services is not None:
            services.queue.transport.close()
            services.db.close()
