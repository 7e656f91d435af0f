"""Tells a job's callback_url how the job ended (signed Standard Webhooks, retried with backoff) on background
threads, so a slow or dead receiver never holds up the worker."""

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

from comfyq.backoff import retry_delay
from comfyq.callback_outbox import CallbackOutbox
from comfyq.db import Database
from comfyq.errors import ConfigurationError, DatabaseError
from comfyq.netguard import AddressGuard, UnsafeUrl, display_url

log = logging.getLogger(__name__)

EVENT_FIELDS = ("id", "status", "workflow", "attempts", "outputs", "error", "created_at", "started_at",
                "finished_at")


@dataclass(frozen=True)
class Delivery:
    """One event for one URL; the body and webhook id stay the same across its tries."""

    job_id: int
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
    """The JSON event: {"type": "job.<status>", "timestamp", "data": {id, status, ...}}."""
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

    Without a secret (COMFYQ_CALLBACK_SECRET) no callback is sent: unsigned events could be forged by anyone
    who knows the receiver's URL. One warning is logged, the first time a job with a callback_url ends."""

    def __init__(self, db: Database, guard: AddressGuard, secret: str | None, *, max_tries: int, timeout: float,
                 base_delay: float = 1.0, max_delay: float = 60.0, workers: int = 2) -> None:
        if max_tries < 1 or workers < 1:
            raise ValueError("max_tries and workers must be at least 1")
        try:
            self._webhook = Webhook(secret) if secret else None
        except Exception as exc:  # binascii.Error, EmptyWebhookSecretError
            raise ConfigurationError(f"the callback secret is not 'whsec_' + base64: {exc}") from exc
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
        self._warned = False
        self._threads = [threading.Thread(target=self._run, name=f"callbacks-{n}", daemon=True)
                         for n in range(workers)]
        for thread in self._threads:
            thread.start()

    @property
    def enabled(self) -> bool:
        """False without a secret: pending callbacks then wait in the outbox for a worker that has one."""
        return self._webhook is not None

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
            if self._webhook is None:
                if not self._warned:
                    self._warned = True
                    log.warning("job %s has a callback_url but no callback secret is set; callbacks are not "
                                "sent", job_row.get("id"), extra={"action": "callback_disabled"})
                return
            if self._closed:
                log.warning("callback of job %s dropped: the sender is closed", job_row.get("id"),
                            extra={"action": "callback_dropped"})
                return
            self._queue.put(Delivery(job_id=int(job_row["id"]), attempt=int(job_row.get("attempts") or 0),
                                     url=str(url), webhook_id=webhook_id(job_row), body=event_body(job_row)))

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
        """One signed POST; returns the HTTP status. The timestamp (and so the signature) is per try."""
        assert self._webhook is not None
        now = datetime.now(UTC)
        headers = {"webhook-id": delivery.webhook_id, "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": self._webhook.sign(delivery.webhook_id, now, delivery.body),
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
            except (requests.RequestException, OSError) as exc:
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
