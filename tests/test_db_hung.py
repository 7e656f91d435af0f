"""A hung Postgres (every process of the cluster SIGSTOPped: the kernel still accepts and ACKs, so no TCP or
socket timeout ever fires) fails calls after the Database's io_timeout instead of blocking them for ever, and the
same Database works again once the server resumes.

The server is an embedded cluster of this module's own, never the shared one other tests use."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest

from comfyq.api.app import create_app
from comfyq.db import Database, connect_once
from comfyq.errors import DatabaseUnavailable, OutcomeUnknown
from comfyq.jobs import JobQueue, NewJob
from comfyq.settings import Settings
from tests.conftest import SQL_DIR
from tests.support.private_pg import PrivatePostgres, private_postgres

pytestmark = pytest.mark.slow

IO_TIMEOUT = 1.5
CONNECT_TIMEOUT = 2
GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {}}}


@pytest.fixture(scope="module")
def pg() -> Iterator[PrivatePostgres]:
    """A migrated cluster of this module's own (tests/support/private_pg.py), stopped and removed afterwards."""
    with private_postgres() as server:
        yield server


def timed(call: Callable[[], object]) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        call()
    except BaseException as exc:  # returned to the test
        return exc, time.monotonic() - started
    return None, time.monotonic() - started


def count_jobs(url: str) -> int:
    conn = connect_once(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM job_queue")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def test_a_hung_server_fails_calls_in_time_and_the_database_recovers(pg: PrivatePostgres) -> None:
    url = pg.url
    db = Database(url, SQL_DIR, min_size=2, max_size=2, io_timeout=IO_TIMEOUT, connect_timeout=CONNECT_TIMEOUT)
    queue = JobQueue(db)
    try:
        # Two pooled connections (the pool keeps min_size idle ones), both with ping and enqueue_jobs prepared:
        # on the frozen server the first call takes one, the second the other.
        with db.session() as first, db.session() as second:
            for session in (first, second):
                session.execute("ping")
                session.fetch_all("enqueue_jobs", {"jobs": json.dumps([NewJob(graph=GRAPH).to_json()])})
        before = count_jobs(url)
        with pg.frozen():
            read, read_seconds = timed(db.ping)
            write, write_seconds = timed(lambda: queue.enqueue(NewJob(graph=GRAPH)))
            connect, connect_seconds = timed(db.ping)  # the pool is empty now: a new connection is needed
        assert isinstance(read, DatabaseUnavailable) and not isinstance(read, OutcomeUnknown), read
        assert isinstance(write, OutcomeUnknown), write
        assert isinstance(connect, DatabaseUnavailable) and not isinstance(connect, OutcomeUnknown), connect
        assert IO_TIMEOUT - 0.1 <= read_seconds < IO_TIMEOUT + 1
        assert IO_TIMEOUT - 0.1 <= write_seconds < IO_TIMEOUT + 1
        assert CONNECT_TIMEOUT - 0.1 <= connect_seconds < CONNECT_TIMEOUT + 1

        db.ping()  # the same Database, without a restart
        queue.enqueue(NewJob(graph=GRAPH))
        # The write whose outcome was unknown sat in the frozen backend's socket and ran once it resumed (the
        # client had gone; Postgres only notices when it answers): exactly why the caller was told "unknown".
        deadline = time.monotonic() + 10
        while count_jobs(url) < before + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert count_jobs(url) == before + 2
    finally:
        db.close()


def test_a_listener_on_a_hung_server_gives_up_and_recovers(pg: PrivatePostgres) -> None:
    url = pg.url
    db = Database(url, SQL_DIR, io_timeout=IO_TIMEOUT, connect_timeout=CONNECT_TIMEOUT)
    listener = db.listener("listen_jobs")
    try:
        with pg.frozen():
            error, seconds = timed(lambda: listener.wait(10.0))
        assert isinstance(error, DatabaseUnavailable), error
        assert seconds < CONNECT_TIMEOUT + 1
        assert listener.wait(0.05) is False  # connects and LISTENs now
        JobQueue(db).enqueue(NewJob(graph=GRAPH))
        assert listener.wait(5.0) is True
    finally:
        listener.close()
        db.close()


def test_the_api_answers_503_in_time_while_the_server_hangs(pg: PrivatePostgres) -> None:
    url = pg.url
    token = "hung-token-0123456789abcdefghijklmnop"
    app = create_app(Settings(database_url=url, api_token=token, db_io_timeout_seconds=IO_TIMEOUT,
                              db_connect_timeout=CONNECT_TIMEOUT, token_cache_seconds=0))
    auth = {"Authorization": f"Bearer {token}"}
    try:
        with app.test_client() as client:
            assert client.get("/jobs?limit=1", headers=auth).status_code == 200
            with pg.frozen():
                started = time.monotonic()
                answer = client.get("/jobs?limit=1", headers=auth)
                seconds = time.monotonic() - started
            assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
            assert answer.get_json()["error"]["code"] == "database_unavailable"
            assert seconds < IO_TIMEOUT + 1
            assert client.get("/jobs?limit=1", headers=auth).status_code == 200
    finally:
        services = app.extensions.get("comfyq")
        if services is not None:
            services.db.close()
