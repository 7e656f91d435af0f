"""Queue statistics (a tenant's own, or the whole queue for admins) and the admin retention endpoint."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from comfyq.admin import apply_retention, queue_stats
from comfyq.api.auth import require_token
from comfyq.api.jobs_api import _json_body
from comfyq.api.schemas import RetentionRequest
from comfyq.api.services import services
from comfyq.settings import Settings

bp = Blueprint("stats", __name__)


@bp.get("/stats")
def stats() -> Response:
    caller = require_token()
    settings: Settings = current_app.config["COMFYQ_SETTINGS"]
    body = queue_stats(services().db, None if caller.is_admin else caller.tenant,
                       alive_seconds=3 * settings.heartbeat_seconds)
    body["scope"] = "all tenants" if caller.is_admin else caller.tenant
    return jsonify(body)


@bp.post("/admin/retention")
def retention() -> Response:
    require_token("admin")
    req = RetentionRequest.model_validate(_json_body())
    removed = apply_retention(services().db, services().storage, int(req.older_than_days * 86400))
    return jsonify({**removed, "older_than_days": req.older_than_days})
