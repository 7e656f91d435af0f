"""The response models (comfyq/api/responses.py) against the real API: every answer is the JSON the routes wrote
before they answered through the models (the same field names, values and nulls), the document's response schemas
are the models' own, and a body a model refuses is a 500, never sent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from comfyq import tokens
from comfyq.api.openapi import build_document
from comfyq.api.responses import RESPONSE_MODELS
from comfyq.db import Database
from comfyq.job_view import present_job
from comfyq.jobs import JobQueue, NewJob
from comfyq.storage import LocalStorage
from tests.support.api_app import api_app, bearer
from tests.support.openapi_fuzz import GRAPH


@pytest.fixture
def app(db_url: str, tmp_path: Path) -> Iterator[Flask]:
    with api_app(database_url=db_url, storage_dir=tmp_path / "out") as application:
        yield application


def jobs_in_every_shape(db: Database, storage_dir: Path) -> list[int]:
    """A succeeded template job with an output (and a deadline), a failed one with its error, a queued raw graph."""
    queue, storage = JobQueue(db), LocalStorage(storage_dir)
    template = NewJob(graph=GRAPH, workflow="txt2img", params={"prompt": "x", "seed": 2**64 - 1, "cfg": 7.0},
                      tenant="acme", priority=3, timeout_seconds=60, callback_url="https://hooks.example/x")
    ids = [int(queue.enqueue(job)["id"]) for job in (template, template, NewJob(graph=GRAPH, tenant="acme"))]
    done = queue.claim_by_id(ids[0], "w")
    assert done is not None
    stored = storage.put(f"{done.id}/1/a.png", b"\x89PNG\r\n\x1a\n", "image/png")
    assert queue.complete(done.lease, [{**stored.to_record(), "node_id": "9", "filename": "a.png"}])
    failed = queue.claim_by_id(ids[1], "w")
    assert failed is not None
    queue.fail_attempt(failed.lease, {"type": "execution_error", "message": "boom", "retryable": False,
                                      "node": "3", "details": {"node_errors": {"3": ["bad"]}}},
                       retryable=False, delay_seconds=0)
    return ids


def test_a_job_is_answered_as_before_the_models(app: Flask, db: Database, tmp_path: Path) -> None:
    """GET /jobs/{id} and GET /jobs answer exactly what comfyq/job_view.py makes of the row (the shape the API
    wrote by hand): the same keys in the same order, the same values and nulls, times as isoformat()."""
    client, headers, storage = app.test_client(), bearer(db, "acme", "submitter"), LocalStorage(tmp_path / "out")
    for job_id in jobs_in_every_shape(db, tmp_path / "out"):
        row = JobQueue(db).get(job_id, "acme")
        assert row is not None
        with app.test_request_context():
            expected = present_job(row, storage, 3600, "http://localhost")
        answer = client.get(f"/jobs/{job_id}", headers=headers)
        assert answer.status_code == 200
        assert list(answer.get_json()) == list(expected)
        assert answer.get_json() == json.loads(json.dumps(expected))
        assert answer.get_json()["params"].get("seed") in (None, 2**64 - 1)  # a big int stays an int
    listed = client.get("/jobs", headers=headers).get_json()["jobs"]
    assert [job["id"] for job in listed] == sorted((job["id"] for job in listed), reverse=True)
    failed = client.get(f"/jobs/{listed[1]['id']}", headers=headers).get_json()
    assert failed["error"] == {"type": "execution_error", "message": "boom", "retryable": False, "node": "3",
                               "details": {"node_errors": {"3": ["bad"]}}}


def test_admin_and_template_answers_are_as_before_the_models(app: Flask, db: Database) -> None:
    """Tokens, tenants and templates: what tokens.public() and describe() make of them, no key added or lost."""
    client = app.test_client()
    admin = bearer(db, "acme", "admin")
    listed = client.get("/admin/tokens", headers=admin).get_json()["tokens"]
    assert listed == [tokens.public(row) for row in tokens.list_tokens(db, "acme", tokens.manageable_roles("admin"))]
    assert all(token["last_used_at"] is None or isinstance(token["last_used_at"], str) for token in listed)
    made = client.post("/admin/tokens", json={"role": "submitter"}, headers=admin)
    assert made.status_code == 201 and set(made.get_json()) == {*listed[0], "token"}
    operator = bearer(db, "ops", "operator")
    tokens.set_tenant(db, "slow", rate_per_second=2, rate_burst=5)
    tenants = client.get("/admin/tenants", headers=operator).get_json()["tenants"]
    assert tenants == [tokens.public(row) for row in tokens.list_tenants(db)]
    assert [t["rate_per_second"] for t in tenants if t["name"] == "slow"] == [2.0]
    template = client.get("/workflows/txt2img", headers=admin).get_json()
    with app.app_context():
        from comfyq.api.services import services  # noqa: PLC0415 - the app's own templates

        assert template == services().workflows["txt2img"].describe()
    readyz = client.get("/readyz")
    assert readyz.get_json() == {"status": "ready"}


def test_the_documents_response_schemas_are_the_models(app: Flask) -> None:
    schemas = build_document(app.config["COMFYQ_SETTINGS"])["components"]["schemas"]
    for model in RESPONSE_MODELS:
        schema = schemas[model.__name__]
        assert set(schema["properties"]) == set(model.model_fields), model.__name__
        assert schema.get("additionalProperties") is False, model.__name__
    assert not [name for name in schemas if name not in REQUEST_MODELS and has_default_keyword(schemas[name])]
    assert "default" in schemas["WorkflowParam"]["properties"]  # a property of that name is no keyword
    assert schemas["JobOutput"]["required"] == ["key", "url"]
    assert {"type": "null"} not in schemas["JobOutput"]["properties"]["size"].get("anyOf", [])


REQUEST_MODELS = {"JobRequest", "BatchRequest", "RetentionRequest", "TokenRequest", "TenantSettings"}


def has_default_keyword(schema: Any) -> bool:
    """A response field's default is never sent, so the document names none (a request's defaults it does)."""
    if isinstance(schema, list):
        return any(map(has_default_keyword, schema))
    if not isinstance(schema, dict):
        return False
    return "default" in schema or any(
        any(map(has_default_keyword, value.values())) if key == "properties" else has_default_keyword(value)
        for key, value in schema.items())


def test_a_body_its_model_refuses_is_a_500_and_never_sent(app: Flask, db: Database, sql: Any) -> None:
    """A job row whose error lacks what the document promises (message, retryable): its read is a 500
    internal_error, not the row as it is, and not a 422 about the request."""
    client, headers = app.test_client(), bearer(db, "acme", "submitter")
    job_id = int(JobQueue(db).enqueue(NewJob(graph=GRAPH, tenant="acme"))["id"])
    sql.execute("UPDATE job_queue SET error = '{\"type\": \"odd\"}' WHERE id = %s", (job_id,))
    answer = client.get(f"/jobs/{job_id}", headers=headers)
    assert answer.status_code == 500 and answer.get_json()["error"]["code"] == "internal_error"
    assert "odd" not in answer.get_data(as_text=True)
    assert client.get("/jobs", headers=headers).status_code == 500
    assert client.get(f"/jobs/{job_id}/logs", headers=headers).status_code == 200  # the history is still readable
