"""The admin routes against a real database: a tenant's admin acts on its own tenant only (its jobs' retention,
its tokens, its callback secrets), never on another tenant's jobs, tokens, secrets or settings; an operator acts
across tenants and may name one; workers and tenants are for operators. The bootstrap token COMFYQ_API_TOKEN must
be a long random secret, and its uses are logged."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from pydantic import ValidationError

from comfyq import tokens
from comfyq.api import auth
from comfyq.db import Database
from comfyq.envfile import init_env, read_env
from comfyq.jobs import JobQueue, NewJob
from comfyq.settings import PROJECT_ROOT, Settings
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


BOOTSTRAP = "cq_bootstrap-operator-secret-0123456789abcdef"


def test_the_bootstrap_token_is_an_operator(db_url: str, tmp_path: Path, db: Database, sql: Any) -> None:
    """COMFYQ_API_TOKEN is set by whoever deploys the API: `docker compose exec webhook-api comfyq ...` uses it."""
    bootstrap = {"Authorization": f"Bearer {BOOTSTRAP}"}
    finished_job(db, "tenant-a", sql)
    with api_app(database_url=db_url, storage_dir=tmp_path / "out", api_token=BOOTSTRAP) as app:
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


# The bootstrap token -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["x", "short-but-random-9f8e7d", "change-me-to-a-long-random-string",
                                   "CHANGE_ME_please_0123456789abcdefghijklmnop", "<the token of the operator here>",
                                   "x" * 64, "1234" * 10, " cq_leading-space-0123456789abcdefghijkl"])
def test_a_short_or_placeholder_bootstrap_token_is_refused(value: str) -> None:
    """The security review's finding: the API took `x`, or .env.example's placeholder, as an operator token of
    every tenant, silently. The message names the setting and never its value."""
    with pytest.raises(ValidationError, match="COMFYQ_API_TOKEN") as refused:
        Settings(api_token=value)
    assert value.strip() not in str(refused.value)


def test_a_random_bootstrap_token_is_taken_and_empty_is_unset() -> None:
    for value in (BOOTSTRAP, tokens.generate(), "f" + "0123456789abcdef" * 2, "pA55-w0rd/From+A=Manager&0123456789"):
        assert Settings(api_token=value).api_token == value
    assert Settings(api_token="").api_token is None


def test_the_env_example_placeholder_is_refused_and_comfyq_init_writes_a_token_that_is_taken(tmp_path: Path) -> None:
    example = PROJECT_ROOT / ".env.example"
    with pytest.raises(ValidationError, match="placeholder"):
        Settings(api_token=read_env(example)["COMFYQ_API_TOKEN"])
    init_env(tmp_path / ".env", example)
    written = read_env(tmp_path / ".env")["COMFYQ_API_TOKEN"]
    assert Settings(api_token=written).api_token == written


def test_the_api_refuses_to_start_with_a_placeholder_token(tmp_path: Path) -> None:
    """`comfyq api` stops before gunicorn starts, with one clear line; the value is not echoed."""
    placeholder = "change-me-to-a-long-random-string"
    done = subprocess.run([sys.executable, "-m", "comfyq.cli", "api", "--bind", "127.0.0.1:1"], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin", "COMFYQ_API_TOKEN": placeholder,
                               "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("comfyq: invalid settings: api_token:") and "placeholder" in done.stderr
    assert placeholder not in done.stderr + done.stdout and "Traceback" not in done.stderr


def test_each_use_of_the_bootstrap_token_is_logged_without_it(db_url: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """At most one line a minute per process, each saying how many uses it stands for; named tokens log none."""
    clock = [1000.0]
    monkeypatch.setattr(auth, "bootstrap_uses", auth.UseLog(60))
    monkeypatch.setattr(auth.time, "monotonic", lambda: clock[0])
    with api_app(database_url=db_url, storage_dir=tmp_path / "out", api_token=BOOTSTRAP) as app, \
            caplog.at_level(logging.INFO, logger="comfyq.api.auth"):
        client = app.test_client()
        bootstrap = {"Authorization": f"Bearer {BOOTSTRAP}"}
        for _ in range(3):
            assert client.get("/stats", headers=bootstrap).status_code == 200
        clock[0] += 61
        assert client.get("/admin/workers", headers=bootstrap).status_code == 200
        named = client.post("/admin/tokens", json={"role": "operator"}, headers=bootstrap).get_json()["token"]
        assert client.get("/stats", headers={"Authorization": f"Bearer {named}"}).status_code == 200
        assert client.get("/stats", headers={"Authorization": "Bearer wrong"}).status_code == 401
    lines = [r for r in caplog.records if getattr(r, "action", None) == "bootstrap_token_used"]
    assert [r.uses for r in lines] == [1, 3]  # type: ignore[attr-defined]
    assert "GET /stats" in lines[0].getMessage() and "GET /admin/workers" in lines[1].getMessage()
    assert all(BOOTSTRAP not in r.getMessage() for r in caplog.records)


# Retention bodies --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("days", [True, False, "36500", "30", None, [30], {"days": 30}])
def test_retention_refuses_what_is_not_a_number(client: FlaskClient, db: Database, sql: Any,
                                                token: Callable[[str, str], Headers], days: Any) -> None:
    """The security review's finding: `true` and "36500" were taken for numbers (`true` as one day)."""
    old = finished_job(db, "acme", sql)
    refused = client.post("/admin/retention", json={"older_than_days": days}, headers=token("acme", "admin"))
    assert refused.status_code == 422 and error_code(refused) == "validation_error", refused.get_json()
    assert refused.get_json()["error"]["details"][0]["field"] == "older_than_days"
    assert job_ids(sql) == {old}


def test_retention_takes_whole_and_fractional_numbers_of_days(client: FlaskClient, db: Database, sql: Any,
                                                              token: Callable[[str, str], Headers]) -> None:
    old = finished_job(db, "acme", sql)
    for days in (36500, 30.5, 30):
        answer = client.post("/admin/retention", json={"older_than_days": days}, headers=token("acme", "admin"))
        assert answer.status_code == 200 and answer.get_json()["older_than_days"] == days
    assert job_ids(sql) == set() and old


# Callback secrets --------------------------------------------------------------------------------------------------
def secrets_path(tenant: str, secret_id: int | None = None) -> str:
    return f"/admin/tenants/{tenant}/callback-secrets" + ("" if secret_id is None else f"/{secret_id}")


def test_a_tenants_admin_makes_lists_and_retires_its_own_callback_secrets(
        client: FlaskClient, db: Database, token: Callable[[str, str], Headers],
        caplog: pytest.LogCaptureFixture) -> None:
    admin = token("acme", "admin")
    assert client.get(secrets_path("acme"), headers=admin).get_json() == {"callback_secrets": []}
    with caplog.at_level(logging.INFO, logger="comfyq.api.admin_api"):
        made = [client.post(secrets_path("acme"), headers=admin) for _ in range(3)]
    assert [r.status_code for r in made] == [201, 201, 201]
    first = made[0].get_json()
    assert set(first) == {"id", "tenant", "secret_prefix", "source", "created_at", "retired_at", "secret"}
    assert first["secret"].startswith("whsec_") and first["secret"].startswith(first["secret_prefix"])
    assert (first["tenant"], first["source"], first["retired_at"]) == ("acme", "api", None)
    assert len({r.get_json()["secret"] for r in made}) == 3
    assert "callback_secret_create" in {getattr(r, "action", None) for r in caplog.records}
    assert all(r.get_json()["secret"] not in caplog.text for r in made)

    too_many = client.post(secrets_path("acme"), headers=admin)
    assert too_many.status_code == 409 and error_code(too_many) == "too_many_callback_secrets"

    listing = client.get(secrets_path("acme"), headers=admin)
    assert [row["id"] for row in listing.get_json()["callback_secrets"]] == [r.get_json()["id"] for r in made]
    assert all(r.get_json()["secret"] not in listing.get_data(as_text=True) for r in made)

    retired = client.delete(secrets_path("acme", first["id"]), headers=admin)
    assert retired.status_code == 200 and retired.get_json()["retired_at"] is not None
    assert "secret" not in retired.get_json()
    again = client.delete(secrets_path("acme", first["id"]), headers=admin)
    assert again.status_code == 404 and error_code(again) == "not_found"
    assert client.post(secrets_path("acme"), headers=admin).status_code == 201  # room again


def test_callback_secrets_of_another_tenant_are_for_operators_only(
        client: FlaskClient, db: Database, token: Callable[[str, str], Headers]) -> None:
    operator = token("ops", "operator")
    theirs = client.post(secrets_path("tenant-a"), headers=token("tenant-a", "admin")).get_json()
    for headers in (token("tenant-b", "admin"), token("tenant-b", "submitter"), token("tenant-a", "submitter")):
        assert client.get(secrets_path("tenant-a"), headers=headers).status_code == 403
        assert client.post(secrets_path("tenant-a"), headers=headers).status_code == 403
        assert client.delete(secrets_path("tenant-a", theirs["id"]), headers=headers).status_code == 403
    assert client.delete(secrets_path("tenant-b", theirs["id"]), headers=token("tenant-b", "admin")).status_code \
        == 404  # the id of another tenant's secret, through one's own tenant
    assert client.get(secrets_path("nobody"), headers=token("nobody-else", "admin")).status_code == 403

    assert client.get(secrets_path("nobody"), headers=operator).status_code == 404
    assert client.post(secrets_path("nobody"), headers=operator).status_code == 404
    assert client.get(secrets_path("tenant-a"), headers=operator).get_json()["callback_secrets"][0]["id"] \
        == theirs["id"]
    made = client.post(secrets_path("tenant-a"), headers=operator)
    assert made.status_code == 201 and made.get_json()["tenant"] == "tenant-a"
    assert client.delete(secrets_path("tenant-a", theirs["id"]), headers=operator).status_code == 200
