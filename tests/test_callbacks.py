"""Completion callbacks against a real receiver and a real Postgres: signed Standard Webhooks events, retried
with one webhook-id until a 2xx or max_tries, refused for unsafe URLs, and every outcome in job_logs."""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from standardwebhooks import Webhook

from comfyq.db import Database
from comfyq.errors import ConfigurationError
from comfyq.jobs import JobQueue, NewJob
from comfyq.netguard import AddressGuard
from comfyq.worker.callbacks import CallbackSender
from tests.e2e_support import free_port, wait_until
from tests.http_servers import Receiver

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}}
OUTPUTS = [{"node_id": "9", "key": "jobs/1/a.png", "url": "http://files.test/a.png"}]


@pytest.fixture
def senders(db: Database) -> Iterator[Callable[..., CallbackSender]]:
    made: list[CallbackSender] = []

    def make(guard: AddressGuard | None = None, secret: str | None = SECRET, **kwargs: Any) -> CallbackSender:
        options: dict[str, Any] = {"max_tries": 3, "timeout": 5.0, "base_delay": 0.05, "max_delay": 0.2, **kwargs}
        made.append(CallbackSender(db, guard or AddressGuard("127.0.0.1"), secret, **options))
        return made[-1]

    yield make
    for sender in made:
        sender.close(5)


def finished_job(queue: JobQueue, url: str | None, *, fail: bool = False) -> dict[str, Any]:
    """A job row as the worker has it after its terminal transition."""
    row = queue.enqueue(NewJob(graph=GRAPH, workflow="txt2img", callback_url=url, max_attempts=1))
    claimed = queue.claim("w1")
    assert claimed is not None and claimed.id == row["id"]
    if fail:
        queue.fail_attempt(claimed.lease, {"type": "validation_error", "message": "bad graph"}, retryable=False,
                           delay_seconds=0)
    else:
        queue.complete(claimed.lease, OUTPUTS)
    job = queue.get(row["id"], "default")
    assert job is not None
    return job


def callback_logs(queue: JobQueue, job_id: int) -> list[dict[str, Any]]:
    return [r for r in queue.logs(job_id) if r["event"].startswith("callback_")]


def test_the_event_is_signed_and_verifies(queue: JobQueue, receiver: Callable[..., Receiver],
                                          senders: Callable[..., CallbackSender]) -> None:
    hook = receiver()
    job = finished_job(queue, hook.url)
    sender = senders()
    sender.notify(job)
    assert sender.close(10)

    assert len(hook.requests) == 1
    headers, body = hook.requests[0]
    assert headers["content-type"] == "application/json"
    assert headers["webhook-id"].startswith("msg_")
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    event = Webhook(SECRET).verify(body, headers)
    assert event["type"] == "job.succeeded"
    data = event["data"]
    assert set(data) == {"id", "status", "workflow", "attempts", "outputs", "error", "created_at", "started_at",
                         "finished_at"}
    assert (data["id"], data["status"], data["workflow"], data["attempts"]) == (job["id"], "succeeded", "txt2img", 1)
    assert data["outputs"] == OUTPUTS and data["error"] is None
    assert data["finished_at"] == job["finished_at"].isoformat()
    with pytest.raises(Exception, match="signature"):
        Webhook("whsec_" + base64.b64encode(os.urandom(32)).decode()).verify(body, headers)

    [logged] = callback_logs(queue, job["id"])
    assert logged["event"] == "callback_delivered" and logged["attempt"] == 1
    assert logged["details"]["url"] == hook.url
    assert logged["details"]["status"] == 200 and logged["details"]["tries"] == 1
    assert logged["details"]["webhook_id"] == headers["webhook-id"]


def test_a_receiver_failing_twice_still_gets_the_event(queue: JobQueue, receiver: Callable[..., Receiver],
                                                       senders: Callable[..., CallbackSender]) -> None:
    hook = receiver([500, 500])
    job = finished_job(queue, hook.url)
    sender = senders(max_tries=5)
    sender.notify(job)
    assert sender.close(10)

    assert len(hook.requests) == 3
    ids = {headers["webhook-id"] for headers, _ in hook.requests}
    assert len(ids) == 1
    assert len({body for _, body in hook.requests}) == 1
    for headers, body in hook.requests:
        Webhook(SECRET).verify(body, headers)
    [logged] = callback_logs(queue, job["id"])
    assert logged["event"] == "callback_delivered"
    assert logged["details"]["tries"] == 3 and logged["details"]["status"] == 200


def test_a_receiver_that_always_fails_ends_in_callback_failed(queue: JobQueue, receiver: Callable[..., Receiver],
                                                              senders: Callable[..., CallbackSender]) -> None:
    hook = receiver(default=503)
    job = finished_job(queue, hook.url, fail=True)
    sender = senders(max_tries=4)
    sender.notify(job)
    assert sender.close(10)

    assert len(hook.requests) == 4
    event = json.loads(hook.requests[0][1])
    assert event["type"] == "job.failed" and event["data"]["error"]["message"] == "bad graph"
    [logged] = callback_logs(queue, job["id"])
    assert logged["event"] == "callback_failed"
    assert logged["details"]["tries"] == 4 and logged["details"]["status"] == 503
    assert logged["details"]["reason"] == "max_tries"
    assert "HTTP 503" in logged["message"]


def test_an_unreachable_receiver_is_retried_then_failed(queue: JobQueue,
                                                        senders: Callable[..., CallbackSender]) -> None:
    job = finished_job(queue, f"http://127.0.0.1:{free_port()}/hook")
    sender = senders(max_tries=2)
    sender.notify(job)
    assert sender.close(10)
    [logged] = callback_logs(queue, job["id"])
    assert logged["event"] == "callback_failed"
    assert logged["details"]["tries"] == 2 and logged["details"]["status"] is None
    assert logged["details"]["error"] == "ConnectionError"


def test_an_unsafe_url_is_refused_and_logged(queue: JobQueue, receiver: Callable[..., Receiver],
                                             senders: Callable[..., CallbackSender]) -> None:
    hook = receiver()
    job = finished_job(queue, hook.url)
    sender = senders(guard=AddressGuard(""))
    sender.notify(job)
    assert sender.close(10)

    assert hook.requests == []
    [logged] = callback_logs(queue, job["id"])
    assert logged["event"] == "callback_failed"
    assert logged["details"]["reason"] == "unsafe_url" and logged["details"]["tries"] == 0
    assert "refusing 127.0.0.1: loopback address" in logged["message"]


def test_notify_does_not_wait_for_the_receiver(queue: JobQueue, receiver: Callable[..., Receiver],
                                               senders: Callable[..., CallbackSender]) -> None:
    hook = receiver(delay=1.0)
    job = finished_job(queue, hook.url)
    sender = senders()
    started = time.monotonic()
    sender.notify(job)
    assert time.monotonic() - started < 0.5
    wait_until(lambda: hook.requests, 5, "the callback to arrive")
    assert sender.close(10)
    assert callback_logs(queue, job["id"])[0]["event"] == "callback_delivered"


def test_close_gives_up_on_deliveries_that_outlast_it(queue: JobQueue, receiver: Callable[..., Receiver],
                                                      senders: Callable[..., CallbackSender]) -> None:
    hook = receiver(default=500)
    job = finished_job(queue, hook.url)
    sender = senders(max_tries=5, base_delay=30, max_delay=60)
    sender.notify(job)
    wait_until(lambda: hook.requests, 5, "the first try")
    started = time.monotonic()
    assert sender.close(0.3) is False
    assert time.monotonic() - started < 2
    logged = wait_until(lambda: callback_logs(queue, job["id"]), 5, "the give-up to be logged")
    assert logged[0]["event"] == "callback_failed" and logged[0]["details"]["reason"] == "shutdown"
    assert len(hook.requests) == 1


def test_without_a_secret_nothing_is_sent_and_one_warning_is_logged(
        queue: JobQueue, receiver: Callable[..., Receiver], senders: Callable[..., CallbackSender],
        caplog: pytest.LogCaptureFixture) -> None:
    hook = receiver()
    jobs = [finished_job(queue, hook.url) for _ in range(2)]
    sender = senders(secret=None)
    with caplog.at_level(logging.WARNING, logger="comfyq.worker.callbacks"):
        for job in jobs:
            sender.notify(job)
        assert sender.close(5)
    assert hook.requests == []
    warnings = [r for r in caplog.records if r.name == "comfyq.worker.callbacks"]
    assert len(warnings) == 1 and "no callback secret" in warnings[0].getMessage()
    assert all(callback_logs(queue, job["id"]) == [] for job in jobs)


def test_a_job_without_callback_url_is_ignored(queue: JobQueue, senders: Callable[..., CallbackSender]) -> None:
    job = finished_job(queue, None)
    sender = senders()
    sender.notify(job)
    assert sender.close(5)
    assert callback_logs(queue, job["id"]) == []


def test_a_partial_row_is_a_programming_error(senders: Callable[..., CallbackSender]) -> None:
    with pytest.raises(ValueError, match="full job row"):
        senders().notify({"id": 1, "status": "succeeded"})


def test_job_logs_accepts_the_callback_events_only(queue: JobQueue, sql: Any) -> None:
    job = finished_job(queue, None)
    for event in ("callback_delivered", "callback_failed"):
        sql.execute("INSERT INTO job_logs (job_id, event) VALUES (%s, %s)", (job["id"], event))
    with pytest.raises(Exception, match="job_logs_event_check"):
        sql.execute("INSERT INTO job_logs (job_id, event) VALUES (%s, 'callback_lost')", (job["id"],))


def test_a_malformed_secret_is_a_configuration_error(db: Database) -> None:
    with pytest.raises(ConfigurationError, match="whsec_"):
        CallbackSender(db, AddressGuard(""), "whsec_not base64!!", max_tries=1, timeout=1)
