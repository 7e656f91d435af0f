"""Cancelling a job through the API: `DELETE /jobs/{id}` and `POST /jobs/{id}/cancel` are one operation, so every
test here runs through both routes and expects the same answer, the same stored state and the same history."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from comfyq import tokens
from comfyq.db import Database
from comfyq.jobs import JobQueue, NewJob
from tests.e2e_support import Stack, wait_until
from tests.support.api_app import api_app, bearer
from tests.support.openapi_fuzz import GRAPH

Cancel = Callable[[int, dict[str, str]], TestResponse]
METRICS_TOKEN = "metrics-scrape-0123456789abcdef"


@pytest.fixture
def app(db_url: str, tmp_path: Path) -> Iterator[Flask]:
    with api_app(database_url=db_url, storage_dir=tmp_path / "out", metrics_token=METRICS_TOKEN) as application:
        yield application


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(params=["DELETE /jobs/{id}", "POST /jobs/{id}/cancel"])
def cancel(request: pytest.FixtureRequest, client: FlaskClient) -> Cancel:
    """One of the two routes, as a call: the tests below hold both to the same behaviour."""
    if request.param.startswith("DELETE"):
        return lambda job_id, headers: client.delete(f"/jobs/{job_id}", headers=headers)
    return lambda job_id, headers: client.post(f"/jobs/{job_id}/cancel", headers=headers)


def new_job(db: Database, tenant: str = "acme") -> int:
    return int(JobQueue(db).enqueue(NewJob(graph=GRAPH, tenant=tenant))["id"])


def events(db: Database, job_id: int) -> list[tuple[str, str | None, str | None]]:
    return [(row["event"], row["from_status"], row["to_status"]) for row in JobQueue(db).logs(job_id)]


def test_a_queued_job_is_canceled_at_once(cancel: Cancel, client: FlaskClient, db: Database) -> None:
    headers, job_id = bearer(db, "acme", "submitter"), new_job(db)
    answer = cancel(job_id, headers)
    assert answer.status_code == 200
    assert answer.get_json() == {"id": job_id, "status": "canceled", "cancel_requested": True}
    job = client.get(f"/jobs/{job_id}", headers=headers).get_json()  # canceled, not deleted
    assert (job["status"], job["cancel_requested"]) == ("canceled", True) and job["finished_at"] is not None
    assert events(db, job_id) == [("queued", None, "queued"), ("canceled", "queued", "canceled")]


def test_a_running_job_is_flagged_and_its_worker_may_then_finish_it_canceled(cancel: Cancel, db: Database) -> None:
    headers, job_id, queue = bearer(db, "acme", "submitter"), new_job(db), JobQueue(db)
    claimed = queue.claim_by_id(job_id, "w1")
    assert claimed is not None
    assert not queue.finish_canceled(claimed.lease)  # without the flag in the database a worker may not
    answer = cancel(job_id, headers)
    assert answer.status_code == 200
    assert answer.get_json() == {"id": job_id, "status": "running", "cancel_requested": True}
    assert queue.finish_canceled(claimed.lease)
    assert queue.status(job_id, "acme") == "canceled"
    assert events(db, job_id) == [("queued", None, "queued"), ("claimed", "queued", "running"),
                                  ("cancel_requested", "running", "running"), ("canceled", "running", "canceled")]


@pytest.mark.parametrize("final", ["succeeded", "failed", "canceled"])
def test_a_finished_job_is_a_409_with_its_status(cancel: Cancel, db: Database, final: str) -> None:
    headers, job_id, queue = bearer(db, "acme", "submitter"), new_job(db), JobQueue(db)
    if final == "canceled":
        assert queue.cancel(job_id, "acme") is not None
    else:
        claimed = queue.claim_by_id(job_id, "w1")
        assert claimed is not None
        if final == "succeeded":
            assert queue.complete(claimed.lease, [])
        else:
            assert queue.fail_attempt(claimed.lease, {"type": "x", "message": "boom", "retryable": False},
                                      retryable=False, delay_seconds=0)
    before = events(db, job_id)
    answer = cancel(job_id, headers)
    assert answer.status_code == 409
    assert answer.get_json() == {"error": {"code": "not_cancelable", "message": f"job {job_id} is already {final}",
                                           "details": {"status": final}}}
    assert events(db, job_id) == before


def test_another_tenants_job_is_a_404_like_one_that_never_existed(cancel: Cancel, db: Database) -> None:
    job_id = new_job(db, "acme")
    other = bearer(db, "other", "admin")
    answer, never = cancel(job_id, other), cancel(job_id + 1000, other)
    assert (answer.status_code, never.status_code) == (404, 404)
    assert answer.get_json() == {"error": {"code": "not_found", "message": f"no job {job_id}", "details": {}}}
    assert never.get_json()["error"]["message"] == f"no job {job_id + 1000}"
    assert JobQueue(db).status(job_id, "acme") == "queued" and events(db, job_id) == [("queued", None, "queued")]


def test_without_a_valid_api_token_it_is_a_401_and_nothing_changes(cancel: Cancel, db: Database) -> None:
    """No token, a revoked one, and the metrics token (it reads /metrics and nothing else): 401."""
    job_id = new_job(db)
    revoked = tokens.create(db, "acme", "submitter")
    assert tokens.revoke(db, str(revoked.row["id"])) is not None
    for headers in ({}, {"Authorization": f"Bearer {revoked.token}"}, {"Authorization": f"Bearer {METRICS_TOKEN}"}):
        answer = cancel(job_id, headers)
        assert answer.status_code == 401 and answer.get_json()["error"]["code"] == "unauthorized"
        assert answer.headers["WWW-Authenticate"] == 'Bearer realm="comfyq"'
    assert JobQueue(db).status(job_id, "acme") == "queued"


def test_the_tenants_rate_limit_applies(cancel: Cancel, db: Database) -> None:
    tokens.set_tenant(db, "slow", rate_per_second=0.01, rate_burst=1)
    headers, first, second = bearer(db, "slow", "submitter"), new_job(db, "slow"), new_job(db, "slow")
    assert cancel(first, headers).status_code == 200
    limited = cancel(second, headers)
    assert limited.status_code == 429 and limited.get_json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    assert JobQueue(db).status(second, "slow") == "queued"


def test_both_routes_answer_alike(client: FlaskClient, db: Database) -> None:
    """Byte for byte, but for the id: the answers of one route for a queued job, a repeat and a job of another
    tenant are those of the other."""
    headers = bearer(db, "acme", "submitter")

    def answers(send: Callable[[int], TestResponse]) -> list[tuple[int, Any]]:
        ids = [job_id := new_job(db), job_id, new_job(db, "other")]
        return [(answer.status_code, answer.get_data(as_text=True).replace(str(n), "N"))
                for answer, n in zip(map(send, ids), ids, strict=True)]

    assert answers(lambda n: client.delete(f"/jobs/{n}", headers=headers)) == \
        answers(lambda n: client.post(f"/jobs/{n}/cancel", headers=headers))


def test_an_id_beyond_bigint_is_a_404_not_a_405(client: FlaskClient, db: Database) -> None:
    """Found by fuzzing: DELETE /jobs/<a number past the bigint range> answered 405 (GET's rule has the same
    shape), until the converter's regex itself kept to the range."""
    headers = bearer(db, "acme", "submitter")
    for number in (2**63, 10**19, 2**70, 22250087906327160461012765):
        for method, path in (("DELETE", f"/jobs/{number}"), ("GET", f"/jobs/{number}"),
                             ("GET", f"/jobs/{number}/logs"), ("POST", f"/jobs/{number}/cancel")):
            assert client.open(path, method=method, headers=headers).status_code == 404, (method, path)
    assert client.delete(f"/jobs/{2**63 - 1}", headers=headers).get_json()["error"]["code"] == "not_found"


@pytest.mark.slow
def test_delete_stops_a_job_a_real_worker_runs(client: FlaskClient, db: Database, stack: Stack) -> None:
    """A worker process runs the job on the ComfyUI stand-in (3 s per node); DELETE flags it, the worker hears the
    cancel and stops the prompt, and the job's history shows the flag and the worker's cancel."""
    stack.standin("--node-seconds", "3")
    headers, queue = bearer(db, "acme", "submitter"), JobQueue(db)
    job_id = new_job(db)
    stack.worker("w1")
    wait_until(lambda: (queue.get(job_id, "acme") or {}).get("prompt_id"), 20, "the job to start")
    worker_id = (queue.get(job_id, "acme") or {})["worker_id"]
    answer = client.delete(f"/jobs/{job_id}", headers=headers)
    assert answer.status_code == 200
    assert answer.get_json() == {"id": job_id, "status": "running", "cancel_requested": True}
    wait_until(lambda: queue.status(job_id, "acme") == "canceled", 20, "the worker to stop the prompt")
    history = client.get(f"/jobs/{job_id}/logs", headers=headers).get_json()["logs"]
    assert [(e["event"], e["worker_id"]) for e in history] == [
        ("queued", None), ("claimed", worker_id), ("cancel_requested", None), ("canceled", worker_id)]
    again = client.delete(f"/jobs/{job_id}", headers=headers)
    assert again.status_code == 409 and again.get_json()["error"]["details"] == {"status": "canceled"}
