"""The API's two answers for a database that failed a request, with a real Postgres: 503 outcome_unknown when
the connection was lost while the request's write was under way (it may have committed: retry with the same
Idempotency-Key), 503 database_unavailable when nothing was written. The loss is made deterministic: the test
holds a lock so the API's statement blocks, then ends its backend with pg_terminate_backend()."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from comfyq import tokens
from comfyq.api.app import create_app
from comfyq.settings import Settings
from tests.db_locks import Blocked, blocked_backend, lock, terminate
from tests.support.db_conns import count_jobs

TOKEN = "outcome-token-0123456789abcdefghijklmnop"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
TEMPLATE_JOB = {"workflow": "txt2img", "params": {"prompt": "a red fox"}}  # created tokens may not send raw graphs


def _app(url: str) -> Flask:
    # One pooled connection: the request before the test's lock prepares the statements the blocked one runs.
    return create_app(Settings(database_url=url, api_token=TOKEN, db_pool_max=1, token_cache_seconds=0))


@pytest.fixture
def app(db_url: str) -> Iterator[Flask]:
    application = _app(db_url)
    try:
        yield application
    finally:
        services = application.extensions.get("comfyq")
        if services is not None:
            services.db.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()  # not `with`: a preserved request context could not be popped from another thread


def post_blocked(client: FlaskClient, admin: Any, query_start: str, headers: dict[str, str],
                 job: dict[str, Any] | None = None) -> Any:
    """POST /jobs while the test's lock holds its statement; end that backend, return the answer."""
    answers: list[Any] = []
    body = job or {"graph": GRAPH}
    blocked = Blocked(lambda: answers.append(client.post("/jobs", json=body, headers=headers)))
    terminate(admin, blocked_backend(admin, query_start))
    assert blocked.result() is None
    return answers[0]


def error_of(answer: Any) -> dict[str, Any]:
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
    body = answer.get_json()
    assert set(body["error"]) == {"code", "message", "details"}
    return body["error"]  # type: ignore[no-any-return]


def test_a_submission_lost_during_its_insert_is_outcome_unknown(client: FlaskClient, admin: Any,
                                                                locker: Any) -> None:
    assert client.post("/jobs", json={"graph": GRAPH}, headers=AUTH).status_code == 202
    lock(locker, "SHARE")
    error = error_of(post_blocked(client, admin, "EXECUTE comfyq_enqueue_jobs", AUTH))
    assert error["code"] == "outcome_unknown"
    assert "Idempotency-Key" in error["message"]
    locker.rollback()
    assert client.post("/jobs", json={"graph": GRAPH}, headers=AUTH).status_code == 202  # serves again


def test_with_a_key_the_lost_transaction_wrote_nothing_and_the_retry_writes_once(client: FlaskClient, admin: Any,
                                                                                 locker: Any) -> None:
    """With an Idempotency-Key the submission is one transaction: lost before its COMMIT, nothing committed."""
    keyed = {**AUTH, "Idempotency-Key": "order-1"}
    lock(locker, "SHARE")
    error = error_of(post_blocked(client, admin, "WITH input AS", keyed))
    assert error["code"] == "database_unavailable"
    locker.rollback()
    assert count_jobs(admin) == 0
    first = client.post("/jobs", json={"graph": GRAPH}, headers=keyed)
    again = client.post("/jobs", json={"graph": GRAPH}, headers=keyed)
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.get_json()["id"] == again.get_json()["id"] and count_jobs(admin) == 1


def test_a_lost_bookkeeping_write_before_the_submission_wrote_no_job(app: Flask, client: FlaskClient, admin: Any,
                                                                     locker: Any) -> None:
    """A created token's last use is written before the job: losing that write leaves the request without
    effect, so the answer is database_unavailable."""
    with app.app_context():
        from comfyq.api.services import services  # noqa: PLC0415 - needs the app context

        created = tokens.create(services().db, "default", "submitter")
    own = {"Authorization": f"Bearer {created.token}"}
    assert client.post("/jobs", json=TEMPLATE_JOB, headers=own).status_code == 202
    lock(locker, "SHARE", table="api_tokens")
    error = error_of(post_blocked(client, admin, "EXECUTE comfyq_token_touch", own, TEMPLATE_JOB))
    assert error["code"] == "database_unavailable"
    locker.rollback()
    assert count_jobs(admin) == 1


def test_a_lost_write_of_a_read_request_is_database_unavailable(app: Flask, client: FlaskClient, admin: Any,
                                                                locker: Any) -> None:
    """GET writes only bookkeeping; whatever it lost, a read has no outcome to be unknown."""
    with app.app_context():
        from comfyq.api.services import services  # noqa: PLC0415

        created = tokens.create(services().db, "default", "submitter")
    own = {"Authorization": f"Bearer {created.token}"}
    assert client.get("/jobs", headers=own).status_code == 200
    lock(locker, "SHARE", table="api_tokens")
    answers: list[Any] = []
    blocked = Blocked(lambda: answers.append(client.get("/jobs", headers=own)))
    terminate(admin, blocked_backend(admin, "EXECUTE comfyq_token_touch"))
    assert blocked.result() is None
    assert error_of(answers[0])["code"] == "database_unavailable"


def test_a_server_down_before_the_request_is_database_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    app = _app(f"postgresql://nobody@127.0.0.1:{port}/none")
    try:
        client = app.test_client()
        error = error_of(client.post("/jobs", json={"graph": GRAPH}, headers=AUTH))
        assert error["code"] == "database_unavailable"
        error = error_of(client.post("/jobs", json={"graph": GRAPH}, headers={**AUTH, "Idempotency-Key": "k"}))
        assert error["code"] == "database_unavailable"
    finally:
        services = app.extensions.get("comfyq")
        if services is not None:
            services.db.close()
