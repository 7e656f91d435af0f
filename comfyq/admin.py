"""Operator views and chores behind the API's stats and admin routes: queue statistics, the workers, and
retention (rows, logs and stored objects go together)."""

from __future__ import annotations

import logging
from typing import Any

from comfyq.db import Database, Row
from comfyq.storage import Storage, job_prefix, storage_namespace

log = logging.getLogger(__name__)

RETENTION_BATCH = 500


def queue_stats(db: Database, tenant: str | None, *, alive_seconds: float,
                window_seconds: int = 3600) -> dict[str, Any]:
    """Depth by status and priority, oldest queued age, recent outcomes and workers alive; tenant=None is
    the whole queue (admins)."""
    depth: dict[str, dict[str, int]] = {"queued": {}, "running": {}}
    totals = {"queued": 0, "running": 0}
    oldest: float | None = None
    for row in db.fetch_all("stats_depth", {"tenant": tenant}):
        depth[row["status"]][str(row["priority"])] = int(row["jobs"])
        totals[row["status"]] += int(row["jobs"])
        if row["oldest_age"] is not None:
            oldest = max(oldest or 0.0, float(row["oldest_age"]))
    finished = {row["status"]: int(row["jobs"]) for row in db.fetch_all(
        "stats_finished_recently", {"tenant": tenant, "window_seconds": window_seconds})}
    workers = db.fetch_one("stats_workers", {"alive_seconds": alive_seconds}) or {"alive": 0, "silent": 0, "dead": 0}
    return {"queued": totals["queued"], "running": totals["running"], "by_priority": depth,
            "oldest_queued_seconds": round(oldest, 3) if oldest is not None else None,
            "finished_last_hour": finished,
            "workers": {key: int(workers[key]) for key in ("alive", "silent", "dead")}}


def list_workers(db: Database, *, include_stopped: bool) -> list[Row]:
    """Workers with their heartbeat age, current job, ComfyUI URL and the dependencies they see down."""
    return db.fetch_all("list_workers", {"include_stopped": include_stopped})


def forget_worker(db: Database, worker_id: str, *, dead_after_seconds: float) -> Row | None:
    """Delete a dead or stopped worker's row (or one silent past the bound, when no live worker was left to declare
    it dead). Returns the row as it was with `forgotten` false when the worker may still be alive; None when there is
    no such worker. Its jobs are not touched: running ones are rescued when their leases expire."""
    row = db.fetch_one("forget_worker", {"id": worker_id, "dead_after_seconds": dead_after_seconds})
    if row is None:
        return None
    return {key: value for key, value in row.items() if key != "may_forget"}


def apply_retention(db: Database, storage: Storage, older_than_seconds: int, *,
                    tenant: str | None) -> dict[str, int]:
    """Delete finished jobs older than the age, of one tenant (None: of every tenant, an operator's run), with
    their logs and stored objects, and the tenant's Idempotency-Keys as old, in batches. Objects go
    first: a failure leaves the rows (and a retry removes the rest) rather than rows pointing at nothing.
    A job's objects are everything under its prefix <installation>/<job>/, so outputs of fenced attempts (a
    lost lease, a late worker) that no row lists go too; keys listed in rows stored before the installation
    prefix existed (migration 0010) are deleted one by one, never by a bare <job>/ prefix, which another
    installation sharing the storage may use."""
    namespace = storage_namespace(db)
    totals = {"jobs_deleted": 0, "logs_deleted": 0, "objects_deleted": 0}
    while True:
        with db.session() as session, session.transaction():
            batch = session.fetch_all("retention_candidates", {"older_than_seconds": older_than_seconds,
                                                               "tenant": tenant, "limit": RETENTION_BATCH})
            if not batch:
                break
            prefixes = {row["id"]: job_prefix(namespace, row["id"]) for row in batch}
            listed = [(row["id"], o["key"]) for row in batch for o in (row["outputs"] or [])
                      if isinstance(o, dict) and isinstance(o.get("key"), str) and o["key"]]
            legacy = [key for job_id, key in listed if not key.startswith(prefixes[job_id])]
            totals["objects_deleted"] += storage.delete_prefixes(list(prefixes.values()))
            totals["objects_deleted"] += storage.delete(legacy)
            deleted = session.fetch_all("retention_delete", {"ids": [row["id"] for row in batch]})[0]
            totals["jobs_deleted"] += int(deleted["jobs_deleted"])
            totals["logs_deleted"] += int(deleted["logs_deleted"])
    db.execute("retention_submissions", {"older_than_seconds": older_than_seconds, "tenant": tenant})
    log.info("retention removed %s jobs, %s log rows, %s objects of %s", totals["jobs_deleted"],
             totals["logs_deleted"], totals["objects_deleted"], tenant or "every tenant",
             extra={"action": "retention", "tenant": tenant})
    return totals
