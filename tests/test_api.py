"""The minimal API against a real database: submit, read back, and bad input refused with nothing written."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from comfyq import tokens
from comfyq.api.app import create_app
from comfyq.db import Database
from comfyq.errors import DatabaseUnavailable
from comfyq.settings import Settings

TOKEN = "test-token-123-0123456789abcdefghijklmnop"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(db_url: str) -> Iterator[FlaskClient]:
    app = create_app(Settings(database_url=db_url, api_token=TOKEN, max_body_bytes=64 * 1024))
    with app.test_client() as test_client:
        yield test_client
    services = app.extensions.get("comfyq")
    if services is not None:
        services.db.close()


def count_jobs(sql: Any) -> int:
    sql.execute("SELECT count(*) FROM job_queue")
    return int(sql.fetchone()[0])


def test_submit_template_job_and_read_it_back(client: FlaskClient, sql: Any) -> None:
    response = client.post("/jobs", json={"workflow": "txt2img", "params": {"prompt": "a red fox", "seed": 42},
                                          "priority": 5}, headers=AUTH)
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "queued" and response.headers["Location"] == f"/jobs/{body['id']}"
    job = client.get(response.headers["Location"], headers=AUTH).get_json()
    assert job["status"] == "queued" and job["priority"] == 5 and job["attempts"] == 0
    assert job["params"]["prompt"] == "a red fox" and job["params"]["width"] == 512
    sql.execute("SELECT graph->'6'->'inputs'->>'text', graph->'3'->'inputs'->>'seed' FROM job_queue")
    assert sql.fetchone() == ("a red fox", "42")


def test_random_seed_is_drawn_and_stored(client: FlaskClient) -> None:
    first = client.post("/jobs", json={"workflow": "txt2img", "params": {"prompt": "x"}}, headers=AUTH)
    second = client.post("/jobs", json={"workflow": "txt2img", "params": {"prompt": "x"}}, headers=AUTH)
    seeds = [client.get(r.headers["Location"], headers=AUTH).get_json()["params"]["seed"] for r in (first, second)]
    assert seeds[0] != seeds[1]


def test_submit_raw_graph(client: FlaskClient) -> None:
    graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
             "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    response = client.post("/jobs", json={"graph": graph}, headers=AUTH)
    assert response.status_code == 202


@pytest.mark.parametrize("kwargs, status, code", [
    ({"data": "{not json", "content_type": "application/json"}, 400, "invalid_json"),
    ({"data": "[1, 2]", "content_type": "application/json"}, 400, "invalid_json"),
    ({"data": "prompt=x", "content_type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
    ({"json": {"workflow": "nope", "params": {}}}, 422, "unknown_workflow"),
    ({"json": {"workflow": "txt2img", "params": {"prompt": "x"}, "priority": 5000}}, 422, "validation_error"),
    ({"json": {"workflow": "txt2img", "params": {"prompt": "x"}, "priority": "high"}}, 422, "validation_error"),
    ({"json": {"workflow": "txt2img", "params": {}}}, 422, "invalid_params"),
    ({"json": {"workflow": "txt2img", "params": {"prompt": "x", "steps": 0}}}, 422, "invalid_params"),
    ({"json": {"workflow": "txt2img", "params": {"prompt": "x", "width": 513}}}, 422, "invalid_params"),
    ({"json": {"workflow": "txt2img", "params": {"prompt": "x", "colour": 1}}}, 422, "invalid_params"),
    ({"json": {"workflow": "txt2img", "params": {"prompt": "x" * 10001}}}, 422, "invalid_params"),
    ({"json": {"workflow": "txt2img", "graph": {"1": {}}}}, 422, "validation_error"),
    ({"json": {"graph": {}}}, 422, "invalid_graph"),
    ({"json": {"graph": {"1": {"inputs": {}}}}}, 422, "invalid_graph"),
    ({"json": {"graph": {"1": {"class_type": "X", "inputs": {"a": ["9", 0]}}}}}, 422, "invalid_graph"),
    ({"json": {"workflow": "txt2img", "params": {"prompt": "x"}, "surprise": True}}, 422, "validation_error"),
    ({"data": "x" * (65 * 1024), "content_type": "application/json"}, 413, "request_entity_too_large"),
])
def test_bad_input_gets_a_json_error_and_writes_nothing(client: FlaskClient, sql: Any, kwargs: dict[str, Any],
                                                         status: int, code: str) -> None:
    response = client.post("/jobs", headers=AUTH, **kwargs)
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == code and error["message"] and "details" in error
    assert count_jobs(sql) == 0


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                                     {"Authorization": "Basic " + TOKEN}])
def test_requests_without_the_token_are_refused(client: FlaskClient, sql: Any, headers: dict[str, str]) -> None:
    response = client.post("/jobs", json={"workflow": "txt2img", "params": {"prompt": "x"}}, headers=headers)
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "unauthorized"
    assert count_jobs(sql) == 0
    assert client.get("/jobs/1", headers=headers).status_code == 401


def test_unknown_job_is_404(client: FlaskClient) -> None:
    response = client.get("/jobs/999999", headers=AUTH)
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").get_json() == {"status": "ready"}


def test_readiness_reports_a_dead_database_tersely(caplog: pytest.LogCaptureFixture) -> None:
    """The probes are open, so they say only up or down: why the database is down names its host, which goes to
    the log, and to an operator's token (here COMFYQ_API_TOKEN, the one token known without the database)."""
    host = "comfyq-db.invalid"  # never resolves: the driver's message names it
    app = create_app(Settings(database_url=f"postgresql://nobody@{host}:5432/none", api_token=TOKEN,
                              db_connect_timeout=1))
    client = app.test_client()
    with caplog.at_level(logging.WARNING, logger="comfyq.api.health_api"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            response = client.get("/readyz", headers=headers)
            assert response.status_code == 503 and response.headers["Retry-After"] == "5"
            assert response.get_json() == {"status": "unavailable"}, headers
    assert host in caplog.text
    detailed = client.get("/readyz", headers=AUTH)
    assert detailed.status_code == 503 and detailed.get_json()["status"] == "unavailable"
    assert host in detailed.get_json()["reason"]
    assert client.get("/healthz").get_json() == {"status": "ok"}
    submit = client.post("/jobs", json={"workflow": "txt2img", "params": {"prompt": "x"}}, headers=AUTH)
    assert submit.status_code == 503 and submit.headers["Retry-After"]


def test_readiness_details_need_an_admin_or_operator_token(client: FlaskClient, db: Database,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    assert client.get("/readyz").get_json() == {"status": "ready"}  # also builds the app's services
    reason = 'connection to server at "db.internal" (10.1.2.3), port 5432 failed: timeout expired'

    def unreachable() -> None:
        raise DatabaseUnavailable(reason)

    monkeypatch.setattr(client.application.extensions["comfyq"].db, "ping", unreachable)
    for role, detailed in (("submitter", False), ("admin", True), ("operator", True)):
        headers = {"Authorization": f"Bearer {tokens.create(db, 'default', role).token}"}
        response = client.get("/readyz", headers=headers)
        assert response.status_code == 503
        assert response.get_json() == ({"status": "unavailable", "reason": reason} if detailed
                                       else {"status": "unavailable"}), role
    assert client.get("/readyz").get_json() == {"status": "unavailable"}


def test_callback_url_is_stored_and_checked(client: FlaskClient, sql: Any) -> None:
    ok = client.post("/jobs", json={"workflow": "txt2img", "params": {"prompt": "x"},
                                    "callback_url": "https://hooks.example.com/comfyq"}, headers=AUTH)
    assert ok.status_code == 202
    assert client.get(ok.headers["Location"], headers=AUTH).get_json()["callback_url"] == \
        "https://hooks.example.com/comfyq"
    bad = client.post("/jobs", json={"workflow": "txt2img", "params": {"prompt": "x"},
                                     "callback_url": "ftp://hooks.example.com/x"}, headers=AUTH)
    assert bad.status_code == 422 and bad.get_json()["error"]["details"][0]["field"] == "callback_url"
    assert count_jobs(sql) == 1


def test_outputs_in_s3_come_with_presigned_urls(db_url: str, s3_server: Any) -> None:
    import requests  # noqa: PLC0415

    from comfyq.db import Database  # noqa: PLC0415
    from comfyq.jobs import JobQueue, NewJob  # noqa: PLC0415
    from tests.conftest import SQL_DIR  # noqa: PLC0415
    from tests.s3_server import unique_bucket  # noqa: PLC0415

    bucket = unique_bucket()
    settings = Settings(database_url=db_url, api_token=TOKEN, storage_backend="s3", s3_endpoint=s3_server.endpoint,
                        s3_access_key=s3_server.access_key, s3_secret_key=s3_server.secret_key, s3_bucket=bucket)
    storage = s3_server.storage(bucket)
    stored = storage.put("1/1/out.png", b"\x89PNG fake bytes", "image/png")
    db = Database(db_url, SQL_DIR)
    queue = JobQueue(db)
    job_id = queue.enqueue(NewJob(graph={"1": {"class_type": "X", "inputs": {}}}))["id"]
    claimed = queue.claim("w")
    assert claimed is not None and queue.complete(claimed.lease, [stored.to_record()])
    db.close()
    app = create_app(settings)
    body = app.test_client().get(f"/jobs/{job_id}", headers=AUTH).get_json()
    [output] = body["outputs"]
    assert output["key"] == "1/1/out.png" and output["url"].startswith("http://")
    download = requests.get(output["url"], timeout=10)
    assert download.status_code == 200 and download.content == b"\x89PNG fake bytes"
    app.extensions["comfyq"].db.close()


def test_local_outputs_are_served_by_the_api(db_url: str, tmp_path: Path) -> None:
    """With local storage the job's `url` points at the API, which streams the file with its type, an ETag and
    range support, to the job's own tenant only; `location` names the key, never the worker's disk."""
    from comfyq.db import Database  # noqa: PLC0415
    from comfyq.jobs import JobQueue, NewJob  # noqa: PLC0415
    from comfyq.storage import LocalStorage  # noqa: PLC0415
    from tests.conftest import SQL_DIR  # noqa: PLC0415

    storage = LocalStorage(tmp_path / "outputs")
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    stored = storage.put("ns/1/1/out.png", data, "image/png")
    db = Database(db_url, SQL_DIR)
    queue = JobQueue(db)
    job_id = queue.enqueue(NewJob(graph={"1": {"class_type": "X", "inputs": {}}}))["id"]
    claimed = queue.claim("w")
    assert claimed is not None and queue.complete(claimed.lease, [{**stored.to_record(), "filename": "out.png"}])
    db.close()
    app = create_app(Settings(database_url=db_url, api_token=TOKEN, storage_dir=tmp_path / "outputs"))
    try:
        client = app.test_client()
        [output] = client.get(f"/jobs/{job_id}", headers=AUTH).get_json()["outputs"]
        assert output["location"] == "local:ns/1/1/out.png" and str(tmp_path) not in str(output)
        assert output["url"] == f"http://localhost/jobs/{job_id}/outputs/0"
        whole = client.get(f"/jobs/{job_id}/outputs/0", headers=AUTH)
        assert whole.status_code == 200 and whole.data == data and whole.mimetype == "image/png"
        etag = whole.headers["ETag"]
        assert client.get(f"/jobs/{job_id}/outputs/0", headers={**AUTH, "If-None-Match": etag}).status_code == 304
        part = client.get(f"/jobs/{job_id}/outputs/0", headers={**AUTH, "Range": "bytes=8-15"})
        assert part.status_code == 206 and part.data == data[8:16]
        assert client.get(f"/jobs/{job_id}/outputs/1", headers=AUTH).status_code == 404
        assert client.get(f"/jobs/{job_id}/outputs/0").status_code == 401
        (tmp_path / "outputs" / "ns/1/1/out.png").unlink()  # removed behind the row's back
        gone = client.get(f"/jobs/{job_id}/outputs/0", headers=AUTH)
        assert gone.status_code == 404 and gone.get_json()["error"]["code"] == "output_missing"
    finally:
        app.extensions["comfyq"].db.close()
