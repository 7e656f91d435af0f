"""Migrations applied to an empty database produce the schema the code relies on; the runner records,
refuses edited files and is safe when run twice at once."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from comfyq.db import Database, connect_once
from comfyq.errors import MigrationError
from comfyq.migrate import discover, migrate
from comfyq.storage import storage_namespace
from tests.conftest import SQL_DIR


def _scalar_rows(url: str, sql: str) -> list[tuple]:
    conn = connect_once(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return list(cur.fetchall())
    finally:
        conn.close()


def test_all_migrations_apply_to_an_empty_database(fresh_database: str) -> None:
    db = Database(fresh_database, SQL_DIR)
    applied = migrate(db, SQL_DIR / "migrations")
    assert applied == [m.version for m in discover(SQL_DIR / "migrations")]
    assert migrate(db, SQL_DIR / "migrations") == []  # idempotent
    db.close()

    tables = {r[0] for r in _scalar_rows(fresh_database,
              "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"job_queue", "job_logs", "workers", "schema_migrations"} <= tables
    worker_columns = {r[0] for r in _scalar_rows(fresh_database,
                      "SELECT column_name FROM information_schema.columns WHERE table_name = 'workers'")}
    assert {"id", "host", "started_at", "heartbeat_at", "current_job_id", "comfyui_url"} <= worker_columns
    indexes = dict(_scalar_rows(fresh_database,
                   "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'job_queue'"))
    assert "WHERE (status = 'queued'::text)" in indexes["job_queue_claim_idx"]
    checks = {r[0] for r in _scalar_rows(fresh_database,
              "SELECT conname FROM pg_constraint WHERE contype = 'c' AND conrelid = 'job_queue'::regclass")}
    assert {"job_queue_status_check", "job_queue_priority_range", "job_queue_attempts_range",
            "job_queue_progress_range", "job_queue_running_has_lease"} <= checks
    triggers = {r[0] for r in _scalar_rows(fresh_database,
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'job_queue'::regclass AND NOT tgisinternal")}
    assert {"job_queue_notify_insert", "job_queue_notify_requeue"} <= triggers


@pytest.mark.parametrize("column, value", [
    ("status", "'exploded'"), ("priority", "5000"), ("progress", "1.5"), ("max_attempts", "0"),
])
def test_constraints_refuse_out_of_range_rows(db_url: str, column: str, value: str) -> None:
    conn = connect_once(db_url)
    try:
        with conn.cursor() as cur, pytest.raises(Exception) as info:
            cur.execute(f"INSERT INTO job_queue (graph, {column}) VALUES ('{{}}'::jsonb, {value})")
        assert "violates check constraint" in str(info.value)
    finally:
        conn.close()


def test_an_edited_migration_is_refused(fresh_database: str, tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    shutil.copytree(SQL_DIR / "migrations", migrations)
    db = Database(fresh_database, SQL_DIR)
    migrate(db, migrations)
    first = sorted(migrations.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="edited after it was applied"):
        migrate(db, migrations)
    db.close()


def test_a_failing_migration_leaves_nothing_behind(fresh_database: str, tmp_path: Path) -> None:
    migrations = tmp_path / "migrations"
    shutil.copytree(SQL_DIR / "migrations", migrations)
    (migrations / "9999_broken.sql").write_text("CREATE TABLE half_done (id int);\nSELECT no_such_function();\n")
    db = Database(fresh_database, SQL_DIR)
    with pytest.raises(MigrationError, match=r"9999_broken\.sql failed"):
        migrate(db, migrations)
    db.close()
    assert _scalar_rows(fresh_database, "SELECT to_regclass('half_done')") == [(None,)]
    versions = [r[0] for r in _scalar_rows(fresh_database, "SELECT version FROM schema_migrations")]
    assert "9999_broken" not in versions and versions


def test_two_runners_at_once_apply_each_migration_once(fresh_database: str) -> None:
    env_cmd = [sys.executable, "-m", "comfyq.cli", "migrate"]
    env = {"DATABASE_URL": fresh_database, "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen(env_cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        results = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], results
    rows = _scalar_rows(fresh_database, "SELECT version, count(*) FROM schema_migrations GROUP BY version")
    assert rows and all(count == 1 for _, count in rows)


def test_badly_named_migration_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "1_x.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_description"):
        discover(tmp_path)


def test_each_installation_gets_one_storage_id_of_its_own(fresh_database: str, db_url: str) -> None:
    """Migration 0010 creates the id once: running the migrations again keeps it, a second row is refused,
    and another database migrated on its own gets another id (the first segment of its storage keys)."""
    db = Database(fresh_database, SQL_DIR)
    try:
        migrate(db, SQL_DIR / "migrations")
        first = storage_namespace(db)
        assert migrate(db, SQL_DIR / "migrations") == [] and storage_namespace(db) == first
    finally:
        db.close()
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    other = Database(db_url, SQL_DIR)
    try:
        assert storage_namespace(other) != first
    finally:
        other.close()
    conn = connect_once(fresh_database)
    try:
        with conn.cursor() as cur, pytest.raises(Exception, match=r"installation_pkey|installation_one_row"):
            cur.execute("INSERT INTO installation DEFAULT VALUES")
        with conn.cursor() as cur, pytest.raises(Exception, match="installation_id_format"):
            cur.execute("UPDATE installation SET id = 'a/b'")
    finally:
        conn.close()
