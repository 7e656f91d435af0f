"""comfyq_grafana, the dashboards' role, logged in for real (its role settings apply, as for Grafana's datasource):
it reads the dashboard views and can change nothing. Its sessions start read-only, but a session may switch that
off, so every refusal here is checked in a read-write session: what stops the role is the lack of a privilege.

The database is migrated from empty, not copied from the run's template: a copy (CREATE DATABASE ... TEMPLATE)
starts with default database privileges, TEMPORARY for PUBLIC among them. Roles belong to the whole server and
other test runs use this one at the same time: nothing here alters comfyq_grafana; the migration's own behaviour
without the role is checked with a name no role has."""

from __future__ import annotations

import re
import select
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from comfyq.db import Database, connect_once
from comfyq.migrate import migrate
from tests.conftest import SQL_DIR, scratch_database

ROLE = "comfyq_grafana"
VIEWS = sorted(set(re.findall(r"^CREATE VIEW (\w+)",
                              (SQL_DIR / "migrations" / "0007_grafana_views.sql").read_text(encoding="utf-8"),
                              re.MULTILINE)))
INSUFFICIENT_PRIVILEGE = "42501"


def _migration() -> str:
    (path,) = (SQL_DIR / "migrations").glob("*_grafana_read_only.sql")
    return path.read_text(encoding="utf-8")


def _as_user(url: str, user: str) -> str:
    """The same server and database, logging in as user (no password: the test server trusts local logins)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, f"{user}@{host}", parts.path, parts.query, parts.fragment))


@pytest.fixture(scope="module")
def role_db(server_url: str) -> Iterator[str]:
    """A database of this module's own, migrated from empty as a new installation is."""
    with scratch_database(server_url) as url:
        db = Database(url, SQL_DIR)
        try:
            migrate(db, SQL_DIR / "migrations")
        finally:
            db.close()
        yield url


@pytest.fixture
def grafana(role_db: str) -> Iterator[Any]:
    """An autocommit cursor of a session logged in as comfyq_grafana, switched to read-write."""
    try:
        conn = connect_once(_as_user(role_db, ROLE))
    except Exception as exc:  # any failure to log in means the test cannot run as intended
        pytest.fail(f"cannot log in as {ROLE} without a password ({exc}); the test server must trust local "
                    "logins (pg_hba.conf), as the embedded server and CI's do", pytrace=False)
    cur = conn.cursor()
    try:
        cur.execute("SELECT current_user, session_user, current_setting('default_transaction_read_only')")
        assert cur.fetchone() == (ROLE, ROLE, "on")  # a real login: the role's own settings are in force
        cur.execute("SET default_transaction_read_only = off")  # allowed to any session; privileges must hold
        yield cur
    finally:
        cur.close()
        conn.close()


def _refusal(cur: Any, statement: str) -> str | None:
    """The SQLSTATE the statement fails with, or None when it runs."""
    try:
        cur.execute(statement)
    except psycopg2.Error as exc:
        return str(exc.pgcode)
    return None


def test_the_role_reads_every_dashboard_view(grafana: Any) -> None:
    assert VIEWS
    for view in VIEWS:
        grafana.execute(f"SELECT * FROM {view} LIMIT 1")  # names from the migration
        grafana.fetchall()


@pytest.mark.parametrize("statement", [
    "CREATE TEMP TABLE scratch (a int)",
    "CREATE TEMP VIEW scratch AS SELECT 1",
    "CREATE TEMP SEQUENCE scratch",
    "SELECT pg_notify('comfyq_jobs', '')",
    "SELECT pg_notify('comfyq_cancel', '1')",
    "SELECT pg_catalog.pg_notify('comfyq_jobs', 'x')",
    "CREATE TABLE public.scratch (a int)",
    "CREATE VIEW public.scratch AS SELECT 1",
    "CREATE FUNCTION public.scratch() RETURNS int LANGUAGE sql AS 'SELECT 1'",
    "CREATE SEQUENCE public.scratch",
    "CREATE TYPE public.scratch AS (a int)",
    "CREATE SCHEMA scratch",
    "SELECT lo_create(0)",
    "SELECT lo_creat(-1)",
    "SELECT lo_from_bytea(0, 'x')",
    # the migrations' lock: held by a dashboard session, it would stop every `comfyq migrate`
    "SELECT pg_advisory_lock(hashtext('comfyq.migrations'))",
    "SELECT pg_try_advisory_lock(1)",
    "SELECT pg_advisory_xact_lock_shared(1, 2)",
    "UPDATE stats_job_failures SET attempts = 0",
])
def test_the_role_can_create_notify_and_lock_nothing(grafana: Any, statement: str) -> None:
    assert _refusal(grafana, statement) == INSUFFICIENT_PRIVILEGE


def test_the_role_can_write_no_table_and_no_sequence(role_db: str, grafana: Any) -> None:
    admin = connect_once(role_db)
    try:
        with admin.cursor() as cur:
            cur.execute("""
                SELECT c.relname, c.relkind, (SELECT a.attname FROM pg_attribute a  -- a column UPDATE may set
                                              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                                                AND a.attidentity = '' AND a.attgenerated = ''
                                              ORDER BY a.attnum LIMIT 1)
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'S') ORDER BY 1""")
            relations = cur.fetchall()
    finally:
        admin.close()
    statements = []
    for name, kind, column in relations:
        if kind == "S":
            statements += [f"SELECT nextval('{name}')", f"SELECT setval('{name}', 1)"]
        else:
            statements += [f"INSERT INTO {name} DEFAULT VALUES", f"UPDATE {name} SET {column} = {column}",
                           f"DELETE FROM {name}", f"TRUNCATE {name}"]
    assert any(name == "job_queue" for name, _, _ in relations) and len(statements) > 20
    allowed = {s: code for s in statements if (code := _refusal(grafana, s)) != INSUFFICIENT_PRIVILEGE}
    assert not allowed, allowed


def test_the_catalog_shows_only_connect_usage_and_the_views(role_db: str) -> None:
    admin = connect_once(role_db)
    try:
        with admin.cursor() as cur:
            cur.execute("""
                SELECT has_database_privilege(%(role)s, current_database(), 'CONNECT'),
                       has_database_privilege(%(role)s, current_database(), 'TEMPORARY'),
                       has_database_privilege(%(role)s, current_database(), 'CREATE'),
                       has_schema_privilege(%(role)s, 'public', 'USAGE'),
                       has_schema_privilege(%(role)s, 'public', 'CREATE'),
                       has_function_privilege(%(role)s, 'pg_notify(text, text)', 'EXECUTE'),
                       has_function_privilege(%(role)s, 'pg_advisory_lock(bigint)', 'EXECUTE'),
                       has_function_privilege(%(role)s, 'lo_create(oid)', 'EXECUTE')""", {"role": ROLE})
            assert cur.fetchone() == (True, False, False, True, False, False, False, False)
            # The trigger functions notify with their owner's rights: any role that writes jobs keeps waking
            # workers without EXECUTE on pg_notify of its own.
            cur.execute("SELECT proname, prosecdef, proconfig FROM pg_proc "
                        "WHERE proname IN ('comfyq_notify_jobs', 'comfyq_notify_cancel') ORDER BY 1")
            assert cur.fetchall() == [("comfyq_notify_cancel", True, ["search_path=pg_catalog, pg_temp"]),
                                      ("comfyq_notify_jobs", True, ["search_path=pg_catalog, pg_temp"])]
    finally:
        admin.close()


def test_a_role_of_its_own_that_writes_jobs_still_wakes_the_workers(role_db: str) -> None:
    """An API that logs in as a role with table rights only (no superuser, no EXECUTE on pg_notify): its
    INSERT still fires the NOTIFY that idle workers sleep on."""
    app_role = f"comfyq_t_app_{uuid.uuid4().hex[:10]}"
    admin, listener = connect_once(role_db), connect_once(role_db)
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE ROLE {app_role} NOLOGIN")
            try:
                cur.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {app_role}")
                cur.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {app_role}")
                cur.execute("SELECT has_function_privilege(%s, 'pg_notify(text, text)', 'EXECUTE')", (app_role,))
                assert cur.fetchone() == (False,)
                with listener.cursor() as listening:
                    listening.execute("LISTEN comfyq_jobs")
                cur.execute(f"SET ROLE {app_role}")
                cur.execute("INSERT INTO job_queue (graph) VALUES ('{}'::jsonb) RETURNING id")
                cur.execute("RESET ROLE")
                select.select([listener], [], [], 10)
                listener.poll()
                assert [n.channel for n in listener.notifies] == ["comfyq_jobs"]
            finally:
                cur.execute("RESET ROLE")
                cur.execute(f"DROP OWNED BY {app_role}")
                cur.execute(f"DROP ROLE {app_role}")
    finally:
        listener.close()
        admin.close()


def test_the_migration_runs_again_and_without_the_role(role_db: str) -> None:
    """Idempotent (run again on a migrated database), and harmless where the role is missing (a name no role
    has stands in for it): PUBLIC's grants go either way."""
    sql = _migration()
    absent = f"comfyq_t_absent_{uuid.uuid4().hex[:10]}"
    assert sql.count(f"'{ROLE}'") >= 1
    admin = connect_once(role_db)
    try:
        with admin.cursor() as cur:
            cur.execute(sql)
            cur.execute(sql.replace(ROLE, absent))
            cur.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (absent,))
            assert cur.fetchone() == (0,)
            cur.execute("SELECT has_database_privilege('public', current_database(), 'TEMPORARY'), "
                        "has_function_privilege('public', 'pg_notify(text, text)', 'EXECUTE'), "
                        "has_database_privilege(%s, current_database(), 'TEMPORARY')", (ROLE,))
            assert cur.fetchone() == (False, False, False)
    finally:
        admin.close()
