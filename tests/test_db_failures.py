"""What a lost connection means to the caller, with a real Postgres: the test holds a lock so a statement of the
Database blocks on the server, then ends that backend with pg_terminate_backend(). A write that was sent in
autocommit, or a COMMIT, raises OutcomeUnknown (it may have committed); a read, a statement inside an open
transaction (the server rolls it back), a PREPARE, or a connection that cannot be had raise plain
DatabaseUnavailable. Also: green mode (the wait callback) keeps LISTEN/NOTIFY working, and a connect to a server
that accepts but never answers gives up after the connect timeout."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from comfyq.db import Database, connect_once
from comfyq.errors import DatabaseUnavailable, OutcomeUnknown
from comfyq.jobs import JobQueue, NewJob
from comfyq.queries import load_queries, may_write
from tests.conftest import SQL_DIR
from tests.db_locks import Blocked, blocked_backend, lock, terminate
from tests.support.db_conns import count_jobs

GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {}}}


@pytest.fixture
def one_conn_db(db_url: str) -> Iterator[Database]:
    """One pooled connection, so a statement prepared by a first call is the one a second call executes."""
    database = Database(db_url, SQL_DIR, max_size=1)
    try:
        yield database
    finally:
        database.close()


def test_the_read_write_split_of_the_named_queries() -> None:
    queries = load_queries(SQL_DIR)
    for name in ("ping", "get_job", "submission_get", "token_lookup", "list_jobs", "migrations_lock"):
        assert not may_write(queries[name]), name
    for name in ("enqueue_jobs", "claim_jobs", "complete_jobs", "token_touch", "alert_transitions",
                 "retention_candidates", "submission_claim", "listen_jobs"):
        assert may_write(queries[name]), name
    assert may_write("-- a comment that says SELECT\nDELETE FROM t")
    assert may_write("SELECT comfyq_alert_transitions()")
    assert not may_write("-- UPDATE in a comment only\nSELECT 1")


def test_a_write_lost_after_it_was_sent_is_outcome_unknown(one_conn_db: Database, admin: Any, locker: Any) -> None:
    queue = JobQueue(one_conn_db)
    queue.enqueue(NewJob(graph=GRAPH))  # prepares enqueue_jobs on the one connection
    lock(locker, "SHARE")  # INSERT waits for it
    blocked = Blocked(lambda: queue.enqueue(NewJob(graph=GRAPH)))
    terminate(admin, blocked_backend(admin, "EXECUTE comfyq_enqueue_jobs"))
    assert isinstance(blocked.result(), OutcomeUnknown)
    locker.rollback()
    assert count_jobs(admin) == 1  # this time it did not commit; the caller could not know
    queue.enqueue(NewJob(graph=GRAPH))  # the broken connection was discarded, a new one serves
    assert count_jobs(admin) == 2


def test_a_lost_prepare_sent_nothing_of_the_write(one_conn_db: Database, admin: Any, locker: Any) -> None:
    """PREPARE of an INSERT locks the table too; the write itself was never sent, so nothing can have committed."""
    lock(locker, "SHARE")
    blocked = Blocked(lambda: JobQueue(one_conn_db).enqueue(NewJob(graph=GRAPH)))
    terminate(admin, blocked_backend(admin, "PREPARE comfyq_enqueue_jobs"))
    error = blocked.result()
    assert isinstance(error, DatabaseUnavailable) and not isinstance(error, OutcomeUnknown)
    locker.rollback()
    JobQueue(one_conn_db).enqueue(NewJob(graph=GRAPH))
    with one_conn_db.session() as session:
        assert "enqueue_jobs" in session.conn.prepared  # type: ignore[attr-defined]  # not marked unpreparable


def test_a_lost_read_is_database_unavailable(one_conn_db: Database, admin: Any, locker: Any) -> None:
    queue = JobQueue(one_conn_db)
    job = queue.enqueue(NewJob(graph=GRAPH))
    queue.get(job["id"], "default")
    lock(locker, "ACCESS EXCLUSIVE")  # even a SELECT waits for it
    blocked = Blocked(lambda: queue.get(job["id"], "default"))
    terminate(admin, blocked_backend(admin, "EXECUTE comfyq_get_job"))
    error = blocked.result()
    assert isinstance(error, DatabaseUnavailable) and not isinstance(error, OutcomeUnknown)


def test_a_statement_lost_inside_a_transaction_rolled_back(one_conn_db: Database, admin: Any, locker: Any) -> None:
    """submit() with a key is one transaction: a statement lost before its COMMIT commits nothing."""
    queue = JobQueue(one_conn_db)
    lock(locker, "SHARE")
    blocked = Blocked(lambda: queue.submit([NewJob(graph=GRAPH)], "default", idempotency_key="k1", request_hash="h"))
    terminate(admin, blocked_backend(admin, "WITH input AS"))  # enqueue_jobs, as text inside the transaction
    error = blocked.result()
    assert isinstance(error, DatabaseUnavailable) and not isinstance(error, OutcomeUnknown)
    locker.rollback()
    with admin.cursor() as cur:
        cur.execute("SELECT count(*) FROM submissions")
        assert cur.fetchone() == (0,)
    assert count_jobs(admin) == 0
    assert not queue.submit([NewJob(graph=GRAPH)], "default", idempotency_key="k1", request_hash="h").replayed


@pytest.fixture
def commit_sql(tmp_path: Path) -> Path:
    (tmp_path / "queries").mkdir()
    (tmp_path / "queries" / "t.sql").write_text(
        "-- name: add_row\nINSERT INTO commit_t (id) VALUES (%(id)s);\n"
        "-- name: read_rows\nSELECT id FROM commit_t;\n", encoding="utf-8")
    return tmp_path


def test_a_commit_lost_is_outcome_unknown(db_url: str, commit_sql: Path, admin: Any) -> None:
    """A deferred constraint trigger runs at COMMIT and waits for an advisory lock the test holds."""
    with admin.cursor() as cur:
        cur.execute("CREATE TABLE commit_t (id int PRIMARY KEY)")
        cur.execute("CREATE FUNCTION commit_t_wait() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN PERFORM pg_advisory_xact_lock(4711); RETURN NULL; END $$")
        cur.execute("CREATE CONSTRAINT TRIGGER commit_t_wait AFTER INSERT ON commit_t DEFERRABLE INITIALLY DEFERRED "
                    "FOR EACH ROW EXECUTE FUNCTION commit_t_wait()")
        cur.execute("SELECT pg_advisory_lock(4711)")
    database = Database(db_url, commit_sql, max_size=1)
    try:
        def write_in_transaction() -> None:
            with database.session() as session, session.transaction():
                session.execute("add_row", {"id": 1})

        def read_in_transaction() -> None:
            with database.session() as session, session.transaction():
                session.fetch_all("read_rows")

        blocked = Blocked(write_in_transaction)
        terminate(admin, blocked_backend(admin, "COMMIT"))
        assert isinstance(blocked.result(), OutcomeUnknown)
        with admin.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(4711)")
        assert database.fetch_all("read_rows") == []  # it did not commit this time
        read_in_transaction()  # a transaction that wrote nothing commits as before
    finally:
        database.close()


def test_a_connection_refused_is_database_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    database = Database(f"postgresql://nobody@127.0.0.1:{port}/none", SQL_DIR, connect_timeout=2)
    try:
        with pytest.raises(DatabaseUnavailable) as info:
            JobQueue(database).enqueue(NewJob(graph=GRAPH))
        assert not isinstance(info.value, OutcomeUnknown)
    finally:
        database.close()


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A TCP port whose kernel completes every handshake (the backlog) while nobody ever reads or answers: a
    hung server as a client sees it. Yields the port; closed on the way out."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield server.getsockname()[1]


@pytest.mark.parametrize("io_timeout", [1.0, None])
def test_connecting_to_a_silent_server_times_out(io_timeout: float | None) -> None:
    """libpq's connect_timeout does not apply to the non-blocking connect of green mode; the wait callback
    enforces it instead, also for a Database that waits for ever on statements."""
    with silent_server() as port:
        url = f"postgresql://nobody@127.0.0.1:{port}/none?sslmode=disable"
        database = Database(url, SQL_DIR, connect_timeout=1, io_timeout=io_timeout)
        try:
            started = time.monotonic()
            with pytest.raises(DatabaseUnavailable):
                database.ping()
            assert time.monotonic() - started < 2.0
        finally:
            database.close()
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable):
            connect_once(url, connect_timeout=1)
        assert time.monotonic() - started < 2.0
        listener = Database(url, SQL_DIR, connect_timeout=1).listener("listen_jobs")
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable):
            listener.wait(5.0)
        assert time.monotonic() - started < 2.0


def test_listen_notify_works_in_green_mode(db: Database) -> None:
    listener = db.listener("listen_jobs")
    try:
        assert listener.wait(0.05) is False  # connects and LISTENs
        JobQueue(db).enqueue(NewJob(graph=GRAPH))  # the insert trigger notifies comfyq_jobs
        started = time.monotonic()
        assert listener.wait(5.0) is True
        assert time.monotonic() - started < 2.0
    finally:
        listener.close()
