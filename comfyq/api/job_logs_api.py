"""GET /jobs/{id}/logs: a job's whole history (every state change with its time, attempt, worker, duration,
message and details), oldest first, a page at a time, for the job's own tenant only."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from comfyq.api.api_errors import ApiError
from comfyq.api.auth import require_token
from comfyq.api.pagination import decode_cursor, encode_cursor, page_limit
from comfyq.api.responses import JobLogPage, answer
from comfyq.api.services import services
from comfyq.settings import Settings

bp = Blueprint("job_logs", __name__)

LOGS_CURSOR = "log"  # `log:<job id>:<the last log id seen>`: a cursor names its job, so another job's is refused


@bp.get("/jobs/<int:job_id>/logs")
def job_logs(job_id: int) -> Response:
    caller = require_token()
    args = request.args
    unknown = set(args) - {"limit", "cursor"}
    if unknown:
        raise ApiError(400, "invalid_query", "unknown query parameters", {"unknown": sorted(unknown)})
    settings: Settings = current_app.config["COMFYQ_SETTINGS"]
    limit = page_limit(args, settings.list_page_max)
    after_id = 0  # an empty or absent cursor: from the first entry
    if args.get("cursor"):
        cursor_job, after_id = decode_cursor(args["cursor"], LOGS_CURSOR, 2)
        if cursor_job != job_id:
            raise ApiError(400, "invalid_cursor", "the cursor belongs to another job's history")
    rows = services().queue.history(job_id, caller.tenant, after_id=after_id, limit=limit + 1)
    if rows is None:
        raise ApiError(404, "not_found", f"no job {job_id}")
    page = rows[:limit]
    next_cursor = encode_cursor(LOGS_CURSOR, job_id, page[-1]["id"]) if len(rows) > limit else None
    return answer(JobLogPage, {"logs": page, "next_cursor": next_cursor})
