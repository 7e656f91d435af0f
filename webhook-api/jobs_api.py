"""Job routes: submit (POST /jobs) and read (GET /jobs/<id>)."""

from __future__ import annotations

import logging
from typing import Any

from comfyq_api.api_errors import ApiError
from comfyq_api.auth import require_token
from comfyq_api.graph_check import graph_problems
from comfyq_api.schemas import JobRequest
from comfyq_api.services import services
from flask import Blueprint, Response, current_app, jsonify, request, url_for

from comfyq.jobs import NewJob
from comfyq.settings import Settings
from comfyq.storage import Storage, StorageFailure
from comfyq.workflows import ParamError

log = logging.getLogger(__name__)
bp = Blueprint("jobs", __name__)

PUBLIC_FIELDS = ("id", "status", "workflow", "params", "priority", "attempts", "max_attempts", "progress",
                 "current_node", "timeout_seconds", "cancel_requested", "callback_url", "error")
TIME_FIELDS = ("created_at", "run_at", "started_at", "finished_at", "deadline")


def _json_body() -> Any:
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send the job as JSON with Content-Type: application/json")
    body = request.get_json(silent=True)
    if body is None:
        raise ApiError(400, "invalid_json", "the request body is not valid JSON")
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    return body


def build_job(req: JobRequest, tenant: str, settings: Settings) -> NewJob:
    """Validate a request against the templates and limits and turn it into a NewJob; raises ApiError."""
    if not settings.priority_min <= req.priority <= settings.priority_max:
        raise ApiError(422, "validation_error", "priority is out of range", {
            "priority": f"must be between {settings.priority_min} and {settings.priority_max}"})
    if req.workflow is not None:
        workflow = services().workflows.get(req.workflow)
        if workflow is None:
            raise ApiError(422, "unknown_workflow", f"no workflow named {req.workflow!r}",
                           {"known": sorted(services().workflows)})
        too_long = {name: f"longer than {settings.max_prompt_chars} characters"
                    for name, value in req.params.items()
                    if isinstance(value, str) and len(value) > settings.max_prompt_chars}
        if too_long:
            raise ApiError(422, "invalid_params", "some params are invalid", too_long)
        try:
            params = workflow.resolve_params(req.params)
        except ParamError as exc:
            raise ApiError(422, "invalid_params", "some params are invalid", exc.details) from exc
        graph = workflow.render(params)
    else:
        graph = req.graph or {}
        params = {}
        problems = graph_problems(graph, settings.max_graph_nodes)
        if problems:
            raise ApiError(422, "invalid_graph", "the graph is not a valid ComfyUI API-format graph", problems)
    return NewJob(graph=graph, workflow=req.workflow, params=params, priority=req.priority,
                  max_attempts=req.max_attempts or settings.default_max_attempts, tenant=tenant,
                  timeout_seconds=req.timeout_seconds, deadline=req.deadline, callback_url=req.callback_url)


def _signed(storage: Storage, key: str, expires: int) -> str | None:
    """A download URL, or None when the backend has none or cannot sign right now (the job is still shown)."""
    try:
        return storage.presigned_url(key, expires)
    except StorageFailure as exc:
        log.warning("cannot sign a URL for %s: %s", key, exc, extra={"action": "presign"})
        return None


def present(row: dict[str, Any]) -> dict[str, Any]:
    """The public view of a job row; stored outputs get a download URL where the backend can sign one."""
    out = {key: row.get(key) for key in PUBLIC_FIELDS}
    storage = services().storage
    expires = current_app.config["COMFYQ_SETTINGS"].s3_presign_seconds
    out["outputs"] = [{**output, "url": _signed(storage, output["key"], expires)}
                      for output in row.get("outputs") or []]
    for key in TIME_FIELDS:
        value = row.get(key)
        out[key] = value.isoformat() if value is not None else None
    return out


@bp.post("/jobs")
def submit_job() -> tuple[Response, int, dict[str, str]]:
    caller = require_token()
    settings: Settings = current_app.config["COMFYQ_SETTINGS"]
    req = JobRequest.model_validate(_json_body())
    new_job = build_job(req, caller.tenant, settings)
    row = services().queue.enqueue(new_job)
    location = url_for("jobs.get_job", job_id=row["id"])
    return jsonify({"id": row["id"], "status": row["status"]}), 202, {"Location": location}


@bp.get("/jobs/<int:job_id>")
def get_job(job_id: int) -> Response:
    caller = require_token()
    row = services().queue.get(job_id, caller.tenant)
    if row is None:
        raise ApiError(404, "not_found", f"no job {job_id}")
    return jsonify(present(row))
