"""The completion-callback outbox: job_queue.callback_state marks the callbacks still to send, so a callback
survives a worker's crash (another worker takes it over) and each delivery outcome is one job_logs row."""

from __future__ import annotations

from typing import Any

from comfyq.db import Database, Row


class CallbackOutbox:
    def __init__(self, db: Database) -> None:
        self.db = db

    def claim_due(self, *, reclaim_seconds: float, limit: int) -> list[Row]:
        """Take up to `limit` pending callbacks, and those whose sender vanished more than reclaim_seconds ago
        mid-delivery; each comes back as its full job row (what the event is made from)."""
        return self.db.fetch_all("claim_callbacks", {"reclaim_seconds": reclaim_seconds, "limit": limit})

    def record(self, job_id: int, *, event: str, state: str, attempt: int, message: str,
               details: dict[str, Any]) -> None:
        """Log an outcome (callback_delivered, callback_failed) and leave the outbox in `state`: delivered,
        failed, or pending (sent again later). Nothing is written when the job was deleted meanwhile."""
        self.db.execute("log_callback", {"job_id": job_id, "event": event, "state": state, "attempt": attempt,
                                         "message": message, "details": details})

    def release(self, job_id: int) -> None:
        """Put a claimed callback back to wait, unlogged: its tenant has no active signing secret any more."""
        self.db.execute("release_callback", {"job_id": job_id})

    def waiting_for_secret(self) -> list[Row]:
        """Tenants whose callbacks wait because they have no active signing secret: {tenant, waiting}."""
        return self.db.fetch_all("callbacks_waiting_for_secret")
