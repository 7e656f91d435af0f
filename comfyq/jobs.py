"""The queue core: every job state transition, each one named query and one round trip."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from comfyq import jsonio
from comfyq.db import Database, Listener, Row
from comfyq.errors import ComfyqError
from comfyq.transport import AskPostgres, Message, PostgresTransport, Transport

log = logging.getLogger(__name__)

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled", "expired"})
STATUSES = frozenset({"queued", "running"}) | TERMINAL_STATUSES


@dataclass(frozen=True)
class NewJob:
    """What a caller submits; the graph is already rendered and validated."""

    graph: dict[str, Any]
    workflow: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    max_attempts: int = 3
    tenant: str = "default"
    timeout_seconds: int | None = None
    deadline: datetime | None = None
    run_at: datetime | None = None
    idempotency_key: str | None = None
    callback_url: str | None = None
    dedupe_hash: str | None = None

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "graph": self.graph, "workflow": self.workflow, "params": self.params, "priority": self.priority,
            "max_attempts": self.max_attempts, "tenant": self.tenant, "timeout_seconds": self.timeout_seconds,
            "idempotency_key": self.idempotency_key, "callback_url": self.callback_url,
            "dedupe_hash": self.dedupe_hash,
        }
        if self.deadline is not None:
            row["deadline"] = self.deadline.isoformat()
        if self.run_at is not None:
            row["run_at"] = self.run_at.isoformat()
        return row


class IdempotencyConflict(ComfyqError):
    """The Idempotency-Key was used before with a different request."""


@dataclass(frozen=True)
class Submission:
    rows: list[Row]
    replayed: bool  # True: the key was seen before and these are the jobs it created then


@dataclass(frozen=True)
class Lease:
    """The right of one worker to finish one attempt of one job; every write after claim is fenced by it."""

    job_id: int
    attempt: int
    worker_id: str

    def fence(self) -> dict[str, Any]:
        return {"id": self.job_id, "attempt": self.attempt, "worker_id": self.worker_id}


@dataclass(frozen=True)
class ClaimedJob:
    lease: Lease
    graph: dict[str, Any]
    workflow: str | None
    priority: int
    max_attempts: int
    timeout_seconds: int | None
    row: Row

    @property
    def id(self) -> int:
        return self.lease.job_id

    @property
    def attempt(self) -> int:
        return self.lease.attempt


class JobQueue:
    """Postgres-backed queue operations shared by the API, the workers and the CLI. The transport decides which
    job a worker tries next (comfyq/transport.py); every claim and state change happens here, in Postgres, either
    way."""

    def __init__(self, db: Database, *, lease_seconds: float = 60.0, transport: Transport | None = None) -> None:
        self.db = db
        self.lease_seconds = lease_seconds
        self.transport = transport if transport is not None else PostgresTransport()

    # Submission ---------------------------------------------------------------------------------------
    def enqueue(self, job: NewJob) -> Row:
        return self.enqueue_many([job])[0]

    def enqueue_many(self, jobs: Sequence[NewJob]) -> list[Row]:
        """Insert all jobs in one statement (one round trip, one transaction); rows come back in input order."""
        if not jobs:
            return []
        payload = jsonio.dumps([job.to_json() for job in jobs])
        rows = self.db.fetch_all("enqueue_jobs", {"jobs": payload})
        self._publish_new(rows, jobs)
        return rows

    def submit(self, jobs: Sequence[NewJob], tenant: str, *, idempotency_key: str | None = None,
               request_hash: str | None = None) -> Submission:
        """Insert jobs all or nothing; with an idempotency key, a repeat of the same request returns the jobs
        of the first one (even when both arrive at once) and a different request under the key is refused."""
        if idempotency_key is None:
            return Submission(self.enqueue_many(jobs), replayed=False)
        payload = jsonio.dumps([job.to_json() for job in jobs])
        key = {"tenant": tenant, "key": idempotency_key}
        with self.db.session() as session, session.transaction():
            if not session.fetch_all("submission_claim", {**key, "request_hash": request_hash}):
                previous = session.fetch_one("submission_get", key)
                assert previous is not None
                if previous["request_hash"] != request_hash:
                    raise IdempotencyConflict("this Idempotency-Key was used with a different request")
                rows = session.fetch_all("jobs_status_by_ids", {"ids": previous["job_ids"]})
                return Submission(rows, replayed=True)
            rows = session.fetch_all("enqueue_jobs", {"jobs": payload})
            session.execute("submission_set_jobs", {**key, "job_ids": [row["id"] for row in rows]})
        self._publish_new(rows, jobs)  # after the commit: a worker that gets the message finds the row
        return Submission(rows, replayed=False)

    def submission_jobs(self, tenant: str, key: str) -> list[dict[str, Any]] | None:
        """The jobs (id, status) a submission under this Idempotency-Key created, in order; None for an unknown
        key. The web console shows a sweep's jobs by the key it submitted them under."""
        submission = self.db.fetch_one("submission_get", {"tenant": tenant, "key": key})
        if submission is None:
            return None
        return self.db.fetch_all("jobs_status_by_ids", {"ids": submission["job_ids"] or []})

    def idempotency_key_used(self, tenant: str, key: str) -> bool:
        """Whether a submission under this key exists already: a repeat adds no jobs, so quotas skip it."""
        return self.db.fetch_one("submission_get", {"tenant": tenant, "key": key}) is not None

    def queued_count(self, tenant: str, cap: int) -> int:
        row = self.db.fetch_one("count_queued_for_tenant", {"tenant": tenant, "cap": cap})
        return int(row["n"]) if row else 0

    def succeeded_twin(self, tenant: str, dedupe_hash: str) -> Row | None:
        return self.db.fetch_one("find_succeeded_twin", {"tenant": tenant, "dedupe_hash": dedupe_hash})

    def list_jobs(self, tenant: str, *, status: str | None = None, workflow: str | None = None,
             since: datetime | None = None, before_id: int | None = None, limit: int = 100) -> list[Row]:
        return self.db.fetch_all("list_jobs", {"tenant": tenant, "status": status, "workflow": workflow,
                                               "since": since, "before_id": before_id, "limit": limit})

    def retry(self, job_id: int, tenant: str) -> Row | None:
        """Requeue a failed, canceled or expired job with fresh attempts; None when it is not one."""
        row = self.db.fetch_one("retry_job", {"id": job_id, "tenant": tenant})
        if row is not None:
            self.republish([row["id"]])
        return row

    def status(self, job_id: int, tenant: str) -> str | None:
        row = self.db.fetch_one("job_status", {"id": job_id, "tenant": tenant})
        return None if row is None else str(row["status"])

    # Worker side --------------------------------------------------------------------------------------
    def claim(self, worker_id: str) -> ClaimedJob | None:
        """The next job for this worker. The transport says what to try (the next eligible row, or the job of a
        Redis message); the claim itself is always made here, and the transport hears how each one went."""
        with contextlib.closing(self.transport.offers(self.db)) as offers:
            offer = next(offers, None)
            while offer is not None:
                try:
                    job = (self.claim_next(worker_id) if isinstance(offer, AskPostgres)
                           else self.claim_by_id(offer, worker_id))
                except Exception as exc:
                    with contextlib.suppress(StopIteration):
                        offers.throw(exc)  # the transport puts back what it took, and re-raises
                    raise
                try:
                    offer = offers.send(job is not None)
                except StopIteration:
                    offer = None
                if job is not None:
                    return job  # the transport's bookkeeping is done; closing ends it should it offer more
        return None

    def claim_next(self, worker_id: str) -> ClaimedJob | None:
        """The highest-priority eligible job, claimed with SKIP LOCKED."""
        claimed = self.claim_many(worker_id, 1)
        return claimed[0] if claimed else None

    def claim_many(self, worker_id: str, limit: int) -> list[ClaimedJob]:
        """Up to `limit` eligible jobs in one statement, in claim order (SKIP LOCKED; Postgres transport only).
        For consumers of short jobs, where a round trip per job would cost more than the job: a ComfyUI worker
        claims one at a time and keeps the next prompt queued in ComfyUI instead (prefetch)."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        rows = self.db.fetch_all(
            "claim_jobs", {"worker_id": worker_id, "lease_seconds": self.lease_seconds, "limit": limit})
        return [job for job in (self._claimed(row, worker_id) for row in rows) if job is not None]

    def claim_by_id(self, job_id: int, worker_id: str) -> ClaimedJob | None:
        """Claim this job if it is still queued, due and within its deadline; None otherwise (a duplicate or
        stale message)."""
        return self._claimed(self.db.fetch_one(
            "claim_job_by_id", {"id": job_id, "worker_id": worker_id, "lease_seconds": self.lease_seconds}),
            worker_id)

    @staticmethod
    def _claimed(row: Row | None, worker_id: str) -> ClaimedJob | None:
        if row is None:
            return None
        return ClaimedJob(
            lease=Lease(row["id"], row["attempts"], worker_id), graph=row["graph"], workflow=row["workflow"],
            priority=row["priority"], max_attempts=row["max_attempts"], timeout_seconds=row["timeout_seconds"],
            row=row)

    def seconds_until_next_run(self) -> float | None:
        """Seconds until the earliest queued job becomes eligible (None when the queue is empty)."""
        row = self.db.fetch_one("seconds_until_next_run")
        return None if row is None or row["seconds"] is None else float(row["seconds"])

    def renew(self, worker_id: str, leases: Iterable[Lease]) -> dict[int, bool]:
        """Extend held leases. Returns {job id: cancel requested} for the leases still held; a missing id
        means the lease was lost (rescued) and the worker must stop writing to that job."""
        held = list(leases)
        if not held:
            return {}
        rows = self.db.fetch_all("renew_leases", {
            "worker_id": worker_id, "lease_seconds": self.lease_seconds,
            "ids": [lease.job_id for lease in held], "attempts": [lease.attempt for lease in held]})
        return {row["id"]: bool(row["cancel_requested"]) for row in rows}

    def set_prompt_id(self, lease: Lease, prompt_id: str) -> bool:
        return self.db.fetch_one("set_prompt_id", {**lease.fence(), "prompt_id": prompt_id}) is not None

    def update_progress(self, lease: Lease, progress: float, current_node: str | None) -> bool:
        value = min(1.0, max(0.0, progress))
        return self.db.fetch_one(
            "update_progress", {**lease.fence(), "progress": value, "current_node": current_node}) is not None

    def complete(self, lease: Lease, outputs: list[dict[str, Any]]) -> bool:
        """Mark the attempt succeeded; False when the lease was lost (another attempt owns the job)."""
        return lease.job_id in self.complete_many(lease.worker_id, [(lease, outputs)])

    def complete_many(self, worker_id: str, finished: Sequence[tuple[Lease, list[dict[str, Any]]]]) -> set[int]:
        """Mark several of this worker's attempts succeeded in one statement. Returns the ids recorded; a job
        missing from it had lost its lease (another attempt owns it) and was left alone."""
        if not finished:
            return set()
        if any(lease.worker_id != worker_id for lease, _ in finished):
            raise ValueError("every lease must belong to worker_id")
        done = jsonio.dumps([{"id": lease.job_id, "attempt": lease.attempt, "outputs": outputs}
                             for lease, outputs in finished])
        rows = self.db.fetch_all("complete_jobs", {"worker_id": worker_id, "done": done})
        return {int(row["id"]) for row in rows}

    def fail_attempt(self, lease: Lease, error: dict[str, Any], *, retryable: bool,
                     delay_seconds: float) -> Row | None:
        """Record a failed attempt: back to the queue after delay_seconds when retryable and attempts remain,
        else failed. Returns the new status row, or None when the lease was lost."""
        row = self.db.fetch_one("fail_attempt", {
            **lease.fence(), "error": json.dumps(error), "retryable": retryable,
            "delay_seconds": max(0.0, delay_seconds)})
        if row is not None and row["status"] == "queued":
            self.republish([row["id"]])
        return row

    def release(self, lease: Lease, reason: str) -> bool:
        """Hand the attempt back without counting it (shutdown)."""
        released = self.db.fetch_one("release_job", {**lease.fence(), "reason": reason}) is not None
        if released:
            self.republish([lease.job_id])
        return released

    def held_by(self, worker_id: str) -> list[Lease]:
        """The leases the database says this worker holds (running jobs with its id)."""
        rows = self.db.fetch_all("running_jobs_of_worker", {"worker_id": worker_id})
        return [Lease(int(row["id"]), int(row["attempts"]), worker_id) for row in rows]

    def log_outage(self, lease: Lease, event: str, message: str, details: dict[str, Any]) -> bool:
        """Record an outage or a resubmission against the attempt (no state change, no attempt spent)."""
        return self.db.fetch_one("log_outage", {**lease.fence(), "event": event, "message": message,
                                                "details": jsonio.dumps(details)}) is not None

    def attempt_state(self, job_id: int) -> Row | None:
        """Status, attempt and owner of a job: after a write whose outcome was unknown, whether it committed."""
        return self.db.fetch_one("attempt_state", {"id": job_id})

    def finish_canceled(self, lease: Lease) -> bool:
        return self.db.fetch_one("finish_canceled_job", lease.fence()) is not None

    # Any side -----------------------------------------------------------------------------------------
    def cancel(self, job_id: int, tenant: str) -> Row | None:
        """Cancel a queued job now, or flag a running one; None when the job is unknown or finished."""
        return self.db.fetch_one("cancel_job", {"id": job_id, "tenant": tenant})

    def get(self, job_id: int, tenant: str) -> Row | None:
        return self.db.fetch_one("get_job", {"id": job_id, "tenant": tenant})

    def logs(self, job_id: int) -> list[Row]:
        return self.db.fetch_all("job_logs", {"id": job_id})

    def history(self, job_id: int, tenant: str, *, after_id: int, limit: int) -> list[Row] | None:
        """Up to limit log rows of the tenant's job after log id after_id, oldest first, in one round trip; None
        when the job is not the tenant's (or does not exist), as get() answers."""
        rows = self.db.fetch_all("job_history_page", {"job_id": job_id, "tenant": tenant, "after_id": after_id,
                                                      "limit": limit})
        return [row for row in rows if row["id"] is not None] if rows else None

    def summary(self) -> Row | None:
        """Depth and waiting times of the whole queue (queued, eligible, delayed, running, expired leases, the
        oldest and longest waits) in one cheap read, for scrapes and alerts."""
        return self.db.fetch_one("queue_summary")

    def listen_cancels(self) -> Listener:
        """A LISTEN connection of its own on cancel requests: each notification's payload is the id of a job
        whose cancel was just written, so a worker can act before its next heartbeat."""
        return self.db.listener("listen_cancels")

    # Maintenance --------------------------------------------------------------------------------------
    def rescue_expired(self, limit: int = 1000) -> list[Row]:
        rows = self.db.fetch_all("rescue_expired_leases", {"limit": limit})
        for row in rows:
            log.warning("rescued job %s of worker %s -> %s", row["id"], row["worker_id"], row["status"],
                        extra={"action": "rescue", "job_id": row["id"]})
        self.republish([row["id"] for row in rows if row["status"] == "queued"])
        return rows

    def expire_overdue(self, limit: int = 1000) -> list[int]:
        rows = self.db.fetch_all("expire_overdue_jobs", {"limit": limit})
        return [row["id"] for row in rows]

    # Transport ----------------------------------------------------------------------------------------
    def _publish_new(self, rows: Sequence[Row], jobs: Sequence[NewJob]) -> None:
        """Messages for rows just inserted (rows come back in input order, so each row pairs with its job)."""
        if not self.transport.publishes or not rows:
            return
        self._publish([Message(row["id"], row["priority"], 0, job.run_at) for row, job in zip(rows, jobs)])

    def republish(self, job_ids: Sequence[int]) -> None:
        """Messages for jobs put back in the queue (retry, rescue, release); read from their rows, so a job
        that is no longer queued gets none."""
        if not self.transport.publishes or not job_ids:
            return
        try:
            rows = self.db.fetch_all("jobs_to_publish", {"ids": list(job_ids)})
        except ComfyqError as exc:
            log.warning("could not read jobs %s to publish them (the reconciler will): %s", list(job_ids), exc)
            return
        self._publish([Message(row["id"], row["priority"], row["attempts"], row["run_at"]) for row in rows])

    def _publish(self, messages: list[Message]) -> None:
        try:
            self.transport.publish(messages)
        except Exception:  # the rows are committed; a lost message is found by the reconciler
            log.exception("publishing %d jobs failed; the reconciler will re-enqueue them", len(messages))
