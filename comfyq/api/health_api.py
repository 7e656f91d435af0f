"""Liveness (the process answers) and readiness (the database answers). Both take no token, because probes send
none, so they say only that: why the database does not answer (the driver's message names its host and port) goes
to the log, and into /readyz's body only for a caller with an admin or operator token."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, request

from comfyq.api import bearer
from comfyq.api.api_errors import ApiError
from comfyq.api.auth import require_token
from comfyq.api.responses import Health, answer
from comfyq.api.services import services
from comfyq.errors import DatabaseUnavailable
from comfyq.settings import Settings

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return answer(Health, {"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    try:
        services().db.ping()
    except DatabaseUnavailable as exc:
        reason = str(exc)[:200]
        log.warning("not ready: the database does not answer: %s", reason, extra={"action": "readyz"})
        body = {"status": "unavailable"}
        if may_see_details():
            body["reason"] = reason
        response = answer(Health, body)
        response.status_code = 503
        response.headers["Retry-After"] = "5"
        return response
    return answer(Health, {"status": "ready"})


def may_see_details() -> bool:
    """True for a valid admin or operator token. Anything else (no token, a wrong or a submitter's one) only
    leaves the details out: the probe's answer never turns into a 401 or 403. With the database down, only tokens
    checked within COMFYQ_TOKEN_CACHE_SECONDS and COMFYQ_API_TOKEN, which needs no lookup, can be verified."""
    if "Authorization" not in request.headers:
        return False
    try:
        require_token("admin")
    except ApiError:
        return False
    except DatabaseUnavailable:
        settings: Settings = current_app.config["COMFYQ_SETTINGS"]
        return bearer.matches(settings.api_token)
    return True
