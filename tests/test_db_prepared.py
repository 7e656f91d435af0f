"""Prepared named queries: every query of the project prepares against the migrated schema, runs prepared,
survives the server forgetting it and a migration changing its row type, and stays off when asked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfyq.db import Database, connect_once
from comfyq.errors import DatabaseError
from comfyq.queries import load_positional, load_queries, positional
from tests.conftest import SQL_DIR


def _prepared_here(db: Database) -> set[str]:
    with db.session() as session:
        rows = session.conn.cursor()
        rows.execute("SELECT name FROM pg_prepared_statements")
        return {name for (name,) in rows.fetchall()}


def test_positional_form_numbers_each_name_once_and_drops_comments() -> None:
    form = positional("-- uses %(ghost)s in a comment\nSELECT %(a)s::int + %(b)s::int + %(a)s::int, 'x' LIKE 'y%%';")
    assert form is not None
    assert form.params == ("a", "b")
    assert form.sql == "SELECT $1::int + $2::int + $1::int, 'x' LIKE 'y%'"
    assert positional("LISTEN comfyq_jobs;") is None
    assert positional("CREATE TABLE t (id int);") is None


def test_every_named_query_prepares_against_the_schema(db_url: str) -> None:
    """A query Postgres cannot type (a bare parameter with no context) would silently run as text; this names it."""
    conn = connect_once(db_url)
    failures = []
    try:
        for name, form in load_positional(SQL_DIR).items():
            with conn.cursor() as cur:
                try:
                    cur.execute(f"PREPARE check_{name} AS {form.sql}")
                except Exception as exc:
                    failures.append(f"{name}: {str(exc).strip().splitlines()[0]}")
    finally:
        conn.close()
    assert not failures
    unprepared = set(load_queries(SQL_DIR)) - set(load_positional(SQL_DIR))
    assert unprepared == {"listen_jobs", "listen_cancels", "events_listen", "migrations_create_table"}


def test_queries_run_prepared_and_give_the_same_rows(db_url: str) -> None:
    database = Database(db_url, SQL_DIR, max_size=1)  # one connection: the statements live on it
    try:
        database.execute("ping")
        database.fetch_all("enqueue_jobs", {"jobs": json.dumps([{"workflow": "w", "graph": {"1": {}}, "priority": 5}])})
        rows = database.fetch_all("enqueue_jobs", {"jobs": json.dumps([{"workflow": "w", "graph": {"1": {}}}] * 3)})
        assert [row["priority"] for row in rows] == [0, 0, 0]
        assert [row["id"] for row in rows] == [2, 3, 4]
        assert {"comfyq_ping", "comfyq_enqueue_jobs"} <= _prepared_here(database)
    finally:
        database.close()


def test_server_forgetting_the_statements_is_cured_by_preparing_again(db: Database) -> None:
    with db.session() as session:
        assert session.execute("ping") == 1
        with session.conn.cursor() as cur:
            cur.execute("DEALLOCATE ALL")
        assert session.execute("ping") == 1
        assert "ping" in session.conn.prepared  # type: ignore[attr-defined]


@pytest.fixture
def own_sql(tmp_path: Path) -> Path:
    (tmp_path / "queries").mkdir()
    (tmp_path / "queries" / "t.sql").write_text(
        "-- name: all_rows\nSELECT * FROM prep_t ORDER BY id;\n"
        "-- name: add_row\nINSERT INTO prep_t (id) VALUES (%(id)s);\n", encoding="utf-8")
    return tmp_path


@pytest.fixture
def own_db(db_url: str, own_sql: Path) -> Iterator[Database]:
    conn = connect_once(db_url)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE prep_t (id int PRIMARY KEY)")
    conn.close()
    database = Database(db_url, own_sql, max_size=1)
    try:
        yield database
    finally:
        database.close()


def test_a_migration_changing_the_row_type_does_not_break_a_prepared_select(own_db: Database, db_url: str) -> None:
    own_db.execute("add_row", {"id": 1})
    assert own_db.fetch_all("all_rows") == [{"id": 1}]
    conn = connect_once(db_url)
    with conn.cursor() as cur:
        cur.execute("ALTER TABLE prep_t ADD COLUMN note text DEFAULT 'n'")
    conn.close()
    assert own_db.fetch_all("all_rows") == [{"id": 1, "note": "n"}]


def test_inside_a_transaction_an_unprepared_query_runs_as_text(own_db: Database) -> None:
    with own_db.session() as session, session.transaction():
        session.execute("add_row", {"id": 7})
        assert "add_row" not in session.conn.prepared  # type: ignore[attr-defined]
    assert own_db.fetch_all("all_rows") == [{"id": 7}]


def test_a_query_that_cannot_prepare_runs_as_text_and_reports_its_own_error(db_url: str, own_sql: Path) -> None:
    database = Database(db_url, own_sql, max_size=1)  # prep_t does not exist in this database
    try:
        with pytest.raises(DatabaseError, match="prep_t"):
            database.fetch_all("all_rows")
        with database.session() as session:
            assert "all_rows" in session.conn.unpreparable  # type: ignore[attr-defined]
    finally:
        database.close()


def test_prepare_off_sends_text(db_url: str) -> None:
    database = Database(db_url, SQL_DIR, max_size=1, prepare=False)
    try:
        database.execute("ping")
        assert "comfyq_ping" not in _prepared_here(database)
    finally:
        database.close()
