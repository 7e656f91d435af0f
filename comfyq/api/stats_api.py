"""Queue statistics: a tenant's own, or the whole queue for an operator token."""

from __future__ import annotations

from flask import Blueprint, Response, current_app

from comfyq.admin import queue_stats
from comfyq.api.auth import require_token
from comfyq.api.responses import Stats, answer
from comfyq.api.services import services
from comfyq.settings import Settings

bp = Blueprint("stats", __name__)


@bp.get("/stats")
def stats() -> Response:
    caller = require_token()
    settings: Settings = current_app.config["COMFYQ_SETTINGS"]
    body = queue_stats(services().db, None if caller.is_operator else caller.tenant,
                       alive_seconds=3 * settings.heartbeat_seconds)
    body["scope"] = "all tenants" if caller.is_operator else caller.tenant
    return answer(Stats, body)
