"""GET /jobs/{id}/logs against a real database: a job's whole history in order, paged by cursor without a
duplicate or a gap, another job's cursor refused, another tenant's job a 404, and the query on its index."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from comfyq.api.pagination import encode_cursor
from comfyq.db import Database
from comfyq.jobs import JobQueue, NewJob
from tests.support.api_app import api_app, bearer
from tests.support.openapi_fuzz import GRAPH, contract

PAGE_MAX = 100


@pytest.fixture
def app(db_url: str, tmp_path: Path) -> Iterator[Flask]:
    with api_app(database_url=db_url, storage_dir=tmp_path / "out", list_page_max=PAGE_MAX) as application:
        yield application


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def acme(db: Database) -> dict[str, str]:
    return bearer(db, "acme", "submitter")


def new_job(db: Database, tenant: str = "acme") -> int:
    return int(JobQueue(db).enqueue(NewJob(graph=GRAPH, tenant=tenant, max_attempts=2))["id"])


def stored(sql: Any, job_id: int) -> list[dict[str, Any]]:
    """The job's job_logs rows as the API should write them."""
    sql.execute("SELECT id, event, from_status, to_status, attempt, worker_id, message, details, duration_ms, "
                "created_at FROM job_logs WHERE job_id = %s ORDER BY id", (job_id,))
    names = [column.name for column in sql.description]
    return [dict(zip(names, row, strict=True)) | {"created_at": row[-1].isoformat()} for row in sql.fetchall()]


def walk(client: FlaskClient, job_id: int, headers: dict[str, str], **query: Any) -> tuple[list[dict[str, Any]],
                                                                                            int]:
    """Every entry, following next_cursor from the first page; and how many pages that took."""
    entries, pages, cursor = [], 0, None
    while True:
        answer = client.get(f"/jobs/{job_id}/logs", headers=headers,
                            query_string={**query, **({"cursor": cursor} if cursor else {})})
        assert answer.status_code == 200, answer.get_data(as_text=True)
        page = answer.get_json()
        entries += page["logs"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            return entries, pages


def test_a_job_retried_until_it_succeeded_shows_every_transition_in_order(client: FlaskClient, db: Database,
                                                                           acme: dict[str, str], sql: Any) -> None:
    """A retryable failure (retried by the queue), a final failure, a retry through the API, then success."""
    queue, job_id = JobQueue(db), new_job(db)
    first = queue.claim_by_id(job_id, "gpu-1")
    assert first is not None
    queue.fail_attempt(first.lease, {"type": "timeout", "message": "took too long", "retryable": True},
                       retryable=True, delay_seconds=0)
    second = queue.claim_by_id(job_id, "gpu-2")
    assert second is not None
    queue.fail_attempt(second.lease, {"type": "execution_error", "message": "out of memory", "retryable": False},
                       retryable=False, delay_seconds=0)
    assert client.post(f"/jobs/{job_id}/retry", headers=acme).status_code == 200
    third = queue.claim_by_id(job_id, "gpu-1")
    assert third is not None
    assert queue.complete(third.lease, [])

    answer = client.get(f"/jobs/{job_id}/logs", headers=acme)
    assert answer.status_code == 200
    page = answer.get_json()
    assert page["next_cursor"] is None
    logs = page["logs"]
    assert [(e["event"], e["from_status"], e["to_status"], e["attempt"], e["worker_id"]) for e in logs] == [
        ("queued", None, "queued", 0, None),
        ("claimed", "queued", "running", 1, "gpu-1"),
        ("retry_scheduled", "running", "queued", 1, "gpu-1"),
        ("claimed", "queued", "running", 2, "gpu-2"),
        ("failed", "running", "failed", 2, "gpu-2"),
        ("requeued", "failed", "queued", 0, None),
        ("claimed", "queued", "running", 1, "gpu-1"),
        ("succeeded", "running", "succeeded", 1, "gpu-1")]
    assert logs[2]["message"] == "took too long" and logs[2]["details"]["error_type"] == "timeout"
    assert logs[4]["message"] == "out of memory" and logs[5]["message"] == "retried through the API"
    assert all(e["duration_ms"] is not None and e["duration_ms"] >= 0 for e in logs[1:])
    times = [datetime.fromisoformat(e["created_at"]) for e in logs]
    assert times == sorted(times) and all(t.tzinfo is not None for t in times)
    assert logs == stored(sql, job_id)  # every column, as stored; times written as the other routes write them


def test_pages_walk_every_entry_once_without_a_gap(client: FlaskClient, db: Database, acme: dict[str, str],
                                                   sql: Any) -> None:
    """97 entries, interleaved with another job's (so a job's ids are not consecutive), walked at several page
    sizes; entries added while paging come on later pages."""
    job_id, neighbour = new_job(db), new_job(db)
    sql.execute("INSERT INTO job_logs (job_id, event, attempt, message) SELECT j, 'outage', 0, 'n' || n "
                "FROM generate_series(1, 96) n, unnest(%s::bigint[]) j", ([job_id, neighbour],))
    every = [entry["id"] for entry in stored(sql, job_id)]
    assert len(every) == 97
    for limit, pages in ((1, 97), (5, 20), (96, 2), (97, 1), (PAGE_MAX, 1)):
        entries, walked = walk(client, job_id, acme, limit=limit)
        assert [entry["id"] for entry in entries] == every, limit
        assert walked == pages, limit
    assert len(walk(client, job_id, acme)[0]) == 97  # the default page size (50): two pages

    first = client.get(f"/jobs/{job_id}/logs", headers=acme, query_string={"limit": 10}).get_json()
    sql.execute("INSERT INTO job_logs (job_id, event, message) VALUES (%s, 'outage', 'late')", (job_id,))
    rest, _ = walk(client, job_id, acme, limit=10, cursor=first["next_cursor"])
    assert [entry["id"] for entry in first["logs"] + rest] == [entry["id"] for entry in stored(sql, job_id)]
    assert rest[-1]["message"] == "late"
    past_the_end = client.get(f"/jobs/{job_id}/logs", headers=acme,
                              query_string={"cursor": encode_cursor("log", job_id, rest[-1]["id"])})
    assert past_the_end.status_code == 200 and past_the_end.get_json() == {"logs": [], "next_cursor": None}


def test_a_cursor_of_another_job_or_route_is_refused(client: FlaskClient, db: Database, acme: dict[str, str],
                                                     sql: Any) -> None:
    job_id, other = new_job(db), new_job(db)
    sql.execute("INSERT INTO job_logs (job_id, event) SELECT %s, 'outage' FROM generate_series(1, 3)", (job_id,))
    cursor = client.get(f"/jobs/{job_id}/logs", headers=acme, query_string={"limit": 1}).get_json()["next_cursor"]
    jobs_cursor = client.get("/jobs", headers=acme, query_string={"limit": 1}).get_json()["next_cursor"]
    assert cursor and jobs_cursor
    for path, wrong in ((f"/jobs/{other}/logs", cursor), (f"/jobs/{job_id}/logs", jobs_cursor),
                        ("/jobs", cursor), (f"/jobs/{job_id}/logs", "not-a-cursor"),
                        (f"/jobs/{job_id}/logs", encode_cursor("log", job_id)),
                        (f"/jobs/{job_id}/logs", encode_cursor("log", job_id, 2**63)),
                        (f"/jobs/{job_id}/logs", encode_cursor("log", job_id, 0))):
        answer = client.get(path, headers=acme, query_string={"cursor": wrong})
        assert answer.status_code == 400, (path, wrong)
        assert answer.get_json()["error"]["code"] == "invalid_cursor", (path, wrong)
    assert client.get(f"/jobs/{job_id}/logs", headers=acme, query_string={"cursor": cursor}).status_code == 200


def test_without_a_limit_a_page_is_50_or_the_largest_page_allowed(db_url: str, db: Database, tmp_path: Path,
                                                                   acme: dict[str, str], sql: Any) -> None:
    job_id = new_job(db)
    sql.execute("INSERT INTO job_logs (job_id, event) SELECT %s, 'outage' FROM generate_series(1, 59)", (job_id,))
    for page_max, sizes in ((100, [50, 10]), (20, [20, 20, 20])):
        with api_app(database_url=db_url, storage_dir=tmp_path / "out", list_page_max=page_max) as app:
            client, cursor, seen = app.test_client(), None, []
            for _ in sizes:
                page = client.get(f"/jobs/{job_id}/logs", headers=acme,
                                  query_string={"cursor": cursor} if cursor else {}).get_json()
                seen.append(len(page["logs"]))
                cursor = page["next_cursor"]
            assert seen == sizes and cursor is None, page_max
            assert len(client.get("/jobs", headers=acme).get_json()["jobs"]) == 1  # GET /jobs: the same default


@pytest.mark.parametrize("query", [{"limit": 0}, {"limit": PAGE_MAX + 1}, {"limit": "ten"}, {"since": "2026"}])
def test_a_bad_query_is_a_400(client: FlaskClient, db: Database, acme: dict[str, str], query: dict[str, Any]) -> None:
    answer = client.get(f"/jobs/{new_job(db)}/logs", headers=acme, query_string=query)
    assert answer.status_code == 400 and answer.get_json()["error"]["code"] == "invalid_query"


def test_another_tenants_job_is_a_404_like_one_that_never_existed(client: FlaskClient, db: Database,
                                                                  acme: dict[str, str]) -> None:
    job_id, other = new_job(db, "other"), bearer(db, "other", "submitter")
    assert client.get(f"/jobs/{job_id}/logs", headers=other).status_code == 200
    answer = client.get(f"/jobs/{job_id}/logs", headers=acme)
    never = client.get(f"/jobs/{job_id + 1000}/logs", headers=acme)
    assert (answer.status_code, never.status_code) == (404, 404)
    assert answer.get_json() == {"error": {"code": "not_found", "message": f"no job {job_id}", "details": {}}}
    assert never.get_json()["error"]["message"] == f"no job {job_id + 1000}"
    with_cursor = client.get(f"/jobs/{job_id}/logs", headers=acme,
                             query_string={"cursor": encode_cursor("log", job_id, 1)})
    assert with_cursor.status_code == 404  # a well-formed cursor is no way in either
    missing = client.get(f"/jobs/{job_id}/logs")
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == 'Bearer realm="comfyq"'


def test_the_answers_keep_to_the_openapi_document(app: Flask, db: Database, acme: dict[str, str]) -> None:
    call, job_id = contract(app), new_job(db)
    queue = JobQueue(db)
    claimed = queue.claim_by_id(job_id, "gpu-1")
    assert claimed is not None
    queue.fail_attempt(claimed.lease, {"type": "timeout", "message": "slow", "retryable": True}, retryable=True,
                       delay_seconds=0)
    page = call("GET", "/jobs/{job_id}/logs", 200, acme, path_parameters={"job_id": job_id}, query={"limit": 2})
    assert page.json()["next_cursor"] is not None
    call("GET", "/jobs/{job_id}/logs", 200, acme, path_parameters={"job_id": job_id},
         query={"cursor": page.json()["next_cursor"]})
    call("GET", "/jobs/{job_id}/logs", 400, acme, path_parameters={"job_id": job_id}, query={"cursor": "x"})
    call("GET", "/jobs/{job_id}/logs", 404, acme, path_parameters={"job_id": job_id + 1})
    call("GET", "/jobs/{job_id}/logs", 401, path_parameters={"job_id": job_id})


def test_the_page_is_read_through_the_jobs_log_index(db: Database, sql: Any) -> None:
    """With 20,000 entries over 2,000 jobs, analyzed, the planner reads a page through job_logs_job_idx
    (job_id, id) starting at the cursor, not by scanning or sorting the table: the literal plan and the generic
    one that a prepared statement falls back to."""
    sql.execute("INSERT INTO job_queue (graph, tenant) SELECT '{}'::jsonb, 'acme' FROM generate_series(1, 2000)")
    sql.execute("INSERT INTO job_logs (job_id, event) SELECT id, 'outage' FROM job_queue, generate_series(1, 10)")
    sql.execute("ANALYZE job_queue")
    sql.execute("ANALYZE job_logs")
    query = db.sql("job_history_page")
    params = {"job_id": 1000, "tenant": "acme", "after_id": 5000, "limit": 51}
    sql.execute("EXPLAIN (FORMAT JSON) " + query, params)
    literal = json.dumps(sql.fetchone()[0])
    positional = query
    for number, name in enumerate(params, start=1):
        positional = positional.replace(f"%({name})s", f"${number}")
    sql.execute("SET plan_cache_mode = force_generic_plan")
    sql.execute(f"PREPARE page (bigint, text, bigint, bigint) AS {positional}")
    sql.execute("EXPLAIN (FORMAT JSON) EXECUTE page (1000, 'acme', 5000, 51)")
    generic = json.dumps(sql.fetchone()[0])
    for plan in (literal, generic):
        assert "job_logs_job_idx" in plan and '"Seq Scan"' not in plan, plan
        assert re.search(r'"Index Cond": "\(\((job_logs\.)?job_id = j\.id\) AND \((job_logs\.)?id > ', plan), plan
