"""The admin routes against a real database: a tenant's admin acts on its own tenant only (its jobs' retention,
its tokens), never on another tenant's jobs, tokens or settings; an operator acts across tenants and may name
one; workers and tenants are for operators."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from comfyq import tokens
from comfyq.db import Database
from comfyq.jobs import JobQueue, NewJob
from tests.e2e_support import TINY_GRAPH
from tests.support.api_app import api_app, bearer

Headers = dict[str, str]


@pytest.fixture
def client(db_url: str, tmp_path: Path) -> Iterator[FlaskClient]:
    with api_app(database_url=db_url, storage_dir=tmp_path / "out") as app:
        yield app.test_client()


@pytest.fixture
def token(db: Database) -> Callable[[str, str], Headers]:
    return lambda tenant, role: bearer(db, tenant, role)


def finished_job(db: Database, tenant: str, sql: Any, *, days_ago: int = 40) -> int:
    """A job of this tenant that succeeded days_ago (tests may write tables directly)."""
    queue = JobQueue(db)
    job_id = int(queue.enqueue(NewJob(graph=TINY_GRAPH, tenant=tenant))["id"])
    claimed = queue.claim("w")
    assert claimed is not None and claimed.id == job_id
    assert queue.complete(claimed.lease, [])
    sql.execute("UPDATE job_queue SET finished_at = now() - make_interval(days => %s) WHERE id = %s",
                (days_ago, job_id))
    return job_id


def job_ids(sql: Any) -> set[int]:
    sql.execute("SELECT id FROM job_queue")
    return {row[0] for row in sql.fetchall()}


def error_code(response: Any) -> str:
    return str(response.get_json()["error"]["code"])


# Retention ------------------------------------------------------------------------------------------------------
def test_a_tenant_admins_retention_deletes_only_its_own_tenants_jobs(
        client: FlaskClient, db: Database, sql: Any, token: Callable[[str, str], Headers]) -> None:
    """The security review's finding: tenant B's admin token deleted tenant A's finished jobs."""
    a_old, b_old = finished_job(db, "tenant-a", sql), finished_job(db, "tenant-b", sql)
    b_recent = finished_job(db, "tenant-b", sql, days_ago=1)
    response = client.post("/admin/retention", json={"older_than_days": 30}, headers=token("tenant-b", "admin"))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"jobs_deleted": 1, "logs_deleted": 3, "objects_deleted": 0,
                                   "older_than_days": 30, "scope": "tenant-b"}
    assert job_ids(sql) == {a_old, b_recent}
    assert b_old not in job_ids(sql)


def test_a_tenant_admin_cannot_name_another_tenant_for_retention(
        client: FlaskClient, db: Database, sql: Any, token: Callable[[str, str], Headers]) -> None:
    a_old = finished_job(db, "tenant-a", sql)
    refused = client.post("/admin/retention", json={"older_than_days": 30, "tenant": "tenant-a"},
                          headers=token("tenant-b", "admin"))
    assert refused.status_code == 403 and error_code(refused) == "forbidden"
    own = client.post("/admin/retention", json={"older_than_days": 30, "tenant": "tenant-b"},
                      headers=token("tenant-b", "admin"))
    assert own.status_code == 200 and own.get_json()["scope"] == "tenant-b"
    assert job_ids(sql) == {a_old}


def test_an_operator_runs_retention_across_tenants_or_for_the_one_it_names(
        client: FlaskClient, db: Database, sql: Any, token: Callable[[str, str], Headers]) -> None:
    a_old, b_old, c_old = (finished_job(db, tenant, sql) for tenant in ("tenant-a", "tenant-b", "tenant-c"))
    operator = token("ops", "operator")
    named = client.post("/admin/retention", json={"older_than_days": 30, "tenant": "tenant-a"}, headers=operator)
    assert named.status_code == 200 and named.get_json()["jobs_deleted"] == 1
    assert named.get_json()["scope"] == "tenant-a" and job_ids(sql) == {b_old, c_old}
    nobody = client.post("/admin/retention", json={"older_than_days": 30, "tenant": "nobody"}, headers=operator)
    assert nobody.status_code == 200 and nobody.get_json()["jobs_deleted"] == 0
    everyone = client.post("/admin/retention", json={"older_than_days": 30}, headers=operator)
    assert everyone.status_code == 200 and everyone.get_json()["jobs_deleted"] == 2
    assert everyone.get_json()["scope"] == "all tenants" and job_ids(sql) == set()
    assert a_old not in job_ids(sql)


def test_idempotency_keys_are_forgotten_per_tenant(client: FlaskClient, sql: Any,
                                                   token: Callable[[str, str], Headers]) -> None:
    sql.execute("INSERT INTO submissions (tenant, idempotency_key, request_hash, created_at) VALUES "
                "('tenant-a', 'old', 'h', now() - interval '40 days'), ('tenant-b', 'old', 'h', "
                "now() - interval '40 days')")
    client.post("/admin/retention", json={"older_than_days": 30}, headers=token("tenant-b", "admin"))
    sql.execute("SELECT tenant FROM submissions WHERE idempotency_key = 'old'")
    assert [row[0] for row in sql.fetchall()] == ["tenant-a"]


# Tokens -------------------------------------------------------------------------------------------------------
def test_a_tenant_admin_manages_only_its_own_tenants_tokens(
        client: FlaskClient, db: Database, token: Callable[[str, str], Headers]) -> None:
    a_submitter = tokens.create(db, "tenant-a", "submitter", "a's")
    tokens.create(db, "tenant-b", "operator", "an operator whose own jobs go to tenant-b")
    b_admin = token("tenant-b", "admin")

    listed = client.get("/admin/tokens", headers=b_admin)
    assert listed.status_code == 200
    assert {(t["tenant"], t["role"]) for t in listed.get_json()["tokens"]} == {("tenant-b", "admin")}
    assert client.get("/admin/tokens?tenant=tenant-a", headers=b_admin).status_code == 403

    for body in ({"tenant": "tenant-a", "role": "submitter"}, {"role": "operator"}):
        refused = client.post("/admin/tokens", json=body, headers=b_admin)
        assert refused.status_code == 403 and error_code(refused) == "forbidden", body
    created = client.post("/admin/tokens", json={"role": "submitter", "description": "ci"}, headers=b_admin)
    assert created.status_code == 201
    new = created.get_json()
    assert new["tenant"] == "tenant-b" and new["role"] == "submitter" and new["token"].startswith(new["token_prefix"])
    new_headers = {"Authorization": f"Bearer {new['token']}"}
    assert client.get("/stats", headers=new_headers).get_json()["scope"] == "tenant-b"

    for ref in (str(a_submitter.row["id"]), a_submitter.row["token_prefix"]):
        missing = client.delete(f"/admin/tokens/{ref}", headers=b_admin)
        assert missing.status_code == 404 and error_code(missing) == "not_found"
    a_headers = {"Authorization": f"Bearer {a_submitter.token}"}
    assert client.get("/stats", headers=a_headers).status_code == 200  # still works
    operator_rows = tokens.list_tokens(db, "tenant-b", ("operator",))
    assert client.delete(f"/admin/tokens/{operator_rows[0]['id']}", headers=b_admin).status_code == 404

    revoked = client.delete(f"/admin/tokens/{new['token_prefix']}", headers=b_admin)
    assert revoked.status_code == 200 and revoked.get_json()["revoked_at"] is not None
    assert client.get("/stats", headers=new_headers).status_code == 401


def test_an_operator_manages_every_tenants_tokens(client: FlaskClient, db: Database,
                                                  token: Callable[[str, str], Headers]) -> None:
    a_submitter = tokens.create(db, "tenant-a", "submitter")
    operator = token("ops", "operator")
    every = client.get("/admin/tokens", headers=operator).get_json()["tokens"]
    assert {t["tenant"] for t in every} == {"tenant-a", "ops"}
    assert all("token_hash" not in t and "token" not in t for t in every)
    only_a = client.get("/admin/tokens?tenant=tenant-a", headers=operator).get_json()["tokens"]
    assert [t["id"] for t in only_a] == [a_submitter.row["id"]]
    for role in ("admin", "operator"):
        created = client.post("/admin/tokens", json={"tenant": "tenant-new", "role": role}, headers=operator)
        assert created.status_code == 201 and created.get_json()["tenant"] == "tenant-new"
    assert tokens.list_tenants(db, "tenant-new")  # created with its first token
    assert client.delete(f"/admin/tokens/{a_submitter.row['id']}", headers=operator).status_code == 200
    assert client.get("/stats", headers={"Authorization": f"Bearer {a_submitter.token}"}).status_code == 401


def test_token_requests_are_validated(client: FlaskClient, token: Callable[[str, str], Headers]) -> None:
    operator = token("ops", "operator")
    for body in ({"tenant": "Not A Name", "role": "submitter"}, {"role": "root"}, {"role": "admin", "x": 1},
                 {"description": "a\x00b"}):
        response = client.post("/admin/tokens", json=body, headers=operator)
        assert response.status_code == 422 and error_code(response) == "validation_error", body
    assert client.get("/admin/tokens?tenant=NOT%00", headers=operator).status_code == 400
    assert client.get("/admin/tokens?colour=red", headers=operator).status_code == 400
    assert client.delete("/admin/tokens/%00", headers=operator).status_code == 404
    submitter = client.get("/admin/tokens", headers=token("tenant-a", "submitter"))
    assert submitter.status_code == 403 and error_code(submitter) == "forbidden"


# Tenants and workers --------------------------------------------------------------------------------------------
def test_tenant_settings_are_for_operators_only(client: FlaskClient, db: Database,
                                                token: Callable[[str, str], Headers]) -> None:
    tokens.set_tenant(db, "tenant-a", max_queued_jobs=10)
    b_admin = token("tenant-b", "admin")
    for response in (client.get("/admin/tenants", headers=b_admin),
                     client.put("/admin/tenants/tenant-a", json={"allow_raw_graphs": True}, headers=b_admin),
                     client.put("/admin/tenants/tenant-b", json={"allow_raw_graphs": True}, headers=b_admin)):
        assert response.status_code == 403 and error_code(response) == "forbidden"
    [a] = tokens.list_tenants(db, "tenant-a")
    assert (a["allow_raw_graphs"], a["max_queued_jobs"]) == (False, 10)

    operator = token("ops", "operator")
    replaced = client.put("/admin/tenants/tenant-a", json={"allow_raw_graphs": True, "rate_per_second": 5,
                                                          "rate_burst": 10}, headers=operator)
    assert replaced.status_code == 200
    assert {k: replaced.get_json()[k] for k in ("name", "allow_raw_graphs", "max_queued_jobs", "rate_per_second",
                                                 "rate_burst")} == {"name": "tenant-a", "allow_raw_graphs": True,
                                                                    "max_queued_jobs": None, "rate_per_second": 5.0,
                                                                    "rate_burst": 10}
    assert client.put("/admin/tenants/labs", json={}, headers=operator).status_code == 200
    listed = client.get("/admin/tenants", headers=operator).get_json()["tenants"]
    assert [t["name"] for t in listed] == ["default", "labs", "ops", "tenant-a", "tenant-b"]
    assert {t["name"]: t["active_tokens"] for t in listed}["tenant-b"] == 1
    for name, body in (("Bad Name", {}), ("labs", {"max_queued_jobs": -1}), ("labs", {"rate_per_second": "5"})):
        response = client.put(f"/admin/tenants/{name}", json=body, headers=operator)
        assert response.status_code == 422 and error_code(response) == "validation_error", (name, body)


def test_workers_are_listed_for_operators_only(client: FlaskClient, db: Database,
                                               token: Callable[[str, str], Headers]) -> None:
    db.execute("register_worker", {"id": "w1", "host": "gpu-1", "pid": 7, "comfyui_url": "http://gpu-1:8188"})
    db.execute("register_worker", {"id": "w2", "host": "gpu-2", "pid": 8, "comfyui_url": "http://gpu-2:8188"})
    db.execute("worker_stopped", {"id": "w2"})
    assert client.get("/admin/workers", headers=token("tenant-a", "admin")).status_code == 403
    operator = token("ops", "operator")
    [w1] = client.get("/admin/workers", headers=operator).get_json()["workers"]
    assert (w1["id"], w1["host"], w1["comfyui_url"], w1["current_job_id"], w1["dependencies_down"]) == (
        "w1", "gpu-1", "http://gpu-1:8188", None, [])
    assert 0 <= w1["heartbeat_age_seconds"] < 60 and w1["heartbeat_at"].startswith("20")
    every = client.get("/admin/workers?all=true", headers=operator).get_json()["workers"]
    assert sorted(w["id"] for w in every) == ["w1", "w2"]
    assert client.get("/admin/workers?all=yes", headers=operator).status_code == 400


# Roles ----------------------------------------------------------------------------------------------------------
def test_stats_cover_the_whole_queue_only_for_operators(client: FlaskClient, db: Database,
                                                        token: Callable[[str, str], Headers]) -> None:
    queue = JobQueue(db)
    queue.enqueue(NewJob(graph=TINY_GRAPH, tenant="tenant-a"))
    queue.enqueue(NewJob(graph=TINY_GRAPH, tenant="tenant-b"))
    b_admin = client.get("/stats", headers=token("tenant-b", "admin")).get_json()
    assert (b_admin["queued"], b_admin["scope"]) == (1, "tenant-b")
    operator = client.get("/stats", headers=token("ops", "operator")).get_json()
    assert (operator["queued"], operator["scope"]) == (2, "all tenants")


def test_the_bootstrap_token_is_an_operator(db_url: str, tmp_path: Path, db: Database, sql: Any) -> None:
    """COMFYQ_API_TOKEN is set by whoever deploys the API: `docker compose exec webhook-api comfyq ...` uses it."""
    bootstrap = {"Authorization": "Bearer bootstrap-operator-secret"}
    finished_job(db, "tenant-a", sql)
    with api_app(database_url=db_url, storage_dir=tmp_path / "out", api_token="bootstrap-operator-secret") as app:
        client = app.test_client()
        assert client.get("/admin/workers", headers=bootstrap).status_code == 200
        assert client.get("/stats", headers=bootstrap).get_json()["scope"] == "all tenants"
        created = client.post("/admin/tokens", json={"role": "operator"}, headers=bootstrap)
        assert created.status_code == 201 and created.get_json()["tenant"] == "default"
        assert client.post("/admin/retention", json={"older_than_days": 30}, headers=bootstrap).get_json()[
            "jobs_deleted"] == 1


def test_token_import_changes_a_role_only_when_asked(db: Database) -> None:
    """The compose stack imported n8n's cleanup token as admin before operators existed; --update-role moves it."""
    secret = tokens.generate()
    tokens.import_token(db, secret, "default", "admin", "n8n")
    with pytest.raises(tokens.TokenConflict):
        tokens.import_token(db, secret, "default", "operator", "n8n")
    row, created = tokens.import_token(db, secret, "default", "operator", "n8n", update_role=True)
    assert (row["role"], created) == ("operator", False)
    with pytest.raises(tokens.TokenConflict):
        tokens.import_token(db, secret, "other", "operator", update_role=True)  # never another tenant
    revoked = tokens.generate()
    row, _ = tokens.import_token(db, revoked, "default", "admin")
    tokens.revoke(db, str(row["id"]))
    with pytest.raises(tokens.TokenConflict):
        tokens.import_token(db, revoked, "default", "operator", update_role=True)  # nor revive a revoked one
