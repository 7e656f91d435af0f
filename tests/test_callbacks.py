"""Completion callbacks against a real receiver and a real Postgres: signed Standard Webhooks events, retried
with one webhook-id until a 2xx or max_tries, refused for unsafe URLs, and every outcome in job_logs. Each
tenant's callbacks are signed with its own secrets only: one tenant's secret never verifies another's callbacks,
both secrets verify during a rotation, a retired one no longer does, and the signed body names the tenant."""

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

from comfyq import callback_secrets
from comfyq.callback_outbox import CallbackOutbox
from comfyq.db import Database
from comfyq.errors import ConfigurationError
from comfyq.jobs import JobQueue, NewJob
from comfyq.netguard import AddressGuard
from comfyq.worker.callbacks import CallbackSender, check_legacy_secret, store_legacy_secret
from comfyq.worker.maintenance import Maintenance
from tests.e2e_support import free_port, wait_until
from tests.http_servers import Receiver

GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}}
OUTPUTS = [{"node_id": "9", "key": "jobs/1/a.png", "url": "http://files.test/a.png"}]


@pytest.fixture
def senders(db: Database) -> Iterator[Callable[..., CallbackSender]]:
    made: list[CallbackSender] = []

    def make(guard: AddressGuard | None = None, **kwargs: Any) -> CallbackSender:
        options: dict[str, Any] = {"max_tries": 3, "timeout": 5.0, "base_delay": 0.05, "max_delay": 0.2, **kwargs}
        made.append(CallbackSender(db, guard or AddressGuard("127.0.0.1"), **options))
        return made[-1]

    yield make
    for sender in made:
        sender.close(5)


def new_secret(db: Database, tenant: str) -> str:
    """A new active callback secret of the tenant, as the API makes it."""
    db.execute("tenant_ensure", {"name": tenant})
    created = callback_secrets.create(db, tenant)
    assert created is not None
    return created.secret


@pytest.fixture
def secret(db: Database) -> str:
    """The signing secret of tenant `default`, whose jobs most tests here finish."""
    return new_secret(db, "default")


def finished_job(queue: JobQueue, url: str | None, *, fail: bool = False, tenant: str = "default") -> dict[str, Any]:
    """A job row as the worker has it after its terminal transition."""
    row = queue.enqueue(NewJob(graph=GRAPH, workflow="txt2img", callback_url=url, max_attempts=1, tenant=tenant))
    claimed = queue.claim("w1")
    assert claimed is not None and claimed.id == row["id"]
    if fail:
        queue.fail_attempt(claimed.lease, {"type": "validation_error", "message": "bad graph"}, retryable=False,
                           delay_seconds=0)
    else:
        queue.complete(claimed.lease, OUTPUTS)
    job = queue.get(row["id"], tenant)
    assert job is not None
    return job


def delivered(sender: CallbackSender, hook: Receiver, job: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    """Send one job's callback and return what the receiver got."""
    before = len(hook.requests)
    sender.notify(job)
    wait_until(lambda: len(hook.requests) > before, 10, "the callback")
    return hook.requests[-1]


def verifies(secret: str, request: tuple[dict[str, str], bytes]) -> bool:
    headers, body = request
    try:
        Webhook(secret).verify(body, headers)
    except Exception:
        return False
    return True


def callback_logs(queue: JobQueue, job_id: int) -> list[dict[str, Any]]:
    return [r for r in queue.logs(job_id) if r["event"].startswith("callback_")]


def test_the_event_is_signed_and_verifies(queue: JobQueue, receiver: Callable[..., Receiver], secret: str,
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
    event = Webhook(secret).verify(body, headers)
    assert event["type"] == "job.succeeded"
    data = event["data"]
    assert set(data) == {"id", "tenant", "status", "workflow", "attempts", "outputs", "error", "created_at",
                         "started_at", "finished_at"}
    assert data["tenant"] == "default"
    assert len(headers["webhook-signature"].split(" ")) == 1  # one active secret, one signature
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


def test_a_receiver_failing_twice_still_gets_the_event(queue: JobQueue, receiver: Callable[..., Receiver], secret: str,
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
        Webhook(secret).verify(body, headers)
    [logged] = callback_logs(queue, job["id"])
    assert logged["event"] == "callback_delivered"
    assert logged["details"]["tries"] == 3 and logged["details"]["status"] == 200


@pytest.mark.usefixtures("secret")
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


@pytest.mark.usefixtures("secret")
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


@pytest.mark.usefixtures("secret")
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


@pytest.mark.usefixtures("secret")
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


@pytest.mark.usefixtures("secret")
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


def test_a_malformed_legacy_secret_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"COMFYQ_CALLBACK_SECRET: .*whsec_"):
        check_legacy_secret("whsec_not base64!!")
    check_legacy_secret(None)
    check_legacy_secret("whsec_" + base64.b64encode(os.urandom(32)).decode())


# One tenant's secrets sign only that tenant's callbacks --------------------------------------------------------
def test_a_tenants_secret_does_not_verify_another_tenants_callbacks(
        db: Database, queue: JobQueue, receiver: Callable[..., Receiver],
        senders: Callable[..., CallbackSender]) -> None:
    """The security review's finding: with one secret for all, a tenant that could verify its own callbacks could
    sign events to any other tenant's receiver."""
    secret_a, secret_b = new_secret(db, "tenant-a"), new_secret(db, "tenant-b")
    hook = receiver()
    sender = senders()
    to_a = delivered(sender, hook, finished_job(queue, hook.url, tenant="tenant-a"))
    to_b = delivered(sender, hook, finished_job(queue, hook.url, tenant="tenant-b"))
    assert verifies(secret_a, to_a) and not verifies(secret_b, to_a)
    assert verifies(secret_b, to_b) and not verifies(secret_a, to_b)
    assert [json.loads(body)["data"]["tenant"] for _, body in (to_a, to_b)] == ["tenant-a", "tenant-b"]


def test_the_tenant_is_part_of_what_is_signed(db: Database, queue: JobQueue, receiver: Callable[..., Receiver],
                                              senders: Callable[..., CallbackSender]) -> None:
    """A receiver that checks data.tenant can trust it: changing it breaks the signature."""
    secret = new_secret(db, "tenant-a")
    hook = receiver()
    headers, body = delivered(senders(), hook, finished_job(queue, hook.url, tenant="tenant-a"))
    assert Webhook(secret).verify(body, headers)["data"]["tenant"] == "tenant-a"
    forged = body.replace(b'"tenant":"tenant-a"', b'"tenant":"tenant-b"')
    assert forged != body and not verifies(secret, (headers, forged))


def test_during_a_rotation_both_secrets_verify_and_after_retiring_only_the_new_one(
        db: Database, queue: JobQueue, receiver: Callable[..., Receiver],
        senders: Callable[..., CallbackSender]) -> None:
    old = new_secret(db, "acme")
    hook = receiver()
    sender = senders()
    before = delivered(sender, hook, finished_job(queue, hook.url, tenant="acme"))
    assert verifies(old, before)

    new = new_secret(db, "acme")
    during = delivered(sender, hook, finished_job(queue, hook.url, tenant="acme"))
    assert len(during[0]["webhook-signature"].split(" ")) == 2
    assert verifies(old, during) and verifies(new, during)
    assert not verifies(new, before)

    [old_row] = [row for row in callback_secrets.list_secrets(db, "acme") if old.startswith(row["secret_prefix"])]
    assert callback_secrets.retire(db, "acme", old_row["id"]) is not None
    after = delivered(sender, hook, finished_job(queue, hook.url, tenant="acme"))
    assert len(after[0]["webhook-signature"].split(" ")) == 1
    assert verifies(new, after) and not verifies(old, after)


def test_a_tenant_without_an_active_secret_gets_no_callbacks_until_it_has_one(
        db: Database, queue: JobQueue, receiver: Callable[..., Receiver], senders: Callable[..., CallbackSender],
        caplog: pytest.LogCaptureFixture) -> None:
    """Unsigned events could be forged by anyone who knows the receiver's URL: they wait in the outbox instead,
    and the worker names the tenant now and then."""
    hook = receiver()
    job = finished_job(queue, hook.url, tenant="acme")
    outbox = CallbackOutbox(db)
    assert outbox.claim_due(reclaim_seconds=600, limit=10) == []
    assert [(row["tenant"], row["waiting"]) for row in outbox.waiting_for_secret()] == [("acme", 1)]
    maintenance = Maintenance(db, queue, "w1", heartbeat_seconds=60, rescue_seconds=60, callbacks=senders())
    with caplog.at_level(logging.WARNING, logger="comfyq.worker.maintenance"):
        maintenance.deliver_callbacks()
        maintenance.deliver_callbacks()  # named once, not on every tick
    [warning] = [r.getMessage() for r in caplog.records if r.name == "comfyq.worker.maintenance"]
    assert "1 callbacks of tenant acme wait" in warning

    secret = new_secret(db, "acme")
    maintenance.deliver_callbacks()
    wait_until(lambda: hook.requests, 10, "the callback once the tenant has a secret")
    assert verifies(secret, hook.requests[0]) and json.loads(hook.requests[0][1])["data"]["id"] == job["id"]
    assert outbox.waiting_for_secret() == []


def test_a_callback_whose_last_secret_is_retired_before_it_is_sent_waits_again(
        db: Database, queue: JobQueue, receiver: Callable[..., Receiver],
        senders: Callable[..., CallbackSender]) -> None:
    secret = new_secret(db, "acme")
    hook = receiver()
    job = finished_job(queue, hook.url, tenant="acme")
    [claimed] = CallbackOutbox(db).claim_due(reclaim_seconds=600, limit=10)
    [row] = callback_secrets.list_secrets(db, "acme")
    callback_secrets.retire(db, "acme", row["id"])
    sender = senders()
    sender.notify(claimed)
    assert sender.close(5)
    assert hook.requests == [] and callback_logs(queue, job["id"]) == []
    after = queue.get(job["id"], "acme")
    assert after is not None and after["callback_state"] == "pending"
    assert secret.startswith(row["secret_prefix"])


# COMFYQ_CALLBACK_SECRET, deprecated --------------------------------------------------------------------------------
def test_the_legacy_setting_is_stored_once_for_the_bootstrap_tenant_only(
        db: Database, queue: JobQueue, receiver: Callable[..., Receiver],
        senders: Callable[..., CallbackSender], caplog: pytest.LogCaptureFixture) -> None:
    """A deployment that signed with COMFYQ_CALLBACK_SECRET keeps its `default` receivers verifying after the
    upgrade; other tenants never get it; and a retired one is not brought back by the next worker start."""
    legacy = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    with caplog.at_level(logging.WARNING, logger="comfyq.worker.callbacks"):
        store_legacy_secret(db, "default", legacy)
        store_legacy_secret(db, "default", legacy)  # every worker start
        store_legacy_secret(db, "default", "whsec_" + base64.b64encode(os.urandom(32)).decode())  # another worker's
    messages = [r.getMessage() for r in caplog.records if r.name == "comfyq.worker.callbacks"]
    assert "deprecated: stored as callback secret" in messages[0] and all("ignored" in m for m in messages[1:])
    assert all(legacy not in m for m in messages)
    [row] = callback_secrets.list_secrets(db, "default")
    assert (row["source"], row["retired_at"]) == ("setting", None) and legacy.startswith(row["secret_prefix"])

    hook = receiver()
    sender = senders()
    assert verifies(legacy, delivered(sender, hook, finished_job(queue, hook.url)))
    other = new_secret(db, "acme")
    to_acme = delivered(sender, hook, finished_job(queue, hook.url, tenant="acme"))
    assert verifies(other, to_acme) and not verifies(legacy, to_acme)

    callback_secrets.retire(db, "default", row["id"])
    store_legacy_secret(db, "default", legacy)
    assert [r["retired_at"] is not None for r in callback_secrets.list_secrets(db, "default")] == [True]
