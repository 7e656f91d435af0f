"""Per-tenant limits enforced at the door: request rate (a token bucket shared through Postgres by every API
process) and the number of queued jobs. Each refusal is a 429 with Retry-After."""

from __future__ import annotations

import math

from flask import current_app

from comfyq import rate_limit
from comfyq.api.api_errors import ApiError, bookkeeping_write
from comfyq.api.auth import Caller
from comfyq.api.services import services
from comfyq.settings import Settings


def enforce_rate(caller: Caller, cost: int = 1) -> None:
    settings: Settings = current_app.config["COMFYQ_SETTINGS"]
    rate = caller.rate_per_second or settings.default_rate_per_second
    if rate is None:
        return
    burst = caller.rate_burst or settings.default_rate_burst
    with bookkeeping_write():
        wait = rate_limit.take(services().db, caller.tenant, rate=rate, burst=burst, cost=cost)
    if wait is not None:
        retry_after = max(1, math.ceil(wait))
        raise ApiError(429, "rate_limited", f"tenant {caller.tenant!r} is limited to {rate:g} requests per second "
                       f"(bursts of {burst})", {"retry_after_seconds": retry_after},
                       headers={"Retry-After": str(retry_after)})


def enforce_quota(caller: Caller, adding: int) -> None:
    settings: Settings = current_app.config["COMFYQ_SETTINGS"]
    quota = caller.max_queued_jobs if caller.max_queued_jobs is not None else settings.default_max_queued_jobs
    if quota is None:
        return
    queued = services().queue.queued_count(caller.tenant, cap=quota + 1)
    if queued + adding > quota:
        raise ApiError(429, "quota_exceeded", f"tenant {caller.tenant!r} may have at most {quota} queued jobs",
                       {"queued": queued, "adding": adding, "quota": quota}, headers={"Retry-After": "30"})
