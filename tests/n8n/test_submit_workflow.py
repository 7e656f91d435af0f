"""The `submit` workflow in a real n8n: POST /webhook/comfyq/jobs with the header key, forwarded to the real API
(one job to /jobs, an array to /jobs/batch), processed by a real worker against the ComfyUI stand-in; the API's
answers, 4xx included, come back unchanged; without the key nothing gets through. With ?wait=SECONDS a single job
goes through a real events process (`comfyq events`) and the answer comes at its end (200) or when the wait ends
(202); a bad wait is refused before anything is submitted, and an events process that is down gets an answer that
says whether the job was submitted."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from comfyq.db import connect_once
from comfyq.processes import ManagedProcess
from comfyq.stack import start_standin, start_worker
from tests.e2e_support import wait_until
from tests.n8n.conftest import N8n, api_session
from tests.support.events_client import start_events

pytestmark = [pytest.mark.n8n, pytest.mark.slow]

PARAMS: dict[str, Any] = {"prompt": "a lighthouse at dawn", "steps": 4, "width": 64, "height": 64}
JOB: dict[str, Any] = {"workflow": "txt2img", "params": PARAMS}


def jobs_in_db(n8n: N8n) -> list[dict[str, Any]]:
    conn = connect_once(n8n.db_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, tenant, status, params, outputs FROM job_queue ORDER BY id")
            return [dict(zip(("id", "tenant", "status", "params", "outputs"), row)) for row in cur.fetchall()]
    finally:
        conn.close()


def submit(n8n: N8n, body: Any, headers: dict[str, str] | None = None, key: str | None = "",
           params: dict[str, Any] | None = None) -> requests.Response:
    sent = dict(headers or {})
    if key is not None:
        sent["X-Comfyq-Key"] = key or n8n.webhook_key
    return requests.post(n8n.webhook("comfyq/jobs"), json=body, headers=sent, params=params, timeout=90)


@pytest.fixture
def worker(fresh: N8n) -> Iterator[ManagedProcess]:
    """The stand-in and one worker, for this test only (other tests need jobs to stay queued)."""
    standin, comfy_url = start_standin(fresh.log_dir, fresh.storage_dir.parent / "comfyui-output")
    try:
        proc = start_worker(fresh.log_dir, {
            "DATABASE_URL": fresh.db_url, "COMFYUI_URL": comfy_url, "COMFYQ_STORAGE_DIR": str(fresh.storage_dir),
            "COMFYQ_POLL_INTERVAL_SECONDS": "1", "COMFYQ_HEARTBEAT_SECONDS": "0.5", "PYTHONUNBUFFERED": "1"})
        try:
            yield proc
        finally:
            proc.stop(timeout=15)
    finally:
        standin.stop(timeout=10)


def test_a_job_submitted_through_n8n_is_processed_to_success(fresh: N8n, worker: ManagedProcess) -> None:
    response = submit(fresh, JOB)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and isinstance(body["id"], int)

    def finished() -> dict[str, Any] | None:
        rows = [row for row in jobs_in_db(fresh) if row["id"] == body["id"]]
        return rows[0] if rows and rows[0]["status"] in ("succeeded", "failed") else None

    row = wait_until(finished, 60, "the job to finish")
    assert row["status"] == "succeeded" and row["tenant"] == "n8n"
    assert row["params"]["prompt"] == "a lighthouse at dawn"
    [output] = row["outputs"]
    assert (fresh.storage_dir / output["key"]).read_bytes()[:4] == b"\x89PNG"
    assert len(jobs_in_db(fresh)) == 1


@pytest.mark.parametrize("body", [
    {"workflow": "txt2img", "params": {"prompt": "x"}, "priority": 99999},
    {"workflow": "no-such-template", "params": {}},
    {"workflow": "txt2img", "params": {"prompt": "x", "steps": 0}},
    {"graph": {"1": {"class_type": "EmptyImage", "inputs": {}}}},
], ids=["priority", "unknown-workflow", "bad-param", "raw-graph-refused"])
def test_a_bad_submission_gets_the_api_answer_unchanged_and_writes_nothing(fresh: N8n, body: dict[str, Any]) -> None:
    direct = api_session(fresh).post(f"{fresh.api_url}/jobs", json=body, timeout=10)
    assert 400 <= direct.status_code < 500
    through = submit(fresh, body)
    assert through.status_code == direct.status_code
    assert through.json() == direct.json() and set(through.json()["error"]) == {"code", "message", "details"}
    assert jobs_in_db(fresh) == []


@pytest.mark.parametrize("key", [None, "wrong-key", ""], ids=["no-header", "wrong-key", "right-key"])
def test_the_header_key_is_required(fresh: N8n, key: str | None) -> None:
    response = submit(fresh, JOB, key=key)
    if key == "":  # the right key: the control case
        assert response.status_code == 202
        assert len(jobs_in_db(fresh)) == 1
    else:
        assert response.status_code in (401, 403), response.text
        assert jobs_in_db(fresh) == []


def test_an_array_goes_through_the_batch_endpoint(fresh: N8n) -> None:
    jobs = [{**JOB, "params": {**PARAMS, "prompt": f"prompt {i}"}} for i in range(3)]
    response = submit(fresh, jobs)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["count"] == 3 and [j["status"] for j in body["jobs"]] == ["queued"] * 3  # /jobs/batch's answer
    rows = jobs_in_db(fresh)
    assert [r["id"] for r in rows] == [j["id"] for j in body["jobs"]]
    assert [r["params"]["prompt"] for r in rows] == ["prompt 0", "prompt 1", "prompt 2"]

    as_object = submit(fresh, {"jobs": jobs[:1]})  # the API's own batch shape works too
    assert as_object.status_code == 202 and as_object.json()["count"] == 1

    bad = submit(fresh, [jobs[0], {"workflow": "txt2img", "params": {"prompt": "x", "steps": 0}}])
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_batch_items"
    assert bad.json()["error"]["details"]["items"][0]["index"] == 1
    assert len(jobs_in_db(fresh)) == 4


def test_the_idempotency_key_is_forwarded(fresh: N8n) -> None:
    first = submit(fresh, JOB, headers={"Idempotency-Key": "order-17"})
    again = submit(fresh, JOB, headers={"Idempotency-Key": "order-17"})
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["id"] == again.json()["id"]
    assert len(jobs_in_db(fresh)) == 1


def test_a_body_that_is_not_json_gets_a_clean_error(fresh: N8n) -> None:
    response = requests.post(fresh.webhook("comfyq/jobs"), data=b'{"workflow": "txt2img", "params": {',
                             headers={"X-Comfyq-Key": fresh.webhook_key, "Content-Type": "application/json"},
                             timeout=30)
    assert response.status_code == 422
    body = response.json()
    assert body["message"] == "Failed to parse request body"
    assert "stacktrace" not in body and "/node_modules/" not in response.text and "at " not in body["message"]
    assert jobs_in_db(fresh) == []


class EventsProcess:
    """`comfyq events` on the port of the n8n settings' events_url, against the session's database and API; a test
    may stop it (the next test that needs it starts it again)."""

    def __init__(self, n8n: N8n) -> None:
        self.n8n = n8n
        self.proc: ManagedProcess | None = None

    def ensure_running(self) -> None:
        if self.proc is None or not self.proc.running():
            self.proc, url = start_events(self.n8n.log_dir, {
                "DATABASE_URL": self.n8n.db_url, "COMFYQ_EVENTS_API_URL": self.n8n.api_url,
                "COMFYQ_STORAGE_DIR": str(self.n8n.storage_dir)}, bind=urlsplit(self.n8n.events_url).netloc)
            assert url == self.n8n.events_url

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=15)
            self.proc = None


@pytest.fixture(scope="module")
def events_process(n8n: N8n) -> Iterator[EventsProcess]:
    events = EventsProcess(n8n)
    try:
        yield events
    finally:
        events.stop()


@pytest.fixture
def events(fresh: N8n, events_process: EventsProcess) -> EventsProcess:
    """The events process, running."""
    events_process.ensure_running()
    return events_process


def test_a_wait_answers_200_with_the_job_once_it_succeeded(fresh: N8n, events: EventsProcess,
                                                           worker: ManagedProcess) -> None:
    response = submit(fresh, JOB, params={"wait": "60"})
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "succeeded" and job["workflow"] == "txt2img" and job["finished_at"]
    assert job["params"]["prompt"] == PARAMS["prompt"] and job["outputs"][0]["url"]
    [row] = jobs_in_db(fresh)
    assert (row["id"], row["status"], row["tenant"]) == (job["id"], "succeeded", "n8n")


def test_a_wait_that_ends_first_answers_202_with_the_current_state(fresh: N8n, events: EventsProcess) -> None:
    started = time.monotonic()
    response = submit(fresh, JOB, headers={"Idempotency-Key": "wait-1"}, params={"wait": "1.5"})
    took = time.monotonic() - started
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued" and job["workflow"] == "txt2img" and job["finished_at"] is None
    assert 1.5 <= took < 15, f"answered after {took:.2f}s"
    again = submit(fresh, JOB, headers={"Idempotency-Key": "wait-1"}, params={"wait": "0"})  # a retry: no new job
    assert again.status_code == 202 and again.json()["id"] == job["id"]
    assert [row["id"] for row in jobs_in_db(fresh)] == [job["id"]]


@pytest.mark.parametrize("wait", ["abc", "-1", "", "1e3", "NaN", "5s", " 5", ["1", "2"]],
                         ids=["word", "negative", "empty", "exponent", "nan", "unit", "space", "twice"])
def test_a_bad_wait_is_refused_with_400_and_submits_nothing(fresh: N8n, events: EventsProcess,
                                                           wait: str | list[str]) -> None:
    response = submit(fresh, JOB, params={"wait": wait})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_wait" and "number of seconds" in error["message"]
    assert jobs_in_db(fresh) == []


def test_a_wait_on_a_batch_is_refused_with_400_and_submits_nothing(fresh: N8n, events: EventsProcess) -> None:
    for body in ([JOB, JOB], {"jobs": [JOB]}):
        response = submit(fresh, body, params={"wait": "5"})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "wait_not_for_batches" and "single job" in error["message"]
    assert jobs_in_db(fresh) == []
    assert submit(fresh, [JOB, JOB]).status_code == 202  # the control: the same batch without wait
    assert len(jobs_in_db(fresh)) == 2


def test_with_the_events_process_down_a_wait_says_whether_the_job_was_submitted(
        fresh: N8n, events_process: EventsProcess) -> None:
    events_process.stop()
    refused = submit(fresh, JOB, params={"wait": "5"})
    assert refused.status_code == 503, refused.text
    error = refused.json()["error"]
    assert error["code"] == "events_unreachable" and error["details"]["submitted"] is False
    assert jobs_in_db(fresh) == []  # the answer is true: nothing was submitted

    plain = submit(fresh, JOB)  # without wait the events process is not involved: as before
    direct = api_session(fresh).post(f"{fresh.api_url}/jobs", json=JOB, timeout=10)
    assert plain.status_code == direct.status_code == 202 and set(plain.json()) == set(direct.json())
    assert len(jobs_in_db(fresh)) == 2

    # Something that takes the connection and drops it without an answer: the submission may have gone through.
    host, port = urlsplit(fresh.events_url).netloc.split(":")
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, int(port)))
        listener.listen()
        dropper = threading.Thread(target=_drop_one_request, args=(listener,), daemon=True)
        dropper.start()
        dropped = submit(fresh, JOB, params={"wait": "5"})
        dropper.join(10)
    assert dropped.status_code == 502, dropped.text
    error = dropped.json()["error"]
    assert error["code"] == "events_no_answer" and error["details"]["submitted"] == "unknown"
    assert "Idempotency-Key" in error["message"]


def _drop_one_request(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(5)
        conn.recv(65536)
