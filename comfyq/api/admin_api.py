"""Admin routes: workers, tokens, tenants, their callback secrets and retention, what `comfyq workers|token|tenant|
retention` call.

A tenant's admin acts on its own tenant only: its tokens (never an operator's), its callback secrets and its
finished jobs. An operator acts across tenants and may name one. Workers serve every tenant (their hosts, ComfyUI
URLs and current jobs belong to the deployment, not to a tenant) and tenants' settings are the deployment's
limits, so both are for operators only."""

from __future__ import annotations

import logging
import re
from typing import Any

from flask import Blueprint, Response, current_app, request

from comfyq import callback_secrets, tokens
from comfyq.admin import apply_retention, forget_worker, list_workers
from comfyq.api.api_errors import ApiError
from comfyq.api.auth import Caller, require_token
from comfyq.api.request_body import json_body
from comfyq.api.responses import (
    CallbackSecret,
    CallbackSecretList,
    NewCallbackSecret,
    NewToken,
    RetentionResult,
    Tenant,
    TenantList,
    Token,
    TokenList,
    Worker,
    WorkerList,
    answer,
)
from comfyq.api.schemas import RetentionRequest, TenantSettings, TokenRequest
from comfyq.api.services import services
from comfyq.settings import Settings

log = logging.getLogger(__name__)
bp = Blueprint("admin", __name__)

ALL_TENANTS = "all tenants"  # the `scope` of an operator's call that names no tenant (as in GET /stats)
TOKEN_REF = re.compile(r"[0-9]{1,19}|cq_[A-Za-z0-9_-]{8}")  # an id, or a prefix as listings show it


def _scope(caller: Caller, requested: str | None) -> str | None:
    """The tenant a call acts on: for an operator the one it names (None: every tenant), for anyone else its own.
    Naming another tenant is refused rather than ignored, so a mistaken call does not act on the wrong tenant."""
    if caller.is_operator:
        return requested
    if requested is not None and requested != caller.tenant:
        raise ApiError(403, "forbidden", f"this token acts on its own tenant {caller.tenant!r} only; another tenant "
                       "needs an operator token")
    return caller.tenant


def _query(*allowed: str) -> dict[str, str]:
    unknown = set(request.args) - set(allowed)
    if unknown:
        raise ApiError(400, "invalid_query", "unknown query parameters", {"unknown": sorted(unknown)})
    return {name: request.args[name] for name in allowed if name in request.args}


def _audit(caller: Caller, action: str, message: str, *args: Any) -> None:
    """Who changed what: admin calls change or delete other callers' data, so each leaves a log line."""
    log.info(message + " (by a %s token of tenant %s)", *args, caller.role, caller.tenant,
             extra={"action": action, "caller_tenant": caller.tenant, "caller_token_id": caller.token_id})


@bp.get("/admin/workers")
def workers() -> Response:
    require_token("operator")
    include = _query("all").get("all", "false").lower()
    if include not in ("true", "false"):
        raise ApiError(400, "invalid_query", "all must be true or false")
    rows = list_workers(services().db, include_stopped=include == "true")
    return answer(WorkerList, {"workers": [tokens.public(row) for row in rows]})


@bp.delete("/admin/workers/<worker_id>")
def forget(worker_id: str) -> Response:
    """Forget a dead or stopped worker: its row goes, so it leaves the lists and the alerts. A worker that may
    still be alive is refused rather than hidden while it runs."""
    caller = require_token("operator")
    settings: Settings = current_app.config["COMFYQ_SETTINGS"]
    row = None
    if "\x00" not in worker_id:  # Postgres text cannot hold NUL, so no worker has it in its id
        row = forget_worker(services().db, worker_id, dead_after_seconds=settings.worker_dead_after_seconds)
    if row is None:
        raise ApiError(404, "not_found", f"no worker {worker_id!r}")
    forgotten = row.pop("forgotten")
    if not forgotten:
        raise ApiError(409, "worker_alive", f"worker {worker_id!r} is {row['status']} and heartbeated "
                       f"{row['heartbeat_age_seconds']:g} s ago: only a dead or stopped worker can be forgotten "
                       "(stop it first, or wait until it is declared dead)",
                       {"status": row["status"], "heartbeat_age_seconds": row["heartbeat_age_seconds"]})
    _audit(caller, "worker_forget", "forgot worker %s (%s, host %s, last heartbeat %s s ago)", worker_id,
           row["status"], row["host"], row["heartbeat_age_seconds"])
    return answer(Worker, tokens.public(row))


@bp.get("/admin/tokens")
def list_tokens() -> Response:
    caller = require_token("admin")
    tenant = _query("tenant").get("tenant")
    if tenant is not None and not re.fullmatch(tokens.TENANT_PATTERN, tenant):
        raise ApiError(400, "invalid_query", "tenant is not a tenant name")
    rows = tokens.list_tokens(services().db, _scope(caller, tenant), tokens.manageable_roles(caller.role))
    return answer(TokenList, {"tokens": [tokens.public(row) for row in rows]})


@bp.post("/admin/tokens")
def create_token() -> tuple[Response, int]:
    caller = require_token("admin")
    req = TokenRequest.model_validate(json_body())
    tenant = _scope(caller, req.tenant) or caller.tenant
    if req.role not in tokens.manageable_roles(caller.role):
        raise ApiError(403, "forbidden", f"a {caller.role} token cannot create {req.role} tokens")
    created = tokens.create(services().db, tenant, req.role, req.description)
    _audit(caller, "token_create", "created token %s (%s...) of tenant %s, role %s", created.row["id"],
           created.row["token_prefix"], tenant, req.role)
    return answer(NewToken, {**tokens.public(created.row), "token": created.token}), 201


@bp.delete("/admin/tokens/<ref>")
def revoke_token(ref: str) -> Response:
    caller = require_token("admin")
    row = None
    if TOKEN_REF.fullmatch(ref):
        row = tokens.revoke(services().db, ref, None if caller.is_operator else caller.tenant,
                            tokens.manageable_roles(caller.role))
    if row is None:
        raise ApiError(404, "not_found", f"no active token with id or prefix {ref!r}"
                       + ("" if caller.is_operator else f" in tenant {caller.tenant!r}"))
    _audit(caller, "token_revoke", "revoked token %s (%s...) of tenant %s", row["id"], row["token_prefix"],
           row["tenant"])
    return answer(Token, tokens.public(row))


@bp.get("/admin/tenants")
def list_tenants() -> Response:
    require_token("operator")
    _query()
    return answer(TenantList, {"tenants": [tokens.public(row) for row in tokens.list_tenants(services().db)]})


@bp.put("/admin/tenants/<name>")
def set_tenant(name: str) -> Response:
    caller = require_token("operator")
    if not re.fullmatch(tokens.TENANT_PATTERN, name):
        raise ApiError(422, "validation_error", "the tenant name is not valid", [{
            "field": "name", "problem": "1 to 63 of a-z, 0-9, '_', '.', '-', starting with a letter or digit",
            "type": "string_pattern_mismatch"}])
    req = TenantSettings.model_validate(json_body())
    row = tokens.set_tenant(services().db, name, **req.model_dump())
    _audit(caller, "tenant_set", "set tenant %s: %s", name, req.model_dump())
    return answer(Tenant, tokens.public(row))


def _existing_tenant(caller: Caller, name: str) -> str:
    """The tenant a /admin/tenants/{name}/... call acts on: the caller's own, or any for an operator (403 for
    another tenant before 404 for one that does not exist, so an admin learns nothing about other tenants)."""
    tenant = _scope(caller, name) or name
    if not re.fullmatch(tokens.TENANT_PATTERN, tenant) or tokens.tenant_limits(services().db, tenant) is None:
        raise ApiError(404, "not_found", f"no tenant named {tenant!r}")
    return tenant


@bp.get("/admin/tenants/<name>/callback-secrets")
def list_callback_secrets(name: str) -> Response:
    caller = require_token("admin")
    _query()
    tenant = _existing_tenant(caller, name)
    rows = callback_secrets.list_secrets(services().db, tenant)
    return answer(CallbackSecretList, {"callback_secrets": [tokens.public(row) for row in rows]})


@bp.post("/admin/tenants/<name>/callback-secrets")
def create_callback_secret(name: str) -> tuple[Response, int]:
    """A new secret, answered once: it signs the tenant's callbacks from the next delivery on, next to the ones
    already active, until the old ones are retired (DELETE)."""
    caller = require_token("admin")
    tenant = _existing_tenant(caller, name)
    created = callback_secrets.create(services().db, tenant)
    if created is None:
        raise ApiError(409, "too_many_callback_secrets", f"tenant {tenant!r} has {callback_secrets.MAX_ACTIVE} active "
                       "callback secrets already: retire one first")
    _audit(caller, "callback_secret_create", "created callback secret %s (%s...) of tenant %s", created.row["id"],
           created.row["secret_prefix"], tenant)
    return answer(NewCallbackSecret, {**tokens.public(created.row), "secret": created.secret}), 201


@bp.delete("/admin/tenants/<name>/callback-secrets/<int:secret_id>")
def retire_callback_secret(name: str, secret_id: int) -> Response:
    caller = require_token("admin")
    tenant = _existing_tenant(caller, name)
    row = callback_secrets.retire(services().db, tenant, secret_id)
    if row is None:
        raise ApiError(404, "not_found", f"no active callback secret {secret_id} in tenant {tenant!r}")
    _audit(caller, "callback_secret_retire", "retired callback secret %s (%s...) of tenant %s", row["id"],
           row["secret_prefix"], tenant)
    return answer(CallbackSecret, tokens.public(row))


@bp.post("/admin/retention")
def retention() -> Response:
    caller = require_token("admin")
    # Strict: a number of days is a JSON number, never `true` or "36500" (which lax validation would convert).
    req = RetentionRequest.model_validate(json_body(), strict=True)
    tenant = _scope(caller, req.tenant)
    removed = apply_retention(services().db, services().storage, int(req.older_than_days * 86400), tenant=tenant)
    _audit(caller, "retention", "retention of %s older than %s days", tenant or ALL_TENANTS, req.older_than_days)
    return answer(RetentionResult, {**removed, "older_than_days": req.older_than_days, "scope": tenant or ALL_TENANTS})
