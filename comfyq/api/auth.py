"""Bearer-token auth: tokens are looked up by their SHA-256 hash (compared in constant time) and bound to a
tenant and a role (submitter < admin < operator, comfyq.tokens.ROLES). Lookups are cached for
COMFYQ_TOKEN_CACHE_SECONDS, so a revoked token stops working within that time and a busy API does not read
api_tokens on every request. COMFYQ_API_TOKEN, set by whoever deploys the API, is an operator token of
COMFYQ_API_TENANT; it has no row, no name and cannot be revoked, so every use of it is logged (at most one line a
minute per process, with how many uses it stands for) and the settings refuse a short or placeholder value."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from flask import current_app, g, request

from comfyq import tokens
from comfyq.api.api_errors import ApiError, bookkeeping_write
from comfyq.api.services import services
from comfyq.settings import Settings

log = logging.getLogger(__name__)
ROLE_RANK = {role: tokens.rank(role) for role in tokens.ROLES}
BOOTSTRAP_LOG_SECONDS = 60.0


@dataclass(frozen=True)
class Caller:
    tenant: str
    role: str
    allow_raw_graphs: bool = False
    max_queued_jobs: int | None = None
    rate_per_second: float | None = None
    rate_burst: int | None = None
    token_id: int | None = None
    bootstrap: bool = False  # COMFYQ_API_TOKEN

    @property
    def is_operator(self) -> bool:
        """Acts across tenants; every other role acts on its own tenant only."""
        return self.role == "operator"


_cache: tokens.CallerCache[Caller] = tokens.CallerCache()


class UseLog:
    """Counts uses and says whether to write a line now: the first use, then at most one per `every` seconds,
    each standing for the uses since the last one."""

    def __init__(self, every: float) -> None:
        self.every = every
        self._lock = threading.Lock()
        self._uses = 0
        self._next = 0.0

    def use(self, now: float) -> int:
        """The uses this line stands for, or 0 when no line is due."""
        with self._lock:
            self._uses += 1
            if now < self._next:
                return 0
            uses, self._uses, self._next = self._uses, 0, now + self.every
            return uses


bootstrap_uses = UseLog(BOOTSTRAP_LOG_SECONDS)


def _note_bootstrap_use() -> None:
    uses = bootstrap_uses.use(time.monotonic())
    if uses:
        log.info("a request was authenticated with the bootstrap operator token COMFYQ_API_TOKEN (%s %s from %s; "
                 "%d uses since the last such line): prefer named tokens (`comfyq token create`), which can be "
                 "revoked", request.method, request.path, request.remote_addr, uses,
                 extra={"action": "bootstrap_token_used", "uses": uses})


def _unauthorized(message: str = "a valid 'Authorization: Bearer <token>' header is required") -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="comfyq"'})


def _resolve_hash(digest: str, settings: Settings) -> Caller | None:
    if tokens.is_bootstrap_hash(digest, settings.api_token):
        limits = tokens.tenant_limits(services().db, settings.api_tenant) or {}
        return Caller(tenant=settings.api_tenant, role="operator", allow_raw_graphs=True,
                      max_queued_jobs=limits.get("max_queued_jobs"), rate_per_second=limits.get("rate_per_second"),
                      rate_burst=limits.get("rate_burst"), bootstrap=True)
    row = tokens.lookup_hash(services().db, digest)
    if row is None:
        return None
    with bookkeeping_write():
        tokens.touch(services().db, row["id"])
    return Caller(tenant=row["tenant"], role=row["role"], allow_raw_graphs=bool(row["allow_raw_graphs"]),
                  max_queued_jobs=row["max_queued_jobs"], rate_per_second=row["rate_per_second"],
                  rate_burst=row["rate_burst"], token_id=row["id"])


def caller_for_hash(digest: str) -> Caller | None:
    """The caller behind a token known by its SHA-256 hash (the web console's session keeps the hash, never the
    token): the same lookup, cache and bootstrap-token rules as a bearer token, so revoking a token ends the
    console sessions signed in with it within COMFYQ_TOKEN_CACHE_SECONDS."""
    caller = _cached_caller(digest)
    if caller is not None:
        g.caller = caller
    return caller


def _cached_caller(digest: str) -> Caller | None:
    """The caller behind a token's hash, from the cache or resolved and cached; a bootstrap use is counted."""
    settings: Settings = current_app.config["COMFYQ_SETTINGS"]
    known, caller = _cache.get_by_hash(digest)
    if not known:
        caller = _resolve_hash(digest, settings)
        _cache.put_by_hash(digest, caller, settings.token_cache_seconds)
    if caller is not None and caller.bootstrap:
        _note_bootstrap_use()
    return caller


def require_token(role: str = "submitter") -> Caller:
    """The caller behind the request's bearer token: 401 without a valid one, 403 when its role is too low."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized()
    caller = _cached_caller(tokens.hash_token(token))
    if caller is None:
        raise _unauthorized()
    if ROLE_RANK[caller.role] < ROLE_RANK[role]:
        raise ApiError(403, "forbidden", f"this needs a token with the {role} role")
    g.caller = caller
    return caller
