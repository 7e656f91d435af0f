"""Liveness (the process answers) and readiness (the database answers)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from comfyq.api.api_errors import ApiError
from comfyq.api.services import services
from comfyq.errors import DatabaseUnavailable

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    try:
        services().db.ping()
    except DatabaseUnavailable as exc:
        raise ApiError(503, "not_ready", "the database does not answer", {"reason": str(exc)[:200]},
                       headers={"Retry-After": "5"}) from exc
    return jsonify({"status": "ready"})
