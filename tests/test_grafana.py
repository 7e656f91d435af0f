"""Grafana: the provisioning files parse and point at the dashboards and datasources that exist; every dashboard
has a fixed uid; every Postgres panel's SQL, with Grafana's macros expanded, runs on a database holding a few
simulated hours of queue traffic AS THE READ-ONLY ROLE comfyq_grafana (SET ROLE on an admin connection, so the
server's rules for that role apply to every statement) and returns the columns its panel shows; the role can
read the views and nothing else."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from comfyq.db import Database, connect_once
from comfyq.jobs import JobQueue, NewJob
from comfyq.migrate import migrate
from grafana.panels import (
    DASHBOARDS_DIR,
    POSTGRES_TYPES,
    PROVISIONING_DIR,
    Target,
    TimeRange,
    UnknownMacro,
    dashboard_files,
    expand_macros,
    format_interval,
    iter_targets,
    load_dashboard,
    parse_interval,
)
from grafana.sample_data import MISSING_CHECKPOINT, populate
from tests.conftest import SQL_DIR, project_path, scratch_database

ROLE = "comfyq_grafana"
# docker-compose.yml mounts grafana/dashboards here; the dashboard provider must read the same folder.
DASHBOARDS_MOUNT = "/var/lib/grafana/dashboards"
EXPECTED_DASHBOARDS = {"comfyq-queue-overview", "comfyq-job-durations", "comfyq-failures", "comfyq-workers"}
MIGRATION = SQL_DIR / "migrations" / "0007_grafana_views.sql"
VIEWS = frozenset(re.findall(r"^CREATE VIEW (\w+)", MIGRATION.read_text(encoding="utf-8"), re.MULTILINE))
NUMERIC = (int, float, Decimal)
ALL_TARGETS = [target for path in dashboard_files() for target in iter_targets(path)]
POSTGRES_TARGETS = [target for target in ALL_TARGETS if target.is_postgres]


def _yaml(*parts: str) -> Any:
    return yaml.safe_load(PROVISIONING_DIR.joinpath(*parts).read_text(encoding="utf-8"))


def _datasources() -> dict[str, dict[str, Any]]:
    return {source["uid"]: source for source in _yaml("datasources", "comfyq.yml")["datasources"]}


def _same_type(a: str, b: str) -> bool:
    return a == b or {a, b} <= POSTGRES_TYPES  # "postgres" is the PostgreSQL plugin's alias


# Provisioning ----------------------------------------------------------------------------------------------------
def test_datasource_provisioning_parses_with_fixed_uids() -> None:
    config = _yaml("datasources", "comfyq.yml")
    assert config["apiVersion"] == 1
    sources = config["datasources"]
    uids = [source["uid"] for source in sources]
    assert len(uids) == len(set(uids)) and all(re.fullmatch(r"[a-z0-9-]{1,40}", uid) for uid in uids)
    assert sum(bool(source.get("isDefault")) for source in sources) <= 1
    by_type = {source["type"]: source for source in sources}
    postgres = next(source for source in sources if source["type"] in POSTGRES_TYPES)
    assert postgres["user"] == ROLE
    assert postgres["jsonData"]["database"] and postgres["url"]
    # The password comes from Grafana's environment, never from the repository.
    assert postgres["secureJsonData"]["password"] in ("${GRAFANA_DB_PASSWORD}", "$__env{GRAFANA_DB_PASSWORD}")
    assert "password" not in postgres and "password" not in postgres.get("jsonData", {})
    assert by_type["prometheus"]["url"].startswith("http")


def test_dashboard_provider_reads_the_repository_dashboards() -> None:
    config = _yaml("dashboards", "comfyq.yml")
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["allowUiUpdates"] is False
    assert provider["options"]["path"] == DASHBOARDS_MOUNT
    compose = project_path("docker-compose.yml").read_text(encoding="utf-8")
    assert f"./grafana/dashboards:{DASHBOARDS_MOUNT}" in compose
    assert dashboard_files(), f"no dashboards in {DASHBOARDS_DIR}"


def test_every_dashboard_has_a_fixed_unique_uid() -> None:
    uids: dict[str, Path] = {}
    titles: set[str] = set()
    for path in dashboard_files():
        dashboard = load_dashboard(path)
        uid = dashboard.get("uid")
        assert isinstance(uid, str) and re.fullmatch(r"[a-z0-9-]{1,40}", uid), f"{path.name}: uid {uid!r}"
        assert uid not in uids, f"{path.name} and {uids[uid].name} share the uid {uid}"
        uids[uid] = path
        assert dashboard.get("id") is None, f"{path.name}: instance-specific id left in the file"
        assert dashboard["title"] not in titles
        titles.add(dashboard["title"])
        assert dashboard.get("editable") is False
        panel_ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(panel_ids) == len(set(panel_ids)), f"{path.name}: duplicate panel ids"
    assert set(uids) >= EXPECTED_DASHBOARDS


@pytest.mark.parametrize("target", ALL_TARGETS, ids=lambda t: t.name)
def test_every_panel_datasource_is_provisioned(target: Target) -> None:
    sources = _datasources()
    uid = target.datasource.get("uid")
    assert uid in sources, f"datasource uid {uid!r} is not provisioned"
    assert _same_type(target.datasource["type"], sources[uid]["type"])
    panel_source = target.panel.get("datasource") or {}
    assert panel_source.get("uid") in sources
    if target.is_postgres:
        assert target.target.get("rawQuery") is True and target.target.get("rawSql", "").strip()
        assert target.target.get("format") in ("table", "time_series")
    else:
        assert target.is_prometheus and target.target.get("expr", "").strip()


@pytest.mark.parametrize("target", POSTGRES_TARGETS, ids=lambda t: t.name)
def test_panel_sql_names_only_the_views(target: Target) -> None:
    """Static twin of the role test below: every relation after FROM or JOIN is one of the views."""
    names = re.findall(r"\b(?:FROM|JOIN)\s+([A-Za-z_][A-Za-z0-9_.]*)", target.target["rawSql"], re.IGNORECASE)
    assert names and set(names) <= VIEWS, f"reads {set(names) - VIEWS}"


# The macro expander ----------------------------------------------------------------------------------------------
RANGE = TimeRange(datetime(2024, 5, 1, 10, 0, tzinfo=UTC), datetime(2024, 5, 1, 13, 30, 15, 250000, tzinfo=UTC),
                  interval_seconds=300)


def test_macros_expand_like_grafana_does() -> None:
    assert expand_macros("WHERE $__timeFilter(created_at)", RANGE) == (
        "WHERE created_at BETWEEN '2024-05-01T10:00:00Z' AND '2024-05-01T13:30:15.25Z'")
    assert expand_macros("SELECT $__timeGroupAlias(created_at, $__interval, 0), 1", RANGE) == (
        'SELECT floor(extract(epoch from created_at)/300)*300 AS "time", 1')
    assert expand_macros("SELECT $__timeGroupAlias(t, 1m)", RANGE) == (
        'SELECT floor(extract(epoch from t)/60)*60 AS "time"')
    # Grafana's pre-5.3 compatibility: a $__timeGroup directly followed by a comma gets the alias.
    assert expand_macros("SELECT $__timeGroup(t, 1h), 2", RANGE) == (
        'SELECT floor(extract(epoch from t)/3600)*3600 AS "time", 2')
    assert expand_macros("SELECT 2 GROUP BY $__timeGroup(t, 1h)", RANGE) == (
        "SELECT 2 GROUP BY floor(extract(epoch from t)/3600)*3600")
    assert expand_macros("x >= $__timeFrom() AND x < $__timeTo()", RANGE) == (
        "x >= '2024-05-01T10:00:00Z' AND x < '2024-05-01T13:30:15.25Z'")
    assert expand_macros("count(*) * 60000.0 / $__interval_ms", RANGE) == "count(*) * 60000.0 / 300000"
    assert expand_macros("SELECT $__time(t), $__timeEpoch(t)", RANGE) == (
        'SELECT t AS "time", extract(epoch from t) as "time"')
    assert [format_interval(s) for s in (60, 30, 7200, 90, 0.5)] == ["1m", "30s", "2h", "90s", "500ms"]
    assert parse_interval("'5m'") == 300


@pytest.mark.parametrize("sql", [
    "SELECT $__unknownMacro(t)",
    "SELECT 1 WHERE workflow = '$workflow'",
    "SELECT 1 WHERE tenant IN (${tenant:sqlstring})",
    "SELECT $__timeGroup(t)",
    "SELECT $__timeFilter()",
    "SELECT $__timeGroup(t, 1m, sideways)",
])
def test_unknown_macros_and_variables_are_refused(sql: str) -> None:
    with pytest.raises(UnknownMacro):
        expand_macros(sql, RANGE)


# Panel queries as the read-only role ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def traffic_db(server_url: str, template_db: str) -> Iterator[str]:
    """A migrated database holding 45 simulated minutes of traffic (4 workers, one dies, one stops)."""
    with scratch_database(server_url, template_db) as url:
        db = Database(url, SQL_DIR)
        try:
            populate(db, minutes=45)
        finally:
            db.close()
        yield url


@pytest.fixture(scope="module")
def as_grafana(traffic_db: str) -> Iterator[Any]:
    """A cursor on an admin connection switched to the read-only role: every statement is checked as
    comfyq_grafana would be after logging in (only its role settings, which apply at login, are not)."""
    conn = connect_once(traffic_db)
    cur = conn.cursor()
    cur.execute(f"SET ROLE {ROLE}")
    try:
        yield cur
    finally:
        cur.close()
        conn.close()


def _time_range(target: Target) -> TimeRange:
    now = datetime.now(UTC)
    interval = parse_interval(target.panel["interval"]) if target.panel.get("interval") else 60.0
    return TimeRange(now - timedelta(hours=6), now + timedelta(seconds=5), interval_seconds=max(interval, 60.0))


def _check_time_series(columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    assert "time" in columns, "time_series format needs a column named time"
    values = [c for c in columns if c not in ("time", "metric")]
    assert values, "no value column"
    times = []
    for row in rows:
        record = dict(zip(columns, row, strict=True))
        assert isinstance(record["time"], (*NUMERIC, datetime))
        times.append(float(record["time"]) if isinstance(record["time"], NUMERIC) else record["time"].timestamp())
        if "metric" in record:
            assert isinstance(record["metric"], str), "metric must be text"
        for column in values:
            assert record[column] is None or isinstance(record[column], NUMERIC), f"{column} is not numeric"
    assert times == sorted(times), "Grafana wants time series sorted by time"


def _check_table(panel: dict[str, Any], columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    numeric = [c for i, c in enumerate(columns) if any(isinstance(row[i], NUMERIC) for row in rows)]
    for override in panel.get("fieldConfig", {}).get("overrides", []):
        if override["matcher"]["id"] == "byName":
            assert override["matcher"]["options"] in columns, f"override for missing field {override['matcher']}"
    for sort in panel.get("options", {}).get("sortBy", []):
        assert sort["displayName"] in columns
    if panel["type"] in ("stat", "gauge", "bargauge"):
        assert numeric, f"{panel['type']} panel without a numeric field"
    if panel["type"] == "barchart":
        x_field = panel["options"]["xField"]
        assert x_field in columns and set(numeric) - {x_field}, "bar chart needs its x field and values"


@pytest.mark.parametrize("target", POSTGRES_TARGETS, ids=lambda t: t.name)
def test_panel_query_runs_as_the_read_only_role(target: Target, as_grafana: Any) -> None:
    sql = expand_macros(target.target["rawSql"], _time_range(target))
    as_grafana.execute(sql)
    rows = as_grafana.fetchall()
    columns = [d.name for d in as_grafana.description]
    assert rows, f"no rows:\n{sql}"
    if target.panel["type"] == "timeseries":
        assert target.target["format"] == "time_series"
    if target.target["format"] == "time_series":
        _check_time_series(columns, rows)
    else:
        _check_table(target.panel, columns, rows)


def _refused(cur: Any, statement: str) -> str:
    with pytest.raises(Exception) as info:
        cur.execute(statement)
    return str(getattr(info.value, "pgcode", ""))


@pytest.mark.parametrize("statement", [
    "SELECT id FROM job_queue LIMIT 1",
    "SELECT * FROM job_logs LIMIT 1",
    "SELECT * FROM workers",
    "SELECT token_hash FROM api_tokens",
    "INSERT INTO job_queue (graph) VALUES ('{}'::jsonb)",
    "UPDATE job_queue SET priority = 1000",
    "DELETE FROM job_queue",
    "DELETE FROM job_logs",
    "UPDATE workers SET status = 'stopped'",
    "TRUNCATE job_queue",
    "UPDATE stats_job_failures SET attempts = 0",  # a single-table view is updatable: only the grant stops it
    "DELETE FROM stats_job_failures",
])
def test_the_role_cannot_write_nor_read_the_tables(as_grafana: Any, statement: str) -> None:
    assert _refused(as_grafana, statement) == "42501"  # insufficient_privilege


def test_the_role_holds_select_on_the_views_only(traffic_db: str) -> None:
    conn = connect_once(traffic_db)
    try:
        with conn.cursor() as cur:
            cur.execute("""
                SELECT c.relname, c.relkind, p.privilege, has_table_privilege(%(role)s, c.oid, p.privilege)
                FROM pg_class c
                JOIN pg_namespace n ON n.oid = c.relnamespace
                CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES',
                                        'TRIGGER']) AS p(privilege)
                WHERE n.nspname = 'public' AND c.relkind IN ('r', 'v', 'm', 'p', 'f')
            """, {"role": ROLE})
            granted = {(name, privilege) for name, _kind, privilege, allowed in cur.fetchall() if allowed}
            cur.execute("""
                SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = 'public'
                  AND CASE WHEN c.relkind = 'S' THEN has_sequence_privilege(%(role)s, c.oid, 'USAGE,SELECT,UPDATE')
                           ELSE false END
            """, {"role": ROLE})
            sequences = cur.fetchall()
            cur.execute("SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
                        "FROM pg_roles WHERE rolname = %(role)s", {"role": ROLE})
            role = cur.fetchone()
            cur.execute("SELECT has_schema_privilege(%(role)s, 'public', 'USAGE')", {"role": ROLE})
            (usage,) = cur.fetchone()
    finally:
        conn.close()
    assert granted == {(view, "SELECT") for view in VIEWS}
    assert sequences == []
    assert role == (True, False, False, False, False, False), "comfyq_grafana must log in and nothing more"
    assert usage is True


def test_migrations_apply_when_the_role_exists_already(fresh_database: str) -> None:
    """Roles are server-wide: the role made by an earlier database's migration is reused, and this database
    grants it its own views."""
    admin = connect_once(fresh_database)
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_roles WHERE rolname = %(role)s", {"role": ROLE})
            assert cur.fetchone() == (1,)  # made by the template database's migration in this run
            db = Database(fresh_database, SQL_DIR)
            try:
                assert "0007_grafana_views" in migrate(db, SQL_DIR / "migrations")
            finally:
                db.close()
            cur.execute(f"SET ROLE {ROLE}")
            cur.execute("SELECT queued, running FROM stats_queue_summary")
            assert cur.fetchone() == (0, 0)
    finally:
        admin.close()


# What the views say ------------------------------------------------------------------------------------------------
def _view(sql_cursor: Any, query: str) -> list[dict[str, Any]]:
    sql_cursor.execute(query)
    columns = [d.name for d in sql_cursor.description]
    return [dict(zip(columns, row, strict=True)) for row in sql_cursor.fetchall()]


def test_views_follow_a_job_through_its_life(db: Database, queue: JobQueue, sql: Any) -> None:
    db.execute("register_worker", {"id": "w1", "host": "h", "pid": 1, "comfyui_url": "http://comfy:8188"})
    first, second, third = queue.enqueue_many([
        NewJob(graph={"1": {}}, workflow="txt2img", priority=5), NewJob(graph={"1": {}}, workflow="txt2img"),
        NewJob(graph={"1": {}})])
    job = queue.claim("w1")
    assert job is not None and job.id == first["id"]
    [summary] = _view(sql, "SELECT * FROM stats_queue_summary")
    assert (summary["queued"], summary["eligible"], summary["running"], summary["expired_leases"]) == (2, 2, 1, 0)
    [worker] = _view(sql, "SELECT * FROM stats_workers")
    assert worker["alive"] and worker["state"] == "running" and worker["current_job_id"] == first["id"]
    assert worker["current_workflow"] == "txt2img" and worker["running_jobs"] == 1

    assert queue.complete(job.lease, [])
    job = queue.claim("w1")
    assert job is not None and job.id == second["id"]
    queue.fail_attempt(job.lease, MISSING_CHECKPOINT, retryable=False, delay_seconds=0)
    job = queue.claim("w1")
    assert job is not None and job.id == third["id"]
    error = {"type": "execution_error", "message": "VAEDecode (node 8) failed", "node": "8", "retryable": False,
             "details": {"node_id": "8", "node_type": "VAEDecode", "exception_type": "ValueError"}}
    queue.fail_attempt(job.lease, error, retryable=False, delay_seconds=0)

    durations = _view(sql, "SELECT job_id, phase, outcome FROM stats_job_durations ORDER BY id")
    assert [(d["job_id"], d["phase"], d["outcome"]) for d in durations] == [
        (first["id"], "queue_wait", "claimed"), (first["id"], "execution", "succeeded"),
        (second["id"], "queue_wait", "claimed"), (second["id"], "execution", "failed"),
        (third["id"], "queue_wait", "claimed"), (third["id"], "execution", "failed")]
    failures = _view(sql, "SELECT job_id, workflow, error_type, node, node_type FROM stats_job_failures "
                          "ORDER BY job_id")
    assert [(f["workflow"], f["error_type"], f["node"], f["node_type"]) for f in failures] == [
        ("txt2img", "validation_error", None, None), ("(raw graph)", "execution_error", "8", "VAEDecode")]
    nodes = _view(sql, "SELECT job_id, node, node_type, error_type FROM stats_failing_nodes ORDER BY job_id")
    assert [(n["node"], n["node_type"], n["error_type"]) for n in nodes] == [
        ("4", "CheckpointLoaderSimple", "validation_error"), ("8", "VAEDecode", "execution_error")]
    events = _view(sql, "SELECT event, workflow FROM stats_job_events ORDER BY id")
    assert [e["event"] for e in events].count("queued") == 3
    assert {e["workflow"] for e in events} == {"txt2img", "(raw graph)"}
    [summary] = _view(sql, "SELECT * FROM stats_queue_summary")
    assert (summary["queued"], summary["running"], summary["oldest_queued_at"]) == (0, 0, None)
