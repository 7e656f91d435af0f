"""Per-tenant request rate: a token bucket per tenant in Postgres (rate_buckets), so the limit holds across every
API process and host rather than per process."""

from __future__ import annotations

from comfyq.db import Database


def take(db: Database, tenant: str, *, rate: float, burst: int, cost: int = 1) -> float | None:
    """Take `cost` tokens from the tenant's bucket (refilled at `rate` per second, holding at most `burst`).
    Returns None when the request may go ahead, else the seconds until enough tokens are back. A tenant without a
    bucket gets a full one; when two processes create it at once, the one that lost takes from the winner's."""
    params = {"tenant": tenant, "rate": rate, "burst": burst, "cost": cost}
    row = db.fetch_one("rate_take", params) or db.fetch_one("rate_seed", params) or db.fetch_one("rate_take", params)
    if row is None or row["allowed"]:
        return None
    return float(row["retry_after"])
