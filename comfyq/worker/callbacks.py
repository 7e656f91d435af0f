"""Tells a job's callback_url how the job ended (signed Standard Webhooks, retried with backoff) on background
threads, so a slow or dead receiver never holds up the worker. Each tenant's callbacks are signed with that
tenant's own secrets (comfyq.callback_secrets), and the event names the tenant, so a tenant that can verify its
own callbacks can neither sign nor replay one for another tenant's receiver."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import requests
from standardwebhooks import Webhook

from comfyq import callback_secrets
from comfyq.backoff import retry_delay
from comfyq.callback_outbox import CallbackOutbox
from comfyq.db import Database
from comfyq.errors import ConfigurationError, DatabaseError
from comfyq.netguard import AddressGuard, UnsafeUrl, display_url

log = logging.getLogger(__name__)

EVENT_FIELDS = ("id", "tenant", "status", "workflow", "attempts", "outputs", "error", "created_at", "started_at",
                "finished_at")


def check_legacy_secret(secret: str | None) -> None:
    """COMFYQ_CALLBACK_SECRET, when set, must be a secret Standard Webhooks libraries take."""
    if secret:
        try:
            callback_secrets.check_format(secret)
        except ValueError as exc:
            raise ConfigurationError(f"COMFYQ_CALLBACK_SECRET: {exc}") from None


def store_legacy_secret(db: Database, tenant: str, secret: str) -> None:
    """COMFYQ_CALLBACK_SECRET signed every tenant's callbacks before each tenant had secrets of its own. It is
    deprecated: the first worker that starts with it stores it as the callback secret of the bootstrap tenant
    (COMFYQ_API_TENANT, `default`) if that tenant has never had one, so that tenant's receivers keep verifying
    after an upgrade; other tenants get secrets of their own. From then on the database's secrets sign, and the
    setting is ignored."""
    row = callback_secrets.seed_from_setting(db, tenant, secret)
    if row is not None:
        log.warning("COMFYQ_CALLBACK_SECRET is deprecated: stored as callback secret %s (%s...) of tenant %s, which "
                    "now signs that tenant's callbacks only; rotate it with `comfyq tenant callback-secret` and unset "
                    "the variable", row["id"], row["secret_prefix"], tenant, extra={"action": "callback_secret_seed"})
    else:
        log.warning("COMFYQ_CALLBACK_SECRET is deprecated and ignored: tenant %s has callback secrets in the "
                    "database (`comfyq tenant callback-secret list %s`); unset the variable", tenant, tenant,
                    extra={"action": "callback_secret_seed"})


class NoSecret(Exception):
    """The tenant's last active secret was retired after its callback was claimed."""


@dataclass(frozen=True)
class Delivery:
    """One event for one URL; the body and webhook id stay the same across its tries."""

    job_id: int
    tenant: str  # whose secrets sign it
    attempt: int
    url: str
    webhook_id: str
    body: str


def _json_value(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return str(value)


def event_body(job_row: dict[str, Any], now: datetime | None = None) -> str:
    """The JSON event: {"type": "job.<status>", "timestamp", "data": {id, tenant, status, ...}}. The tenant is
    in the signed body, so a receiver can check that an event is about its own tenant's job."""
    event = {"type": f"job.{job_row['status']}", "timestamp": (now or datetime.now(UTC)).isoformat(),
             "data": {key: job_row.get(key) for key in EVENT_FIELDS}}
    return json.dumps(event, default=_json_value, separators=(",", ":"))


def webhook_id(job_row: dict[str, Any]) -> str:
    """Stable for one final state of one job: a redelivery by another worker after a crash carries the same
    id, so receivers can drop duplicates; a retried job that ends again gets a new one."""
    finished = job_row.get("finished_at")
    stamp = int(finished.timestamp() * 1000) if isinstance(finished, datetime) else 0
    return f"msg_job{job_row['id']}_{job_row.get('status')}_{stamp}"


class CallbackSender:
    """notify(row) queues an event for row["callback_url"] and returns at once; `workers` daemon threads
    deliver. A 2xx answer is delivered; anything else, a redirect or a connection error is tried again after
    a capped, jittered exponential delay, up to max_tries. The guard applies to every try (an unsafe URL is
    never sent). Every outcome is one job_logs row (callback_delivered / callback_failed).

    Each try is signed with the secrets the job's tenant has active at that moment, one signature per secret
    (during a rotation the old and the new one both verify; a retired one signs nothing more). Unsigned events
    could be forged by anyone who knows the receiver's URL, so a tenant without an active secret gets none: its
    callbacks are not claimed (claim_callbacks), and one whose last secret is retired mid-delivery goes back to
    wait, unlogged."""

    def __init__(self, db: Database, guard: AddressGuard, *, max_tries: int, timeout: float,
                 base_delay: float = 1.0, max_delay: float = 60.0, workers: int = 2) -> None:
        if max_tries < 1 or workers < 1:
            raise ValueError("max_tries and workers must be at least 1")
        self.db = db
        self.outbox = CallbackOutbox(db)
        self.guard = guard
        self.max_tries = max_tries
        self.timeout = timeout
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._queue: queue.Queue[Delivery | None] = queue.Queue()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._closed = False
        self._threads = [threading.Thread(target=self._run, name=f"callbacks-{n}", daemon=True)
                         for n in range(workers)]
        for thread in self._threads:
            thread.start()

    def notify(self, job_row: dict[str, Any]) -> None:
        """Queue the event of a job that reached a terminal state; a row whose callback_url is null is ignored.
        job_row is the full job_queue row (get_job); a partial one (complete_job returns only id and status)
        raises ValueError rather than silently sending nothing or an event with holes."""
        missing = [key for key in (*EVENT_FIELDS, "callback_url") if key not in job_row]
        if missing:
            raise ValueError(f"notify needs the full job row; missing {', '.join(missing)}")
        url = job_row["callback_url"]
        if not url:
            return
        with self._lock:
            if self._closed:
                log.warning("callback of job %s dropped: the sender is closed", job_row.get("id"),
                            extra={"action": "callback_dropped"})
                return
            self._queue.put(Delivery(job_id=int(job_row["id"]), tenant=str(job_row["tenant"]),
                                     attempt=int(job_row.get("attempts") or 0), url=str(url),
                                     webhook_id=webhook_id(job_row), body=event_body(job_row)))

    def close(self, timeout: float = 30.0) -> bool:
        """Stop taking events and wait up to timeout for queued and in-flight deliveries. True when all
        finished; otherwise the rest give up at their next wait (and are logged as callback_failed)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                for _ in self._threads:
                    self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self._threads):
            self._stop.set()
            log.warning("callback deliveries still running after %.1fs; giving up on them", timeout,
                        extra={"action": "callback_close"})
            return False
        return True

    def _run(self) -> None:
        session = self.guard.session()
        try:
            while (delivery := self._queue.get()) is not None:
                try:
                    self._deliver(session, delivery)
                except Exception:
                    log.exception("callback delivery of job %s crashed", delivery.job_id,
                                  extra={"action": "callback_error"})
        finally:
            session.close()

    def _send(self, session: requests.Session, delivery: Delivery) -> int:
        """One signed POST; returns the HTTP status. The timestamp (and so the signature) is per try, and so are
        the secrets: a rotation or a retirement applies from the next try on."""
        secrets = callback_secrets.signing_secrets(self.db, delivery.tenant)
        if not secrets:
            raise NoSecret(delivery.tenant)
        now = datetime.now(UTC)
        signature = " ".join(Webhook(secret).sign(delivery.webhook_id, now, delivery.body) for secret in secrets)
        headers = {"webhook-id": delivery.webhook_id, "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": signature,
                   "Content-Type": "application/json", "User-Agent": "comfyq-callbacks"}
        response = self.guard.request(session, "POST", delivery.url, data=delivery.body.encode("utf-8"),
                                      headers=headers, timeout=self.timeout, stream=True)
        response.close()  # the receiver's body is not needed, and need not be read
        return response.status_code

    def _deliver(self, session: requests.Session, delivery: Delivery) -> None:
        tries, status, error = 0, None, ""
        while tries < self.max_tries and not self._stop.is_set():
            try:
                status, error = self._send(session, delivery), ""
            except UnsafeUrl as exc:
                self._record(delivery, "callback_failed", f"refused: {exc.message}", status=None, tries=tries,
                             reason="unsafe_url")
                return
            except NoSecret:
                self._wait_for_secret(delivery)
                return
            except (requests.RequestException, OSError, DatabaseError) as exc:  # DatabaseError: reading the secrets
                status, error = None, exc.__class__.__name__
            tries += 1
            if status is not None and 200 <= status < 300:
                self._record(delivery, "callback_delivered", f"delivered (HTTP {status}) on try {tries}", status=status,
                             tries=tries)
                return
            if tries < self.max_tries:
                self._stop.wait(retry_delay(tries, self.base_delay, self.max_delay))
        last = f"HTTP {status}" if status is not None else error or "not sent"
        reason = "shutdown" if tries < self.max_tries else "max_tries"
        self._record(delivery, "callback_failed", f"gave up after {tries} tries ({reason}); last: {last}",
                     status=status, tries=tries, reason=reason, **({"error": error} if error else {}))

    def _wait_for_secret(self, delivery: Delivery) -> None:
        log.warning("callback of job %s not sent: tenant %s has no active callback secret any more; it waits for "
                    "one", delivery.job_id, delivery.tenant, extra={"action": "callback_no_secret"})
        try:
            self.outbox.release(delivery.job_id)
        except DatabaseError:  # left 'sending': another worker takes it over after the reclaim timeout
            log.warning("could not put the callback of job %s back to wait", delivery.job_id, exc_info=True,
                        extra={"action": "callback_log_failed"})

    def _record(self, delivery: Delivery, event: str, message: str, *, status: int | None, tries: int,
                **extra: Any) -> None:
        details = {"url": display_url(delivery.url), "status": status, "tries": tries,
                   "webhook_id": delivery.webhook_id, **extra}
        level = logging.INFO if event == "callback_delivered" else logging.WARNING
        log.log(level, "callback of job %s to %s: %s", delivery.job_id, details["url"], message,
                extra={"action": event})
        state = "delivered" if event == "callback_delivered" else "pending" if extra.get("reason") == "shutdown" \
            else "failed"
        try:
            self.outbox.record(delivery.job_id, event=event, state=state, attempt=delivery.attempt, message=message,
                               details=details)
        except DatabaseError:
            log.warning("could not record the callback outcome of job %s", delivery.job_id, exc_info=True,
                        extra={"action": "callback_log_failed"})
