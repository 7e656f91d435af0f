"""The queues comfyq is compared with, and comfyq's own claim loop without ComfyUI, as child processes
(multiprocessing spawn: a fresh interpreter each, like a real worker) plus the producer side of each.

- pgqueuer (asyncpg driver): QueueManager with a no-op entrypoint; its log table records 'queued' and 'picked'
  with the server's now(), the same clock as comfyq's created_at and claimed_at.
- procrastinate (psycopg 3): a worker with LISTEN/NOTIFY on, jobs kept; procrastinate_events records 'deferred'
  and 'started'.
- plain: the floor, a psycopg2 loop woken by LISTEN that claims with one UPDATE ... SKIP LOCKED.
- comfyq core: JobQueue.claim / complete in a loop, as the worker does, with no ComfyUI behind it.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import select
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

PGQ_ENTRYPOINT = "bench"

PLAIN_SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_plain (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    status text NOT NULL DEFAULT 'queued',
    payload jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    claimed_at timestamptz
);
CREATE INDEX IF NOT EXISTS bench_plain_queued_idx ON bench_plain (id) WHERE status = 'queued';
CREATE OR REPLACE FUNCTION bench_plain_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('bench_plain', ''); RETURN NULL; END; $$;
DROP TRIGGER IF EXISTS bench_plain_notify ON bench_plain;
CREATE TRIGGER bench_plain_notify AFTER INSERT ON bench_plain FOR EACH STATEMENT EXECUTE FUNCTION bench_plain_notify();
"""
PLAIN_CLAIM = """
UPDATE bench_plain SET status = 'running', claimed_at = now()
WHERE id = (SELECT id FROM bench_plain WHERE status = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING id
"""


# Child processes --------------------------------------------------------------------------------------------
class Children:
    """Started consumer processes; each releases `ready` once it is idle and waiting."""

    def __init__(self, target: Callable[..., None], args_for: Callable[[int, Any, Any, Any], tuple[Any, ...]],
                 count: int, *, settle: float = 0.5) -> None:
        ctx = mp.get_context("spawn")
        self.stop = ctx.Event()
        self.go = ctx.Event()
        ready = ctx.Semaphore(0)
        self.procs = [ctx.Process(target=target, args=args_for(n, self.stop, self.go, ready), daemon=True)
                      for n in range(count)]
        for proc in self.procs:
            proc.start()
        for _ in self.procs:
            if not ready.acquire(timeout=60):
                self.close()
                raise SystemExit(f"a {target.__name__} child did not start")
        time.sleep(settle)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
        return not any(p.is_alive() for p in self.procs)

    def close(self) -> None:
        self.stop.set()
        self.go.set()
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()


def _watch(stop: Any, shutdown: asyncio.Event) -> asyncio.Task[None]:
    async def watcher() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.2)
        shutdown.set()

    return asyncio.create_task(watcher())


# pgqueuer ---------------------------------------------------------------------------------------------------
async def pgq_queries(url: str) -> tuple[Any, Any]:
    import asyncpg  # noqa: PLC0415 - only in the bench environment
    from pgqueuer import AsyncpgDriver, Queries  # noqa: PLC0415

    conn = await asyncpg.connect(url)
    return conn, Queries(AsyncpgDriver(conn))


async def pgq_install(url: str) -> None:
    conn, queries = await pgq_queries(url)
    try:
        if not await queries.schema_is_installed():
            await queries.install()
    finally:
        await conn.close()


def pgq_consumer(url: str, batch_size: int, drain: bool, stop: Any, go: Any, ready: Any) -> None:
    """drain=False: an idle worker until `stop`; drain=True: wait for `go`, drain the queue, exit."""
    from pgqueuer import QueueManager  # noqa: PLC0415
    from pgqueuer.types import QueueExecutionMode  # noqa: PLC0415

    async def main() -> None:
        conn, queries = await pgq_queries(url)
        qm = QueueManager(queries)

        @qm.entrypoint(PGQ_ENTRYPOINT)
        async def noop(job: Any) -> None:
            return None

        watcher = _watch(stop, qm.shutdown)
        ready.release()
        if drain:
            while not go.is_set() and not stop.is_set():
                await asyncio.sleep(0.005)
        mode = QueueExecutionMode.drain if drain else QueueExecutionMode.continuous
        try:
            await qm.run(batch_size=batch_size, mode=mode, log_aggregation_interval=timedelta(0))
        finally:
            watcher.cancel()
            await conn.close()

    asyncio.run(main())


# procrastinate ----------------------------------------------------------------------------------------------
def procrastinate_app(url: str) -> Any:
    import procrastinate  # noqa: PLC0415

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="noop", queue="bench")
    async def noop() -> None:
        return None

    return app


async def procrastinate_install(url: str) -> None:
    app = procrastinate_app(url)
    async with app.open_async():
        async with app.connector.pool.connection() as conn, conn.cursor() as cur:  # type: ignore[attr-defined]
            await cur.execute("SELECT to_regclass('procrastinate_jobs') IS NOT NULL")
            row = await cur.fetchone()
        if not row[0]:
            await app.schema_manager.apply_schema_async()


def procrastinate_consumer(url: str, stop: Any, go: Any, ready: Any) -> None:
    async def main() -> None:
        app = procrastinate_app(url)
        async with app.open_async():
            worker = asyncio.create_task(app.run_worker_async(
                queues=["bench"], wait=True, concurrency=1, listen_notify=True, delete_jobs="never",
                install_signal_handlers=False))
            await asyncio.sleep(0.5)
            ready.release()
            while not stop.is_set():
                await asyncio.sleep(0.2)
            worker.cancel()
            try:
                await worker
            except (asyncio.CancelledError, Exception):
                pass

    asyncio.run(main())


# plain psycopg2 ---------------------------------------------------------------------------------------------
def plain_install(url: str) -> None:
    import psycopg2  # noqa: PLC0415

    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(PLAIN_SCHEMA)
    conn.close()


def plain_consumer(url: str, stop: Any, go: Any, ready: Any) -> None:
    import psycopg2  # noqa: PLC0415

    listen = psycopg2.connect(url)
    listen.autocommit = True
    work = psycopg2.connect(url)
    work.autocommit = True
    with listen.cursor() as cur:
        cur.execute("LISTEN bench_plain")
    ready.release()
    with work.cursor() as cur:
        while not stop.is_set():
            cur.execute(PLAIN_CLAIM)
            if cur.fetchone() is not None:
                continue
            ready_fds, _, _ = select.select([listen], [], [], 0.2)
            if ready_fds:
                listen.poll()
                listen.notifies.clear()
    listen.close()
    work.close()


# comfyq core ------------------------------------------------------------------------------------------------
def comfyq_consumer(url: str, name: str, stop: Any, go: Any, ready: Any, batch: int = 1) -> None:
    """The queue core without ComfyUI: claim (SKIP LOCKED), complete at once; registered in `workers` like a
    real worker so claim and complete update its row. batch 1 is the ComfyUI worker's path (JobQueue.claim,
    JobQueue.complete); above 1, JobQueue.claim_many / complete_many, batch jobs per statement. Waits for `go`,
    exits when a claim finds none."""
    import socket  # noqa: PLC0415

    from comfyq.db import Database  # noqa: PLC0415
    from comfyq.jobs import JobQueue  # noqa: PLC0415
    from comfyq.settings import PROJECT_ROOT  # noqa: PLC0415

    db = Database(url, PROJECT_ROOT / "sql", max_size=2, application_name="comfyq-bench")
    queue = JobQueue(db, lease_seconds=60)
    db.execute("register_worker", {"id": name, "host": socket.gethostname(), "pid": 0, "comfyui_url": "none"})
    db.ping()
    ready.release()
    go.wait()
    try:
        while not stop.is_set():
            if batch == 1:
                job = queue.claim(name)
                if job is None:
                    break
                queue.complete(job.lease, [])
                continue
            jobs = queue.claim_many(name, batch)
            if not jobs:
                break
            queue.complete_many(name, [(claimed.lease, []) for claimed in jobs])
    finally:
        db.close()

