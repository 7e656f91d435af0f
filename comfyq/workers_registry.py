"""The workers table: each worker says it started, is alive (and which dependencies it finds down) and stopped, and
every live worker's maintenance tick declares dead those that stopped heartbeating, so operators, the stats and the
alerts can tell a live worker from a dead one without anyone editing the table by hand.

Lifecycle (docs/operations.md, "Workers: start, stop, scale"): running -> draining (first signal) -> stopped (clean
exit); running or draining -> dead (no heartbeat for COMFYQ_WORKER_DEAD_AFTER_SECONDS, set by another worker) ->
running or draining again if it heartbeats (it was frozen, not killed); dead or stopped -> forgotten (the row is
deleted by `comfyq workers forget`). Dead changes nothing for the worker's jobs: their leases fence them."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from comfyq.db import Database, Row

log = logging.getLogger(__name__)


class WorkerRegistry:
    """One worker's row, written under its id."""

    def __init__(self, db: Database, worker_id: str) -> None:
        self.db = db
        self.worker_id = worker_id
        self._identity: dict[str, object] | None = None

    def register(self, *, host: str, pid: int, comfyui_url: str) -> None:
        """Insert the row, or reset it when a worker runs again under the same id (started now, nothing held)."""
        identity = {"host": host, "pid": pid, "comfyui_url": comfyui_url}
        self.db.execute("register_worker", {"id": self.worker_id, **identity})
        self._identity = identity

    def heartbeat(self, status: str, dependencies_down: Sequence[str]) -> None:
        """Alive now, in this status (running, draining), with these dependencies down. A worker declared dead while
        it was frozen says it is back; one whose row an operator forgot meanwhile registers again, so a live worker
        is never missing from the list."""
        row = self.db.fetch_one("worker_heartbeat", {"id": self.worker_id, "status": status,
                                                     "dependencies_down": list(dependencies_down)})
        if row is not None:
            if row["previous_status"] == "dead":
                log.warning("worker %s was declared dead and heartbeats again; it is %s now (jobs whose leases "
                            "were rescued meanwhile are no longer its own)", self.worker_id, status,
                            extra={"action": "worker_alive_again", "worker_id": self.worker_id})
            return
        if self._identity is None:
            return  # never registered in this process: nothing to restore
        log.warning("worker %s: its row was forgotten while it ran; registering again", self.worker_id,
                    extra={"action": "worker_registered_again", "worker_id": self.worker_id})
        self.db.execute("register_worker", {"id": self.worker_id, **self._identity})

    def stopped(self) -> None:
        self.db.execute("worker_stopped", {"id": self.worker_id})


def declare_dead_workers(db: Database, dead_after_seconds: float, *, declared_by: str) -> list[Row]:
    """Set to 'dead' every other running or draining worker silent for longer than the bound, once each (the
    statement is idempotent and safe from many workers at once), and log each one."""
    rows = db.fetch_all("declare_dead_workers", {"dead_after_seconds": dead_after_seconds,
                                                 "declared_by": declared_by})
    for row in rows:
        log.warning("worker %s (host %s, pid %s) declared dead: no heartbeat for %.1f s (bound %g s); %d running "
                    "jobs of it go back to the queue when their leases expire", row["id"], row["host"], row["pid"],
                    row["heartbeat_age_seconds"], dead_after_seconds, row["running_jobs"],
                    extra={"action": "worker_declared_dead", "worker_id": row["id"], "declared_by": declared_by})
    return rows
