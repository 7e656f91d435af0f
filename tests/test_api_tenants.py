"""The API's full contract against a real database: tokens and tenants, batches, idempotency, dedupe, listing,
cancel and retry, stats, retention, rate limits and quotas, and the operator CLI for tokens."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from comfyq import tokens
from comfyq.api.app import create_app
from comfyq.db import Database
from comfyq.jobs import JobQueue, NewJob
from comfyq.settings import Settings
from comfyq.stack import start_api
from tests.e2e_support import Stack
from tests.support.api_app import api_app, bearer

JOB = {"workflow": "txt2img", "params": {"prompt": "a fox"}}
GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}


@pytest.fixture
def app(db_url: str, tmp_path: Path) -> Iterator[Flask]:
    with api_app(database_url=db_url, storage_dir=tmp_path / "out") as application:
        yield application


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def token(db: Database) -> Callable[..., dict[str, str]]:
    """Creates a token and returns the Authorization header for it."""
    def make(tenant: str = "acme", role: str = "submitter") -> dict[str, str]:
        return bearer(db, tenant, role)
    return make


def count(sql: Any, where: str = "true") -> int:
    sql.execute(f"SELECT count(*) FROM job_queue WHERE {where}")
    return int(sql.fetchone()[0])


# Auth -------------------------------------------------------------------------------------------------------
def test_tokens_are_stored_only_as_hashes(db: Database, sql: Any) -> None:
    created = tokens.create(db, "acme", "submitter")
    sql.execute("SELECT token_hash, token_prefix FROM api_tokens")
    [(stored_hash, prefix)] = sql.fetchall()
    assert created.token not in (stored_hash, prefix) and stored_hash == tokens.hash_token(created.token)
    assert created.token.startswith(prefix)


def test_missing_wrong_and_revoked_tokens_get_401(client: FlaskClient, db: Database, sql: Any) -> None:
    created = tokens.create(db, "acme", "submitter")
    good = {"Authorization": f"Bearer {created.token}"}
    assert client.post("/jobs", json=JOB, headers=good).status_code == 202
    for headers in ({}, {"Authorization": "Bearer cq_not-a-real-token"}, {"Authorization": created.token}):
        response = client.post("/jobs", json=JOB, headers=headers)
        assert response.status_code == 401 and response.get_json()["error"]["code"] == "unauthorized"
    assert tokens.revoke(db, created.row["token_prefix"]) is not None
    assert client.post("/jobs", json=JOB, headers=good).status_code == 401
    assert count(sql) == 1


def test_a_tenant_never_sees_or_changes_another_tenants_jobs(client: FlaskClient,
                                                              token: Callable[..., dict[str, str]]) -> None:
    acme, other = token("acme"), token("other")
    job_id = client.post("/jobs", json=JOB, headers=acme).get_json()["id"]
    assert client.get(f"/jobs/{job_id}", headers=other).status_code == 404
    assert client.post(f"/jobs/{job_id}/cancel", headers=other).status_code == 404
    assert client.post(f"/jobs/{job_id}/retry", headers=other).status_code == 404
    assert client.get("/jobs", headers=other).get_json()["jobs"] == []
    assert client.get(f"/jobs/{job_id}", headers=acme).status_code == 200


def test_wrong_role_gets_403(client: FlaskClient, token: Callable[..., dict[str, str]]) -> None:
    response = client.post("/admin/retention", json={"older_than_days": 30}, headers=token("acme", "submitter"))
    assert response.status_code == 403 and response.get_json()["error"]["code"] == "forbidden"
    assert client.post("/admin/retention", json={"older_than_days": 30}, headers=token("acme", "admin")).status_code \
        == 200


def test_raw_graphs_only_for_tenants_allowed_to_send_them(client: FlaskClient, db: Database,
                                                          token: Callable[..., dict[str, str]]) -> None:
    refused = client.post("/jobs", json={"graph": GRAPH}, headers=token("acme"))
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "raw_graphs_not_allowed"
    db.fetch_one("tenant_upsert", {"name": "labs", "allow_raw_graphs": True, "max_queued_jobs": None,
                                   "rate_per_second": None, "rate_burst": None})
    assert client.post("/jobs", json={"graph": GRAPH}, headers=token("labs")).status_code == 202


# Batches ----------------------------------------------------------------------------------------------------
def test_a_batch_of_10000_is_fully_queued(client: FlaskClient, token: Callable[..., dict[str, str]], sql: Any) -> None:
    jobs = [{"workflow": "txt2img", "params": {"prompt": f"prompt {i}", "seed": i}, "priority": i % 7}
            for i in range(10_000)]
    response = client.post("/jobs/batch", json={"jobs": jobs}, headers=token())
    assert response.status_code == 202, response.get_data(as_text=True)[:500]
    body = response.get_json()
    assert body["count"] == 10_000 and len({j["id"] for j in body["jobs"]}) == 10_000
    assert count(sql, "status = 'queued' AND tenant = 'acme'") == 10_000
    sql.execute("SELECT count(*) FROM job_logs WHERE event = 'queued'")
    assert sql.fetchone()[0] == 10_000


def test_a_batch_with_one_bad_item_writes_nothing_and_names_it(client: FlaskClient,
                                                                token: Callable[..., dict[str, str]], sql: Any) -> None:
    jobs = [dict(JOB) for _ in range(50)]
    jobs[37] = {"workflow": "txt2img", "params": {"prompt": "x", "steps": 0}}
    response = client.post("/jobs/batch", json={"jobs": jobs}, headers=token())
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "invalid_batch_items"
    assert error["details"]["items"] == [{"index": 37, "code": "invalid_params", "message": "some params are invalid",
                                          "details": {"steps": "0 is smaller than the minimum 1"}}]
    assert count(sql) == 0


def test_the_garbage_collector_runs_again_after_every_batch(client: FlaskClient,
                                                            token: Callable[..., dict[str, str]]) -> None:
    """A batch pauses the cyclic collector while it builds its jobs; every way out of the request resumes it."""
    assert gc.isenabled()
    assert client.post("/jobs/batch", json={"jobs": [JOB, JOB]}, headers=token()).status_code == 202
    assert gc.isenabled()
    bad = [JOB, {"workflow": "txt2img", "params": {"prompt": "x", "steps": 0}}]
    assert client.post("/jobs/batch", json={"jobs": bad}, headers=token()).status_code == 422
    assert gc.isenabled()
    broken = client.post("/jobs/batch", data="{", headers={**token(), "Content-Type": "application/json"})
    assert broken.status_code == 400
    assert gc.isenabled()
    gc.disable()  # a host that runs with the collector off keeps it off
    try:
        assert client.post("/jobs/batch", json={"jobs": [JOB]}, headers=token()).status_code == 202
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_batch_over_the_limit_is_refused(db_url: str, token: Callable[..., dict[str, str]], sql: Any) -> None:
    small = create_app(Settings(database_url=db_url, token_cache_seconds=0, max_batch_jobs=5)).test_client()
    response = small.post("/jobs/batch", json={"jobs": [JOB] * 6}, headers=token())
    assert response.status_code == 413 and response.get_json()["error"]["code"] == "batch_too_large"
    assert count(sql) == 0


# Idempotency and dedupe -------------------------------------------------------------------------------------
def test_idempotency_key_returns_the_original_or_409(client: FlaskClient,
                                                      token: Callable[..., dict[str, str]], sql: Any) -> None:
    headers = {**token(), "Idempotency-Key": "order-17"}
    first = client.post("/jobs", json=JOB, headers=headers)
    again = client.post("/jobs", json=JOB, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.get_json()["id"] == again.get_json()["id"]
    changed = client.post("/jobs", json={**JOB, "priority": 3}, headers=headers)
    assert changed.status_code == 409 and changed.get_json()["error"]["code"] == "idempotency_key_reused"
    batch = client.post("/jobs/batch", json={"jobs": [JOB, JOB]}, headers={**headers, "Idempotency-Key": "b-1"})
    batch_again = client.post("/jobs/batch", json={"jobs": [JOB, JOB]}, headers={**headers, "Idempotency-Key": "b-1"})
    assert (batch.status_code, batch_again.status_code) == (202, 200)
    assert batch.get_json()["jobs"] == batch_again.get_json()["jobs"]
    assert count(sql) == 3


@pytest.mark.slow
def test_concurrent_requests_with_one_key_create_one_job(stack: Stack, db: Database, sql: Any) -> None:
    token = tokens.create(db, "acme", "submitter").token
    proc, api = start_api(stack.log_dir, {"DATABASE_URL": stack.db_url}, workers=4)
    stack.processes.append(proc)
    answers: list[tuple[int, int]] = []
    barrier = threading.Barrier(12)

    def post() -> None:
        barrier.wait()
        response = requests.post(f"{api}/jobs", json=JOB, timeout=30, headers={
            "Authorization": f"Bearer {token}", "Idempotency-Key": "same-key"})
        answers.append((response.status_code, response.json()["id"]))

    threads = [threading.Thread(target=post) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == 12 and len({job_id for _, job_id in answers}) == 1
    assert sorted(code for code, _ in answers) == [200] * 11 + [202]
    assert count(sql) == 1


def test_dedupe_returns_a_succeeded_twin_without_a_new_job(client: FlaskClient, db: Database,
                                                           token: Callable[..., dict[str, str]], sql: Any) -> None:
    headers = token()
    request_body = {"workflow": "txt2img", "params": {"prompt": "same", "seed": 5}, "dedupe": True}
    first = client.post("/jobs", json=request_body, headers=headers)
    assert first.status_code == 202
    queue = JobQueue(db)
    claimed = queue.claim("w")
    assert claimed is not None
    queue.complete(claimed.lease, [{"key": f"{claimed.id}/1/a.png", "size": 3, "content_type": "image/png"}])
    twin = client.post("/jobs", json=request_body, headers=headers)
    assert twin.status_code == 200
    body = twin.get_json()
    assert body["deduplicated"] is True and body["id"] == first.get_json()["id"] and body["outputs"][0]["key"]
    other_seed = client.post("/jobs", json={**request_body, "params": {"prompt": "same", "seed": 6}}, headers=headers)
    assert other_seed.status_code == 202
    assert count(sql) == 2


# Reading, listing, cancel, retry ----------------------------------------------------------------------------
def test_pagination_returns_each_job_exactly_once(client: FlaskClient, token: Callable[..., dict[str, str]]) -> None:
    headers = token()
    client.post("/jobs/batch", json={"jobs": [JOB] * 237}, headers=headers)
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        url = "/jobs?limit=50" + (f"&cursor={cursor}" if cursor else "")
        body = client.get(url, headers=headers).get_json()
        seen += [job["id"] for job in body["jobs"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 5 and len(seen) == 237 and len(set(seen)) == 237 and seen == sorted(seen, reverse=True)


def test_list_filters_and_bad_queries(client: FlaskClient, token: Callable[..., dict[str, str]]) -> None:
    headers = token()
    ids = [client.post("/jobs", json=JOB, headers=headers).get_json()["id"] for _ in range(3)]
    client.post(f"/jobs/{ids[0]}/cancel", headers=headers)
    canceled = client.get("/jobs?status=canceled", headers=headers).get_json()["jobs"]
    assert [job["id"] for job in canceled] == [ids[0]]
    assert len(client.get("/jobs?workflow=txt2img&since=2000-01-01T00:00:00Z", headers=headers).get_json()["jobs"]) == 3
    for query in ("status=exploded", "limit=0", "limit=x", "cursor=!!", "since=yesterday", "colour=red"):
        response = client.get(f"/jobs?{query}", headers=headers)
        assert response.status_code == 400
        assert response.get_json()["error"]["code"] in {"invalid_query", "invalid_cursor"}


def test_cancel_and_retry(client: FlaskClient, token: Callable[..., dict[str, str]]) -> None:
    headers = token()
    job_id = client.post("/jobs", json=JOB, headers=headers).get_json()["id"]
    assert client.post(f"/jobs/{job_id}/retry", headers=headers).status_code == 409  # queued: nothing to retry
    canceled = client.post(f"/jobs/{job_id}/cancel", headers=headers)
    assert canceled.status_code == 200 and canceled.get_json()["status"] == "canceled"
    again = client.post(f"/jobs/{job_id}/cancel", headers=headers)
    assert again.status_code == 409 and again.get_json()["error"]["details"]["status"] == "canceled"
    retried = client.post(f"/jobs/{job_id}/retry", headers=headers)
    assert retried.status_code == 200 and retried.get_json()["status"] == "queued"
    job = client.get(f"/jobs/{job_id}", headers=headers).get_json()
    assert job["status"] == "queued" and job["attempts"] == 0 and job["cancel_requested"] is False
    assert client.post("/jobs/424242/cancel", headers=headers).status_code == 404


def test_stats_show_depth_by_priority_and_workers(client: FlaskClient, token: Callable[..., dict[str, str]],
                                                  db: Database) -> None:
    headers = token()
    client.post("/jobs/batch", json={"jobs": [{**JOB, "priority": p} for p in (0, 0, 5, 9)]}, headers=headers)
    db.execute("register_worker", {"id": "w1", "host": "h", "pid": 1, "comfyui_url": "http://c"})
    body = client.get("/stats", headers=headers).get_json()
    assert body["queued"] == 4 and body["by_priority"]["queued"] == {"9": 1, "5": 1, "0": 2}
    assert body["oldest_queued_seconds"] >= 0 and body["workers"] == {"alive": 1, "silent": 0, "dead": 0}
    assert body["scope"] == "acme"
    assert client.get("/stats", headers=token("other")).get_json()["queued"] == 0


def test_retention_deletes_rows_logs_and_files(client: FlaskClient, app: Flask, db: Database,
                                               token: Callable[..., dict[str, str]], sql: Any) -> None:
    headers = token()
    ids = [client.post("/jobs", json=JOB, headers=headers).get_json()["id"] for _ in range(3)]
    queue = JobQueue(db)
    from comfyq.storage import LocalStorage  # noqa: PLC0415

    local = LocalStorage(app.config["COMFYQ_SETTINGS"].storage_dir)
    for _ in ids:
        claimed = queue.claim("w")
        assert claimed is not None
        stored = local.put(f"{claimed.id}/1/out.png", b"png", "image/png")
        queue.complete(claimed.lease, [stored.to_record()])
    sql.execute("UPDATE job_queue SET finished_at = now() - interval '40 days' WHERE id = ANY(%s)", (ids[:2],))
    response = client.post("/admin/retention", json={"older_than_days": 30}, headers=token("ops", "operator"))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"jobs_deleted": 2, "logs_deleted": 6, "objects_deleted": 2,
                                   "older_than_days": 30, "scope": "all tenants"}
    assert count(sql) == 1
    assert not (local.root / f"{ids[0]}/1/out.png").exists() and (local.root / f"{ids[2]}/1/out.png").exists()


# Limits -----------------------------------------------------------------------------------------------------
def test_rate_limit_answers_429_with_retry_after(client: FlaskClient, db: Database,
                                                 token: Callable[..., dict[str, str]], sql: Any) -> None:
    db.fetch_one("tenant_upsert", {"name": "slow", "allow_raw_graphs": False, "max_queued_jobs": None,
                                   "rate_per_second": 0.2, "rate_burst": 2})
    headers = token("slow")
    codes = [client.post("/jobs", json=JOB, headers=headers).status_code for _ in range(3)]
    assert codes == [202, 202, 429]
    limited = client.post("/jobs", json=JOB, headers=headers)
    assert limited.get_json()["error"]["code"] == "rate_limited" and int(limited.headers["Retry-After"]) >= 1
    assert count(sql) == 2


def test_quota_of_queued_jobs(client: FlaskClient, db: Database, token: Callable[..., dict[str, str]],
                              sql: Any) -> None:
    db.fetch_one("tenant_upsert", {"name": "small", "allow_raw_graphs": False, "max_queued_jobs": 3,
                                   "rate_per_second": None, "rate_burst": None})
    headers = token("small")
    assert client.post("/jobs/batch", json={"jobs": [JOB] * 2}, headers=headers).status_code == 202
    over = client.post("/jobs/batch", json={"jobs": [JOB] * 2}, headers=headers)
    assert over.status_code == 429 and over.get_json()["error"]["code"] == "quota_exceeded"
    assert client.post("/jobs", json=JOB, headers=headers).status_code == 202
    assert client.post("/jobs", json=JOB, headers=headers).status_code == 429
    assert count(sql) == 3


# CLI ----------------------------------------------------------------------------------------------------------
def test_token_create_database_bootstraps_the_first_token(db_url: str, db: Database) -> None:
    """The one CLI path into the database besides migrate and import: the first token, before any API runs.
    (Everything else the token command does goes through the API: tests/test_cli_admin.py.)"""
    env = {"DATABASE_URL": db_url, "PATH": "/usr/bin:/bin"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "comfyq.cli", *args], env=env, capture_output=True, text=True,
                              timeout=60)

    created = cli("token", "create", "--database", "--tenant", "acme", "--role", "operator", "--description", "ci")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("cq_") and "not shown again" in created.stderr
    assert created.stderr.startswith("database: postgresql://")
    [row] = tokens.list_tokens(db, "acme")
    assert (row["role"], row["description"], row["token_prefix"]) == ("operator", "ci", secret[:11])
    assert tokens.lookup(db, secret) is not None
    assert cli("token", "create", "--database").returncode == 2  # which tenant?


def test_retention_with_storage_down_answers_503_and_keeps_the_rows(db_url: str, db: Database, sql: Any,
                                                                    token: Callable[..., dict[str, str]]) -> None:
    from tests.e2e_support import free_port  # noqa: PLC0415

    app = create_app(Settings(database_url=db_url, token_cache_seconds=0, storage_backend="s3",
                              s3_endpoint=f"127.0.0.1:{free_port()}", s3_access_key="k", s3_secret_key="s"))
    queue = JobQueue(db)
    job_id = queue.enqueue(NewJob(graph=GRAPH))["id"]
    claimed = queue.claim("w")
    assert claimed is not None
    queue.complete(claimed.lease, [{"key": f"{job_id}/1/a.png", "size": 1, "content_type": "image/png"}])
    sql.execute("UPDATE job_queue SET finished_at = now() - interval '40 days'")
    response = app.test_client().post("/admin/retention", json={"older_than_days": 30},
                                      headers=token("ops", "operator"))
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "storage_unavailable"
    assert response.headers["Retry-After"] and count(sql) == 1
    app.extensions["comfyq"].db.close()
