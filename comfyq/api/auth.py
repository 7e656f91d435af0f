"""Bearer-token auth: tokens are looked up by their SHA-256 hash (compared in constant time) and bound to a
tenant and a role (submitter < admin < operator, comfyq.tokens.ROLES). Lookups are cached for
COMFYQ_TOKEN_CACHE_SECONDS, so a revoked token stops working within that time and a busy API does not read
api_tokens on every request. COMFYQ_API_TOKEN, set by whoever deploys the API, is an operator token of
COMFYQ_API_TENANT."""

from __future__ import annotations

import hmac
import threading
import time
from dataclasses import dataclass

from flask import current_app, g, request

from comfyq import tokens
from comfyq.api.api_errors import ApiError, bookkeeping_write
from comfyq.api.services import services
from comfyq.settings import Settings

ROLE_RANK = {role: tokens.rank(role) for role in tokens.ROLES}


@dataclass(frozen=True)
class Caller:
    tenant: str
    role: str
    allow_raw_graphs: bool = False
    max_queued_jobs: int | None = None
    rate_per_second: float | None = None
    rate_burst: int | None = None
    token_id: int | None = None

    @property
    def is_operator(self) -> bool:
        """Acts across tenants; every other role acts on its own tenant only."""
        return self.role == "operator"


_cache: dict[str, tuple[float, Caller | None]] = {}
_cache_lock = threading.Lock()


def _unauthorized(message: str = "a valid 'Authorization: Bearer <token>' header is required") -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="comfyq"'})


def _resolve(token: str, settings: Settings) -> Caller | None:
    if settings.api_token and hmac.compare_digest(token.encode(), settings.api_token.encode()):
        limits = tokens.tenant_limits(services().db, settings.api_tenant) or {}
        return Caller(tenant=settings.api_tenant, role="operator", allow_raw_graphs=True,
                      max_queued_jobs=limits.get("max_queued_jobs"), rate_per_second=limits.get("rate_per_second"),
                      rate_burst=limits.get("rate_burst"))
    row = tokens.lookup(services().db, token)
    if row is None:
        return None
    with bookkeeping_write():
        tokens.touch(services().db, row["id"])
    return Caller(tenant=row["tenant"], role=row["role"], allow_raw_graphs=bool(row["allow_raw_graphs"]),
                  max_queued_jobs=row["max_queued_jobs"], rate_per_second=row["rate_per_second"],
                  rate_burst=row["rate_burst"], token_id=row["id"])


def require_token(role: str = "submitter") -> Caller:
    """The caller behind the request's bearer token: 401 without a valid one, 403 when its role is too low."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized()
    settings: Settings = current_app.config["COMFYQ_SETTINGS"]
    key = tokens.hash_token(token)
    now = time.monotonic()
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None and cached[0] > now:
        caller = cached[1]
    else:
        caller = _resolve(token, settings)
        if settings.token_cache_seconds > 0:
            with _cache_lock:
                if len(_cache) > 10_000:
                    _cache.clear()
                _cache[key] = (now + settings.token_cache_seconds, caller)
    if caller is None:
        raise _unauthorized()
    if ROLE_RANK[caller.role] < ROLE_RANK[role]:
        raise ApiError(403, "forbidden", f"this needs a token with the {role} role")
    g.caller = caller
    return caller
