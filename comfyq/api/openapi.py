"""The API's OpenAPI 3.1 description (JSON Schema 2020-12), served without a token on GET /openapi.json.

Request bodies come from the pydantic models in schemas.py, with the rules those models check in code (exactly
one of workflow/graph, the priority range of the settings) added. Responses come from the models of responses.py
where the routes answer through them (RESPONSE_MODELS); the others are still written out here, next to the error
codes each route can answer. The document is built from the app's settings, so limits that are settings
(priority range, page size, body sizes, batch size) are the ones this deployment enforces.

tests/test_openapi.py validates the document and fuzzes the API against it with schemathesis: a route that
answers a status, a header or a body not described here fails that test."""

from __future__ import annotations

import copy
from importlib import metadata
from typing import Any

from flask import Blueprint, Response, current_app, jsonify
from pydantic import BaseModel

from comfyq.api.pagination import default_page
from comfyq.api.request_body import BYTES_PER_VALUE
from comfyq.api.responses import RESPONSE_MODELS
from comfyq.api.schemas import BatchRequest, JobRequest, RetentionRequest, TenantSettings, TokenRequest
from comfyq.callback_secrets import MAX_ACTIVE
from comfyq.jobs import STATUSES
from comfyq.settings import Settings
from comfyq.tokens import ROLES, TENANT_PATTERN

OPENAPI_VERSION = "3.1.0"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
REF = "#/components/schemas/"
EXTENSION = "comfyq_openapi"
MAX_JOB_ID = 2**63 - 1  # job ids are Postgres bigints

bp = Blueprint("openapi", __name__)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


# Error codes by status: what each route can answer besides its success. The descriptions are shared.
ERROR_DESCRIPTIONS = {
    400: "The request is malformed (see `error.code`).",
    401: "No valid `Authorization: Bearer <token>` header (missing, unknown or revoked token).",
    403: "The token is valid but may not do this: its role is too low, or it names another tenant than its own "
         "(only an operator token acts across tenants).",
    404: "No such resource for this tenant (another tenant's job is a 404 too).",
    409: "The request conflicts with the resource's current state.",
    413: "The body or the batch is larger than this deployment allows.",
    415: "The body is not sent as `Content-Type: application/json`.",
    422: "The body is JSON but not a valid request; nothing was written.",
    429: "A per-tenant limit (request rate or queued-job quota) refused the request; retry after `Retry-After`.",
    503: "The database (or, for retention, the object storage) is unavailable; retry after `Retry-After` seconds. "
         "`database_unavailable`: nothing was written. `outcome_unknown` (writes only): the connection was lost "
         "while the write was under way, so it may have taken effect; retry with the same `Idempotency-Key`.",
}
AUTH_ERRORS: dict[int, list[str]] = {401: ["unauthorized"], 503: ["database_unavailable"]}
# Routes that write: a connection lost during the write leaves its outcome unknown.
WRITE_ERRORS: dict[int, list[str]] = {**AUTH_ERRORS, 503: ["database_unavailable", "outcome_unknown"]}
BODY_ERRORS: dict[int, list[str]] = {400: ["invalid_json"], 413: ["request_entity_too_large"],
                                     415: ["unsupported_media_type"]}
CANCEL_ERRORS: dict[int, list[str]] = {**WRITE_ERRORS, 404: ["not_found"], 409: ["not_cancelable"],
                                      429: ["rate_limited"]}
OPERATION_ERRORS: dict[tuple[str, str], dict[int, list[str]]] = {
    ("get", "/healthz"): {},
    ("get", "/readyz"): {},  # its 503 is a Health body, written out with the route
    ("get", "/metrics"): {401: ["unauthorized"]},
    ("get", "/openapi.json"): {},
    ("post", "/jobs"): {
        **WRITE_ERRORS, **BODY_ERRORS, 400: ["invalid_json", "invalid_idempotency_key"],
        403: ["raw_graphs_not_allowed"], 409: ["idempotency_key_reused"],
        422: ["validation_error", "unknown_workflow", "invalid_params", "invalid_graph", "comfyui_validation_failed",
              "constraint_violation"],
        429: ["rate_limited", "quota_exceeded"]},
    ("post", "/jobs/batch"): {
        **WRITE_ERRORS, **BODY_ERRORS, 400: ["invalid_json", "invalid_idempotency_key"],
        409: ["idempotency_key_reused"], 413: ["request_entity_too_large", "batch_too_large"],
        422: ["validation_error", "invalid_batch_items", "constraint_violation"],
        429: ["rate_limited", "quota_exceeded"]},
    ("get", "/jobs"): {**AUTH_ERRORS, 400: ["invalid_query", "invalid_cursor"]},
    ("get", "/jobs/{job_id}"): {**AUTH_ERRORS, 404: ["not_found"]},
    ("get", "/jobs/{job_id}/outputs/{index}"): {**AUTH_ERRORS, 404: ["not_found", "output_missing"]},
    ("get", "/jobs/{job_id}/logs"): {**AUTH_ERRORS, 400: ["invalid_query", "invalid_cursor"], 404: ["not_found"]},
    ("post", "/jobs/{job_id}/cancel"): CANCEL_ERRORS,
    ("delete", "/jobs/{job_id}"): CANCEL_ERRORS,  # the same operation
    ("post", "/jobs/{job_id}/retry"): {**WRITE_ERRORS, 404: ["not_found"], 409: ["not_retryable"],
                                       429: ["rate_limited", "quota_exceeded"]},
    ("get", "/stats"): {**AUTH_ERRORS},
    ("post", "/admin/retention"): {**AUTH_ERRORS, **BODY_ERRORS, 403: ["forbidden"], 422: ["validation_error"],
                                   503: ["database_unavailable", "outcome_unknown", "storage_unavailable"]},
    ("get", "/admin/workers"): {**AUTH_ERRORS, 400: ["invalid_query"], 403: ["forbidden"]},
    ("delete", "/admin/workers/{worker_id}"): {**WRITE_ERRORS, 403: ["forbidden"], 404: ["not_found"],
                                               409: ["worker_alive"]},
    ("get", "/admin/tokens"): {**AUTH_ERRORS, 400: ["invalid_query"], 403: ["forbidden"]},
    ("post", "/admin/tokens"): {**WRITE_ERRORS, **BODY_ERRORS, 403: ["forbidden"], 422: ["validation_error"]},
    ("delete", "/admin/tokens/{ref}"): {**WRITE_ERRORS, 403: ["forbidden"], 404: ["not_found"]},
    ("get", "/admin/tenants"): {**AUTH_ERRORS, 400: ["invalid_query"], 403: ["forbidden"]},
    ("put", "/admin/tenants/{name}"): {**WRITE_ERRORS, **BODY_ERRORS, 403: ["forbidden"], 422: ["validation_error"]},
    ("get", "/admin/tenants/{name}/callback-secrets"): {**AUTH_ERRORS, 400: ["invalid_query"], 403: ["forbidden"],
                                                       404: ["not_found"]},
    ("post", "/admin/tenants/{name}/callback-secrets"): {**WRITE_ERRORS, 403: ["forbidden"], 404: ["not_found"],
                                                        409: ["too_many_callback_secrets"]},
    ("delete", "/admin/tenants/{name}/callback-secrets/{secret_id}"): {**WRITE_ERRORS, 403: ["forbidden"],
                                                                       404: ["not_found"]},
    ("get", "/workflows"): {**AUTH_ERRORS},
    ("get", "/workflows/{name}"): {**AUTH_ERRORS, 404: ["not_found"]},
}
PUBLIC_OPERATIONS = {("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics"), ("get", "/openapi.json")}
# The least role a bearer operation's token needs (comfyq.tokens.ROLES), stated per operation as
# `x-required-role`; those not named here need a submitter. tests/test_security_matrix.py holds the routes to it.
REQUIRED_ROLES = {
    **dict.fromkeys([("post", "/admin/retention"), ("get", "/admin/tokens"), ("post", "/admin/tokens"),
                     ("delete", "/admin/tokens/{ref}"), ("get", "/admin/tenants/{name}/callback-secrets"),
                     ("post", "/admin/tenants/{name}/callback-secrets"),
                     ("delete", "/admin/tenants/{name}/callback-secrets/{secret_id}")], "admin"),
    **dict.fromkeys([("get", "/admin/workers"), ("delete", "/admin/workers/{worker_id}"), ("get", "/admin/tenants"),
                     ("put", "/admin/tenants/{name}")], "operator"),
}

RETRY_AFTER = {"description": "Seconds to wait before trying again.", "required": True,
               "schema": {"type": "integer", "minimum": 1}}
WWW_AUTHENTICATE = {"description": "Always `Bearer realm=\"comfyq\"`.", "required": True, "schema": {"type": "string"}}
LOCATION = {"description": "The job's URL, `/jobs/{id}`.", "required": True,
            "schema": {"type": "string", "pattern": "^/jobs/[0-9]+$"}}


def _error_response(status: int, codes: list[str]) -> dict[str, Any]:
    schema = {"allOf": [_ref("Error"), {"type": "object", "properties": {"error": {
        "type": "object", "properties": {"code": {"enum": codes}}}}}]}
    response: dict[str, Any] = {
        "description": ERROR_DESCRIPTIONS[status] + " Codes: " + ", ".join(f"`{c}`" for c in codes) + ".",
        "content": {"application/json": {"schema": schema}}}
    if status in (429, 503):
        response["headers"] = {"Retry-After": RETRY_AFTER}
    elif status == 401:
        response["headers"] = {"WWW-Authenticate": WWW_AUTHENTICATE}
    return response


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema, **extra}}}


# Response schemas ---------------------------------------------------------------------------------------------
def _response_schemas() -> dict[str, Any]:
    status_enum = {"type": "string", "enum": sorted(STATUSES)}
    time = {"type": "string", "format": "date-time"}
    count = {"type": "integer", "minimum": 0}
    return {
        "Error": {
            "type": "object", "required": ["error"], "additionalProperties": False,
            "description": "The one shape of every error answer.",
            "properties": {"error": {
                "type": "object", "required": ["code", "message", "details"], "additionalProperties": False,
                "properties": {
                    "code": {"type": "string", "description": "Stable, machine-readable; branch on this."},
                    "message": {"type": "string", "description": "For humans; may change."},
                    "details": {"description": "Structured detail; `{}` when there is none. For "
                                               "`validation_error` from the request model: a list of "
                                               "`{field, problem, type}`; for param and graph problems: an object "
                                               "keyed by param name or node id.",
                                "type": ["object", "array"]}}}},
            "examples": [{"error": {"code": "invalid_params", "message": "some params are invalid",
                                    "details": {"steps": "0 is smaller than the minimum 1"}}}]},
        "Submitted": {
            "type": "object", "required": ["id", "status"], "additionalProperties": False,
            "description": "A job written to the queue (or, on an idempotent replay, the job written the first time).",
            "properties": {"id": {"type": "integer"}, "status": status_enum},
            "examples": [{"id": 17, "status": "queued"}]},
        "BatchSubmitted": {
            "type": "object", "required": ["count", "jobs"], "additionalProperties": False,
            "properties": {"count": count, "jobs": {"type": "array", "items": _ref("Submitted"),
                                                    "description": "In the order of the request's items."}},
            "examples": [{"count": 2, "jobs": [{"id": 18, "status": "queued"}, {"id": 19, "status": "queued"}]}]},
        "CancelResult": {
            "type": "object", "required": ["id", "status", "cancel_requested"], "additionalProperties": False,
            "description": "`status` is `canceled` for a job that was queued; a running job stays `running` with "
                           "`cancel_requested` until its worker stops it (within a heartbeat).",
            "properties": {"id": {"type": "integer"}, "status": status_enum, "cancel_requested": {"const": True}}},
        "JobOutput": {
            "type": "object", "required": ["key", "url"],
            "description": "One stored output file.",
            "properties": {
                "key": {"type": "string", "description": "The object key in storage, "
                        "`{installation}/{job}/{attempt}/{file}` (`{job}/{attempt}/{file}` for jobs stored before "
                        "installation ids)."},
                "size": {"type": "integer", "minimum": 0, "description": "Bytes."},
                "content_type": {"type": "string"},
                "location": {"type": "string", "description": "`s3://bucket/key`, or `local:{key}` for the local "
                             "backend (never a path on a host)."},
                "node_id": {"type": "string", "description": "The graph node that produced it."},
                "filename": {"type": "string", "description": "The file name ComfyUI gave it."},
                "url": {"type": "string",
                        "description": "Where to download it: a presigned URL of the object storage, valid for "
                                       "COMFYQ_S3_PRESIGN_SECONDS; with the local backend (or when the storage "
                                       "cannot sign right now) the API's own `/jobs/{id}/outputs/{n}`, which needs "
                                       "the bearer token."}}},
        "JobError": {
            "type": "object", "required": ["type", "message", "retryable"],
            "description": "Why the last attempt failed (or why the job expired).",
            "properties": {
                "type": {"type": "string", "examples": ["validation_error", "execution_error", "timeout",
                                                        "comfyui_unavailable", "lease_expired",
                                                        "deadline_exceeded"]},
                "message": {"type": "string"}, "retryable": {"type": "boolean"},
                "node": {"type": "string", "description": "The node that failed, when known."},
                "details": {"type": "object", "description": "E.g. ComfyUI's own `node_errors` for a rejection."}}},
        "Job": {
            "type": "object", "additionalProperties": False,
            "required": ["id", "status", "workflow", "params", "priority", "attempts", "max_attempts", "progress",
                         "current_node", "timeout_seconds", "cancel_requested", "callback_url", "error", "outputs",
                         "created_at", "run_at", "started_at", "finished_at", "deadline"],
            "properties": {
                "id": {"type": "integer"},
                "status": status_enum,
                "workflow": _nullable({"type": "string"}) | {"description": "null for a raw graph."},
                "params": {"type": "object", "description": "The template params with defaults filled in "
                                                            "(random seeds as drawn); `{}` for a raw graph."},
                "priority": {"type": "integer"},
                "attempts": {"type": "integer", "minimum": 0},
                "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100},
                "progress": {"type": "number", "minimum": 0, "maximum": 1},
                "current_node": _nullable({"type": "string"}),
                "timeout_seconds": _nullable({"type": "integer"}),
                "cancel_requested": {"type": "boolean"},
                "callback_url": _nullable({"type": "string"}),
                "error": _nullable(_ref("JobError")),
                "outputs": {"type": "array", "items": _ref("JobOutput")},
                "created_at": time, "run_at": time | {"description": "When the job becomes (or became) eligible."},
                "started_at": _nullable(time), "finished_at": _nullable(time), "deadline": _nullable(time),
                "deduplicated": {"const": True, "description": "Only in a POST /jobs dedupe answer."}},
            "examples": [{
                "id": 17, "status": "succeeded", "workflow": "txt2img",
                "params": {"prompt": "a red fox in snow", "seed": 42, "negative_prompt": "", "width": 512,
                           "height": 512, "steps": 20, "cfg": 7.0,
                           "checkpoint": "v1-5-pruned-emaonly.safetensors"},
                "priority": 5, "attempts": 1, "max_attempts": 3, "progress": 1.0, "current_node": None,
                "timeout_seconds": None, "cancel_requested": False, "callback_url": None, "error": None,
                "outputs": [{"key": "17/1/comfyq_00001_.png", "size": 48213, "content_type": "image/png",
                             "location": "s3://comfyq-outputs/17/1/comfyq_00001_.png", "node_id": "9",
                             "filename": "comfyq_00001_.png", "url": "https://minio.example:9000/..."}],
                "created_at": "2026-01-05T10:00:00.120000+00:00", "run_at": "2026-01-05T10:00:00.120000+00:00",
                "started_at": "2026-01-05T10:00:01.300000+00:00", "finished_at": "2026-01-05T10:00:07.900000+00:00",
                "deadline": None}]},
        "DeduplicatedJob": {
            "description": "A succeeded job with the same request, returned instead of a new one (`dedupe: true`).",
            "allOf": [_ref("Job"), {"type": "object", "required": ["deduplicated"]}]},
        "JobList": {
            "type": "object", "required": ["jobs", "next_cursor"], "additionalProperties": False,
            "properties": {
                "jobs": {"type": "array", "items": _ref("Job"), "description": "Newest first."},
                "next_cursor": _nullable({"type": "string"}) | {
                    "description": "Pass as `cursor` for the next page; null on the last page."}}},
        "Stats": {
            "type": "object", "additionalProperties": False,
            "required": ["queued", "running", "by_priority", "oldest_queued_seconds", "finished_last_hour",
                         "workers", "scope"],
            "properties": {
                "queued": count, "running": count,
                "by_priority": {
                    "type": "object", "required": ["queued", "running"], "additionalProperties": False,
                    "description": "Jobs by status, then by priority (the priority as a string key).",
                    "properties": {s: {"type": "object", "additionalProperties": count}
                                   for s in ("queued", "running")}},
                "oldest_queued_seconds": _nullable({"type": "number", "minimum": 0}),
                "finished_last_hour": {"type": "object", "additionalProperties": count,
                                       "description": "Jobs that ended in the last hour, by final status."},
                "workers": {"type": "object", "required": ["alive", "silent", "dead"], "additionalProperties": False,
                            "description": "Workers of the whole deployment (not per tenant): alive, silent (no "
                                           "recent heartbeat, not declared dead yet) and dead.",
                            "properties": {"alive": count, "silent": count, "dead": count}},
                "scope": {"type": "string", "description": "`all tenants` for an operator token, else the tenant."}},
            "examples": [{"queued": 4, "running": 1, "by_priority": {"queued": {"9": 1, "5": 1, "0": 2},
                                                                   "running": {"0": 1}},
                          "oldest_queued_seconds": 12.5, "finished_last_hour": {"succeeded": 40, "failed": 1},
                          "workers": {"alive": 2, "silent": 0, "dead": 0}, "scope": "acme"}]},
        "RetentionResult": {
            "type": "object", "additionalProperties": False,
            "required": ["jobs_deleted", "logs_deleted", "objects_deleted", "older_than_days", "scope"],
            "properties": {"jobs_deleted": count, "logs_deleted": count, "objects_deleted": count,
                           "older_than_days": {"type": "number"},
                           "scope": {"type": "string", "description": "The tenant whose jobs were deleted, or "
                                                                      "`all tenants` (an operator naming none)."}},
            "examples": [{"jobs_deleted": 2, "logs_deleted": 6, "objects_deleted": 2, "older_than_days": 30,
                          "scope": "acme"}]},
        **_admin_schemas(time, count),
        "Health": {"type": "object", "required": ["status"], "additionalProperties": False,
                   "properties": {"status": {"type": "string", "enum": ["ok", "ready", "unavailable"]},
                                  "reason": {"type": "string", "description": "Why the database does not answer; "
                                             "only for an admin or operator token."}}},
        "NodeLimit": {
            "type": "object", "required": ["node", "class_type", "input", "type"],
            "description": "What ComfyUI accepts at one input a param fills, from the node catalogue a worker "
                           "published.",
            "properties": {"node": {"type": "string"}, "class_type": {"type": "string"},
                           "input": {"type": "string"}, "type": {"type": "string"},
                           "min": {"type": "number"}, "max": {"type": "number"}, "step": {"type": "number"},
                           "choices": {"type": "array"}}},
        "WorkflowParam": {
            "type": "object", "required": ["type", "required"], "additionalProperties": False,
            "properties": {
                "type": {"type": "string", "enum": ["string", "integer", "number", "boolean"]},
                "required": {"type": "boolean"},
                "default": {"description": "The value used when the param is omitted; the string `random` for a "
                                           "seed drawn per job (and stored with it)."},
                "min": {"type": "number"}, "max": {"type": "number"},
                "min_length": {"type": "integer", "minimum": 0}, "max_length": {"type": "integer", "minimum": 0},
                "multiple_of": {"type": "integer"}, "description": {"type": "string"},
                "node_limits": {"type": "array", "items": _ref("NodeLimit"),
                                "description": "Only on GET /workflows/{name}, once a worker has published "
                                               "ComfyUI's node catalogue."}}},
        "Workflow": {
            "type": "object", "required": ["name", "description", "params"], "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "description": {"type": "string"},
                           "params": {"type": "object", "additionalProperties": _ref("WorkflowParam")}},
            "examples": [{"name": "txt2img", "description": "Text to image with one checkpoint.", "params": {
                "prompt": {"type": "string", "required": True, "min_length": 1, "max_length": 10000},
                "seed": {"type": "integer", "required": False, "default": "random", "min": 0,
                         "max": 18446744073709551615},
                "steps": {"type": "integer", "required": False, "default": 20, "min": 1, "max": 150}}}]},
        "WorkflowList": {
            "type": "object", "required": ["workflows"], "additionalProperties": False,
            "properties": {"workflows": {"type": "array", "items": _ref("Workflow"),
                                         "description": "Sorted by name."}}},
    }


def _model_responses(components: dict[str, Any]) -> dict[str, Any]:
    """The response schemas written from the models the routes answer through (responses.py); the models they
    nest go into components under their own names."""
    schemas = {}
    for model in RESPONSE_MODELS:
        schema = model.model_json_schema(mode="serialization", ref_template=REF + "{model}")
        for name, definition in schema.pop("$defs", {}).items():
            components.setdefault(name, definition)
        schemas[model.__name__] = schema
    return schemas


def _admin_schemas(time: dict[str, Any], count: dict[str, Any]) -> dict[str, Any]:
    """The answers of the /admin routes: workers, tokens and tenants."""
    tenant = {"type": "string", "pattern": TENANT_PATTERN}
    token: dict[str, Any] = {
        "id": {"type": "integer"}, "tenant": tenant,
        "role": {"type": "string", "enum": list(ROLES)},
        "token_prefix": {"type": "string", "description": "The secret's first 11 characters: names the token in "
                                                          "lists and revocations, and is not enough to use it."},
        "description": {"type": "string"}, "created_at": time,
        "last_used_at": _nullable(time) | {"description": "Updated at most once a minute."},
        "revoked_at": _nullable(time)}
    token_example = {"id": 7, "tenant": "acme", "role": "submitter", "token_prefix": "cq_AbCdEfGh",
                     "description": "n8n", "created_at": "2026-01-05T10:00:00+00:00", "last_used_at": None,
                     "revoked_at": None}
    return {
        "Worker": {
            "type": "object", "additionalProperties": False,
            "required": ["id", "status", "host", "pid", "comfyui_url", "current_job_id", "jobs_done",
                         "dependencies_down", "started_at", "heartbeat_at", "heartbeat_age_seconds"],
            "properties": {
                "id": {"type": "string"},
                "status": {"type": "string", "enum": ["running", "draining", "stopped", "dead"],
                           "description": "`dead`: no heartbeat for COMFYQ_WORKER_DEAD_AFTER_SECONDS, declared by "
                                          "another worker; running again if it heartbeats again."},
                "host": {"type": "string"}, "pid": {"type": "integer"}, "comfyui_url": {"type": "string"},
                "current_job_id": _nullable({"type": "integer"}) | {"description": "Of any tenant."},
                "jobs_done": count,
                "dependencies_down": {"type": "array", "items": {"type": "string"},
                                      "description": "What the worker sees down now (`comfyui`, `database`, "
                                                     "`storage`, `redis`): it claims nothing meanwhile."},
                "started_at": time, "heartbeat_at": time,
                "heartbeat_age_seconds": {"type": "number", "description": "Seconds since the last heartbeat; a "
                                          "live worker beats every COMFYQ_HEARTBEAT_SECONDS."}},
            "examples": [{"id": "gpu-1", "status": "running", "host": "gpu-1", "pid": 4242,
                          "comfyui_url": "http://gpu-1:8188", "current_job_id": 17, "jobs_done": 1234,
                          "dependencies_down": [], "started_at": "2026-01-05T09:00:00+00:00",
                          "heartbeat_at": "2026-01-05T10:00:00+00:00", "heartbeat_age_seconds": 2.5}]},
        "WorkerList": {
            "type": "object", "required": ["workers"], "additionalProperties": False,
            "properties": {"workers": {"type": "array", "items": _ref("Worker"),
                                       "description": "Most recent heartbeat first."}}},
        "Token": {
            "type": "object", "additionalProperties": False, "required": list(token), "properties": token,
            "description": "A token as listings show it: never its secret, which only its creation answers.",
            "examples": [token_example]},
        "TokenList": {
            "type": "object", "required": ["tokens"], "additionalProperties": False,
            "properties": {"tokens": {"type": "array", "items": _ref("Token"), "description": "By id."}}},
        "NewToken": {
            "type": "object", "additionalProperties": False, "required": [*token, "token"],
            "properties": {**token, "token": {"type": "string", "description": "The secret: shown this once, "
                                                                              "stored only as a hash."}},
            "examples": [token_example | {"token": "cq_AbCdEfGh0123456789abcdefghijklmnopqrstuvw"}]},
        "Tenant": {
            "type": "object", "additionalProperties": False,
            "required": ["name", "allow_raw_graphs", "max_queued_jobs", "rate_per_second", "rate_burst",
                         "created_at", "active_tokens"],
            "properties": {
                "name": tenant, "allow_raw_graphs": {"type": "boolean"},
                "max_queued_jobs": _nullable(count) | {"description": "null: COMFYQ_DEFAULT_MAX_QUEUED_JOBS."},
                "rate_per_second": _nullable({"type": "number"}) | {
                    "description": "null: COMFYQ_DEFAULT_RATE_PER_SECOND."},
                "rate_burst": _nullable({"type": "integer", "minimum": 1}) | {
                    "description": "null: COMFYQ_DEFAULT_RATE_BURST."},
                "created_at": time, "active_tokens": count},
            "examples": [{"name": "acme", "allow_raw_graphs": False, "max_queued_jobs": 100000,
                          "rate_per_second": 50.0, "rate_burst": 200, "created_at": "2026-01-05T10:00:00+00:00",
                          "active_tokens": 2}]},
        "TenantList": {
            "type": "object", "required": ["tenants"], "additionalProperties": False,
            "properties": {"tenants": {"type": "array", "items": _ref("Tenant"), "description": "By name."}}},
        **_callback_secret_schemas(tenant, time),
    }


def _callback_secret_schemas(tenant: dict[str, Any], time: dict[str, Any]) -> dict[str, Any]:
    """The answers of /admin/tenants/{name}/callback-secrets."""
    secret: dict[str, Any] = {
        "id": {"type": "integer"}, "tenant": tenant,
        "secret_prefix": {"type": "string", "description": "The secret's first 14 characters (`whsec_` and 8 more): "
                                                           "names it in lists, and is not enough to sign."},
        "source": {"type": "string", "enum": ["api", "setting"],
                   "description": "`api`: made by this route; `setting`: the deprecated COMFYQ_CALLBACK_SECRET, "
                                  "stored by the first worker that started with it."},
        "created_at": time,
        "retired_at": _nullable(time) | {"description": "null while it signs the tenant's callbacks."}}
    example = {"id": 3, "tenant": "acme", "secret_prefix": "whsec_AbCdEfGh", "source": "api",
               "created_at": "2026-01-05T10:00:00+00:00", "retired_at": None}
    return {
        "CallbackSecret": {
            "type": "object", "additionalProperties": False, "required": list(secret), "properties": secret,
            "description": "A callback signing secret as listings show it: never the secret, which only its "
                           "creation answers.",
            "examples": [example]},
        "CallbackSecretList": {
            "type": "object", "required": ["callback_secrets"], "additionalProperties": False,
            "properties": {"callback_secrets": {"type": "array", "items": _ref("CallbackSecret"),
                                                "description": "By id, retired ones included."}}},
        "NewCallbackSecret": {
            "type": "object", "additionalProperties": False, "required": [*secret, "secret"],
            "properties": {**secret, "secret": {
                "type": "string", "pattern": "^whsec_[A-Za-z0-9+/]+={0,2}$",
                "description": "The secret, shown this once: give it to the tenant's receiver, which verifies with "
                               "any Standard Webhooks library."}},
            "examples": [example | {"secret": "whsec_AbCdEfGh0123456789abcdefghijklmnopqrstuvwx="}]},
    }


# Request schemas ----------------------------------------------------------------------------------------------
FIELD_DESCRIPTIONS = {
    "workflow": "A template name (GET /workflows lists them). Exactly one of `workflow` and `graph`.",
    "params": "The template's params; unknown names, wrong types and out-of-range values are refused. Omitted "
              "params take their defaults (a `random` seed is drawn and stored).",
    "graph": "A raw ComfyUI API-format graph `{node_id: {class_type, inputs}}`; only for tenants allowed raw "
             "graphs.",
    "priority": "Higher runs first.",
    "max_attempts": "Attempts before the job fails (default COMFYQ_DEFAULT_MAX_ATTEMPTS).",
    "timeout_seconds": "Per attempt (default COMFYQ_JOB_TIMEOUT_SECONDS).",
    "deadline": "A job still queued at this time becomes `expired`. Needs a time zone.",
    "callback_url": "Receives a signed POST (Standard Webhooks) when the job ends.",
    "dedupe": "When a job with the same workflow and params (or graph) already succeeded for this tenant, "
              "answer it (200, `deduplicated: true`) instead of queueing a new one. Not allowed in batches.",
    "older_than_days": "Delete jobs that finished more than this many days ago, with their logs and outputs. A "
                       "JSON number: a string (`\"30\"`) or a boolean is refused.",
    "role": "submitter: the tenant's jobs; admin: also the tenant's tokens and retention; operator: the whole "
            "deployment. A token creates tokens of its own role or lower.",
    "description": "A note shown in listings.",
    "allow_raw_graphs": "The tenant's tokens may submit API-format graphs, not only templates.",
    "max_queued_jobs": "Quota of queued jobs; left out: COMFYQ_DEFAULT_MAX_QUEUED_JOBS.",
    "rate_per_second": "Sustained write requests per second; left out: COMFYQ_DEFAULT_RATE_PER_SECOND.",
    "rate_burst": "Requests allowed at once above the rate; left out: COMFYQ_DEFAULT_RATE_BURST.",
}


def _model_schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    """model_json_schema() with its $defs moved into components (refs rewritten to point there)."""
    schema = model.model_json_schema(ref_template=REF + "{model}")
    for name, definition in schema.pop("$defs", {}).items():
        components.setdefault(name, definition)
    for name, prop in schema.get("properties", {}).items():
        if name in FIELD_DESCRIPTIONS:
            prop["description"] = FIELD_DESCRIPTIONS[name]
    return schema


def _request_schemas(settings: Settings, components: dict[str, Any]) -> dict[str, Any]:
    job = _model_schema(JobRequest, components)
    job["properties"]["priority"].update(minimum=settings.priority_min, maximum=settings.priority_max)
    job["properties"]["params"]["description"] += (
        f" String values are at most {settings.max_prompt_chars} characters.")
    job["properties"]["graph"]["description"] += f" At most {settings.max_graph_nodes} nodes."
    # What graph_check.py checks of each node (links to missing nodes aside, which a schema cannot say).
    job["properties"]["graph"]["anyOf"][0].update(
        minProperties=1, maxProperties=settings.max_graph_nodes,
        propertyNames={"minLength": 1, "description": "A node id; links name it."},
        additionalProperties={
            "type": "object", "required": ["class_type"],
            "properties": {"class_type": {"type": "string", "minLength": 1},
                           "inputs": {"type": "object", "description": "Values, or links `[node_id, output index]`."}}})
    # What JobRequest's model validator checks: exactly one source, and params only with a template. Each branch
    # rules the other source out (absent or null), so a body with both matches neither.
    job["oneOf"] = [
        {"required": ["workflow"], "properties": {"workflow": {"type": "string"}, "graph": {"type": "null"}}},
        {"required": ["graph"], "properties": {"graph": {"type": "object"}, "workflow": {"type": "null"},
                                              "params": {"maxProperties": 0}}},
    ]
    job["description"] = ("One job: a template (`workflow` with `params`) or a raw graph (`graph`). Strings may "
                          "not contain NUL characters.")
    batch = _model_schema(BatchRequest, components)
    batch["properties"]["jobs"]["items"] = _ref("JobRequest")
    batch["properties"]["jobs"]["maxItems"] = settings.max_batch_jobs
    batch["properties"]["jobs"]["description"] = (
        f"1 to {settings.max_batch_jobs} jobs (COMFYQ_MAX_BATCH_JOBS), each as for POST /jobs but without "
        "`dedupe`. All are validated first: one bad item refuses the whole batch.")
    retention = _model_schema(RetentionRequest, components)
    retention["properties"]["tenant"]["description"] = (
        "Only this tenant's jobs. A tenant's admin may name only its own tenant (the default for it); an operator "
        "may name any, and without it deletes the old jobs of every tenant.")
    token = _model_schema(TokenRequest, components)
    token["properties"]["tenant"]["description"] = (
        "The tenant the token belongs to (created if missing); default: the caller's. A tenant's admin may name "
        "only its own.")
    return {"JobRequest": job, "BatchRequest": batch, "RetentionRequest": retention, "TokenRequest": token,
            "TenantSettings": _model_schema(TenantSettings, components)}


# Operations ---------------------------------------------------------------------------------------------------
def _operations(settings: Settings) -> dict[str, dict[str, Any]]:
    job_id = {"name": "job_id", "in": "path", "required": True,
              "schema": {"type": "integer", "minimum": 1, "maximum": MAX_JOB_ID}}
    idempotency_key = {
        "name": "Idempotency-Key", "in": "header", "required": False,
        "description": "Makes the submission safe to repeat: the same key with the same body answers 200 with "
                       "what the first request created (even when both arrive at once, only one is written); the "
                       "same key with another body is a 409. Keys are per tenant; surrounding spaces are "
                       "ignored.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255}}
    body_note = (f"Bodies are at most {settings.max_body_bytes} bytes (COMFYQ_MAX_BODY_BYTES) and "
                 f"{settings.max_body_bytes // BYTES_PER_VALUE} JSON values, counted while the body is read.")
    page_parameters = [
        {"name": "limit", "in": "query",
         "schema": {"type": "integer", "minimum": 1, "maximum": settings.list_page_max,
                    "default": default_page(settings.list_page_max)},
         "description": "Page size (at most COMFYQ_LIST_PAGE_MAX)."},
        {"name": "cursor", "in": "query", "schema": {"type": "string"},
         "description": "`next_cursor` of the previous page; empty or absent: the first page."}]
    job_example = {"workflow": "txt2img", "params": {"prompt": "a red fox in snow", "seed": 42}, "priority": 5}
    submit_job = {
        "operationId": "submitJob", "tags": ["jobs"], "summary": "Submit one job",
        "description": "Queue a template job or a raw graph. " + body_note + " With `dedupe: true` a "
                       "succeeded twin is answered instead (200, `deduplicated: true`). The tenant's rate "
                       "limit and queued-job quota apply (the quota not to a repeated Idempotency-Key).",
        "parameters": [idempotency_key],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": _ref("JobRequest"),
            "examples": {
                "template": {"value": job_example},
                "graph": {"value": {"graph": {
                    "1": {"class_type": "EmptyImage",
                          "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
                    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0],
                                                                "filename_prefix": "x"}}}}},
                "dedupe": {"value": {"workflow": "txt2img", "params": {"prompt": "a fox", "seed": 7},
                                     "dedupe": True}}}}}},
        "responses": {
            "202": _json(_ref("Submitted"), "Queued.") | {"headers": {"Location": LOCATION}},
            "200": _json({"oneOf": [_ref("Submitted"), _ref("DeduplicatedJob")]},
                         "An Idempotency-Key replay (the job the key created first, `{id, status}`), or "
                         "with `dedupe: true` the succeeded twin (the full job with `deduplicated: true`)."
                         ) | {"headers": {"Location": LOCATION}}}}
    return {
        "/jobs/batch": {
            "post": {
                "operationId": "submitBatch", "tags": ["jobs"], "summary": "Submit many jobs, all or nothing",
                "description": f"Bodies are at most {settings.max_batch_body_bytes} bytes "
                               f"(COMFYQ_MAX_BATCH_BODY_BYTES) and {settings.max_batch_body_bytes // BYTES_PER_VALUE} "
                               "JSON values; both, and the number of jobs, are counted while the body is read, and "
                               "a body over one is refused (413) before it is parsed. The quota counts every job "
                               "of the batch; the rate limit counts the request once.",
                "parameters": [idempotency_key],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": _ref("BatchRequest"),
                    "examples": {"two": {"value": {"jobs": [job_example, {**job_example, "priority": 0}]}}}}}},
                "responses": {"202": _json(_ref("BatchSubmitted"), "Every job was queued."),
                              "200": _json(_ref("BatchSubmitted"), "An Idempotency-Key replay: the jobs the key "
                                                                   "created first.")}}},
        "/jobs": {
            "post": submit_job,
            "get": {
                "operationId": "listJobs", "tags": ["jobs"], "summary": "List the tenant's jobs, newest first",
                "description": "Keyset pagination: follow `next_cursor` until it is null; each job appears once "
                               "even while new jobs arrive. Unknown query parameters are a 400.",
                "parameters": [
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": sorted(STATUSES)}},
                    {"name": "workflow", "in": "query", "schema": {"type": "string"},
                     "description": "Only jobs of this template."},
                    {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"},
                     "description": "Only jobs created at or after this time (ISO 8601 with a time zone)."},
                    *page_parameters],
                "responses": {"200": _json(_ref("JobList"), "One page.")}}},
        "/jobs/{job_id}": {
            "get": {
                "operationId": "getJob", "tags": ["jobs"], "summary": "Read one job",
                "description": "`progress` and `current_node` move while it runs; outputs come with download "
                               "URLs where the storage backend can sign them.",
                "parameters": [job_id], "responses": {"200": _json(_ref("Job"), "The job.")}},
            "delete": {
                "operationId": "deleteJob", "tags": ["jobs"], "summary": "Cancel a queued or running job",
                "description": "The same as POST /jobs/{job_id}/cancel: the same rules, errors and answer. The job "
                               "is canceled, not deleted: it stays readable with its history (retention deletes "
                               "finished jobs).",
                "parameters": [job_id], "responses": {"200": _json(_ref("CancelResult"), "Canceled or flagged.")}}},
        "/jobs/{job_id}/outputs/{index}": {
            "get": {
                "operationId": "getJobOutput", "tags": ["jobs"], "summary": "Download one output of a job",
                "description": "The n-th entry of the job's `outputs` (from 0). Local storage: the file itself, "
                               "with its Content-Type, an ETag, Last-Modified and range requests (206). Object "
                               "storage: a 302 to a signed URL valid for at most 5 minutes.",
                "parameters": [job_id, {"name": "index", "in": "path", "required": True,
                                        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_JOB_ID}}],
                "responses": {
                    "200": {"description": "The output's bytes.",
                            "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
                    "206": {"description": "The requested byte range.",
                            "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}}},
                    "302": {"description": "A signed URL of the object storage.",
                            "headers": {"Location": {"required": True, "schema": {"type": "string"}}}},
                    "304": {"description": "Not modified (If-None-Match matched the ETag)."}}}},
        "/jobs/{job_id}/logs": {
            "get": {
                "operationId": "getJobLogs", "tags": ["jobs"], "summary": "A job's history, oldest first",
                "description": "Every state change and event of the job (queued, claimed, retries, rescues, "
                               "cancels, the outcome, callback deliveries) with its time, attempt, worker, "
                               "duration, message and details. Keyset pagination as in GET /jobs: follow "
                               "`next_cursor` until it is null; a cursor of another job's history is a 400 "
                               "`invalid_cursor`. Unknown query parameters are a 400.",
                "parameters": [job_id, *page_parameters],
                "responses": {"200": _json(_ref("JobLogPage"), "One page.")}}},
        "/jobs/{job_id}/cancel": {
            "post": {
                "operationId": "cancelJob", "tags": ["jobs"], "summary": "Cancel a queued or running job",
                "description": "No body. A queued job is canceled at once; a running one is flagged and its worker "
                               "stops it. A finished job is a 409 with its status in `details.status`.",
                "parameters": [job_id], "responses": {"200": _json(_ref("CancelResult"), "Canceled or flagged.")}}},
        "/jobs/{job_id}/retry": {
            "post": {
                "operationId": "retryJob", "tags": ["jobs"], "summary": "Requeue a failed, canceled or expired job",
                "description": "No body. The job goes back to the queue with fresh attempts and no outputs; a "
                               "queued, running or succeeded job is a 409. The quota applies.",
                "parameters": [job_id], "responses": {"200": _json(_ref("Submitted"), "Queued again.")}}},
        "/stats": {
            "get": {
                "operationId": "getStats", "tags": ["stats"], "summary": "Queue statistics",
                "description": "The tenant's own queue; an operator token sees all tenants.",
                "responses": {"200": _json(_ref("Stats"), "Statistics.")}}},
        "/admin/retention": {
            "post": {
                "operationId": "applyRetention", "tags": ["admin"], "summary": "Delete old finished jobs",
                "description": "Admin role. Deletes finished jobs older than the age, with their logs and stored "
                               "outputs, and forgets Idempotency-Keys as old: a tenant's admin those of its own "
                               "tenant; an operator those of every tenant, or of the tenant it names.",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": _ref("RetentionRequest"), "examples": {
                        "month": {"value": {"older_than_days": 30}},
                        "one tenant": {"value": {"older_than_days": 30, "tenant": "acme"}}}}}},
                "responses": {"200": _json(_ref("RetentionResult"), "What was deleted.")}}},
        **_admin_operations(),
        "/workflows": {
            "get": {
                "operationId": "listWorkflows", "tags": ["workflows"], "summary": "List the templates",
                "responses": {"200": _json(_ref("WorkflowList"), "Every template with its params.")}}},
        "/workflows/{name}": {
            "get": {
                "operationId": "getWorkflow", "tags": ["workflows"], "summary": "Describe one template",
                "description": "As in the list, plus `node_limits` per param once a worker has published "
                               "ComfyUI's node catalogue (what ComfyUI itself accepts at the inputs it fills).",
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json(_ref("Workflow"), "The template.")}}},
        "/healthz": {
            "get": {
                "operationId": "healthz", "tags": ["health"], "summary": "Liveness",
                "description": "200 while the process answers; never touches the database.",
                "responses": {"200": _json(_ref("Health"), "`{\"status\": \"ok\"}`.")}}},
        "/readyz": {
            "get": {
                "operationId": "readyz", "tags": ["health"], "summary": "Readiness",
                "description": "200 when the database answers, else 503. The answer says no more than that, "
                               "except to an admin or operator token, which also gets `reason`.",
                "responses": {"200": _json(_ref("Health"), "`{\"status\": \"ready\"}`."),
                              "503": _json(_ref("Health"), "`{\"status\": \"unavailable\"}`: the database does "
                                           "not answer.") | {"headers": {"Retry-After": RETRY_AFTER}}}}},
        "/metrics": {
            "get": {
                "operationId": "metrics", "tags": ["health"], "summary": "Prometheus metrics",
                "description": "Request counts and latencies by endpoint and status, "
                               "`comfyq_api_jobs_submitted_total` and the queue gauges `comfyq_queue_*`, in the "
                               "Prometheus text format. With COMFYQ_METRICS_TOKEN set it needs `Authorization: "
                               "Bearer <COMFYQ_METRICS_TOKEN>` (that token, not an API token); unset, it is "
                               "open to anyone who reaches the port.",
                "responses": {"200": {"description": "The metrics.",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {
            "get": {
                "operationId": "openapi", "tags": ["health"], "summary": "This document",
                "responses": {"200": _json({"type": "object"}, "The OpenAPI 3.1 description of this API.")}}},
    }


def _admin_operations() -> dict[str, dict[str, Any]]:
    """Workers, tokens and tenants: what `comfyq workers`, `comfyq token` and `comfyq tenant` call."""
    tenant_query = {"name": "tenant", "in": "query", "required": False,
                    "schema": {"type": "string", "pattern": TENANT_PATTERN},
                    "description": "Only this tenant's tokens. A tenant's admin may name only its own."}
    return {
        "/admin/workers": {
            "get": {
                "operationId": "listWorkers", "tags": ["admin"], "summary": "The workers and what they see",
                "description": "Operator role (workers serve every tenant). Each worker with its heartbeat age, "
                               "current job, ComfyUI URL and the dependencies it sees down. Stopped workers only "
                               "with `all=true`. Unknown query parameters are a 400.",
                "parameters": [{"name": "all", "in": "query", "required": False, "schema": {"type": "boolean"},
                                "description": "Include stopped workers."}],
                "responses": {"200": _json(_ref("WorkerList"), "The workers.")}}},
        "/admin/workers/{worker_id}": {
            "delete": {
                "operationId": "forgetWorker", "tags": ["admin"], "summary": "Forget a dead or stopped worker",
                "description": "Operator role. Deletes the worker's row, so it leaves the list and the alerts. Only "
                               "a `dead` or `stopped` worker, or one silent for longer than "
                               "COMFYQ_WORKER_DEAD_AFTER_SECONDS: any other is a 409 `worker_alive`. Its jobs are "
                               "not touched (running ones are rescued when their leases expire), and a forgotten "
                               "worker that heartbeats again registers again.",
                "parameters": [{"name": "worker_id", "in": "path", "required": True,
                                "schema": {"type": "string", "minLength": 1},
                                "description": "The worker's `id`, as the list shows it."}],
                "responses": {"200": _json(_ref("Worker"), "Forgotten: the row as it was.")}}},
        "/admin/tokens": {
            "get": {
                "operationId": "listTokens", "tags": ["admin"], "summary": "List tokens (never their secrets)",
                "description": "Admin role: the tokens of the caller's tenant, operator tokens left out. Operator: "
                               "every tenant's, or the named tenant's.",
                "parameters": [tenant_query],
                "responses": {"200": _json(_ref("TokenList"), "The tokens, revoked ones included.")}},
            "post": {
                "operationId": "createToken", "tags": ["admin"], "summary": "Create a token",
                "description": "Admin role: a submitter or admin token of the caller's tenant. Operator: any role, "
                               "for any tenant (created if missing). The answer holds the secret, once.",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": _ref("TokenRequest"), "examples": {
                        "submitter": {"value": {"role": "submitter", "description": "n8n"}},
                        "for a tenant": {"value": {"tenant": "acme", "role": "admin"}}}}}},
                "responses": {"201": _json(_ref("NewToken"), "Created; `token` is the secret.")}}},
        "/admin/tokens/{ref}": {
            "delete": {
                "operationId": "revokeToken", "tags": ["admin"], "summary": "Revoke a token",
                "description": "By id or by the prefix listings show. Admin role: a token of the caller's tenant, "
                               "not an operator's (others are a 404). Operator: any. It stops working within "
                               "COMFYQ_TOKEN_CACHE_SECONDS.",
                "parameters": [{"name": "ref", "in": "path", "required": True,
                                "schema": {"type": "string", "pattern": "^([0-9]{1,19}|cq_[A-Za-z0-9_-]{8})$"},
                                "description": "The token's id, or its `token_prefix`."}],
                "responses": {"200": _json(_ref("Token"), "Revoked.")}}},
        "/admin/tenants": {
            "get": {
                "operationId": "listTenants", "tags": ["admin"], "summary": "List tenants with their settings",
                "description": "Operator role.",
                "responses": {"200": _json(_ref("TenantList"), "Every tenant.")}}},
        "/admin/tenants/{name}": {
            "put": {
                "operationId": "setTenant", "tags": ["admin"], "summary": "Create a tenant or replace its settings",
                "description": "Operator role. Every setting the body leaves out is reset to its default (no raw "
                               "graphs, the deployment's default limits).",
                "parameters": [{"name": "name", "in": "path", "required": True,
                                "schema": {"type": "string", "pattern": TENANT_PATTERN}}],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": _ref("TenantSettings"), "examples": {
                        "limits": {"value": {"max_queued_jobs": 100000, "rate_per_second": 50, "rate_burst": 200}},
                        "raw graphs": {"value": {"allow_raw_graphs": True}}}}}},
                "responses": {"200": _json(_ref("Tenant"), "The tenant as it is now.")}}},
        **_callback_secret_operations(),
    }


def _callback_secret_operations() -> dict[str, dict[str, Any]]:
    """A tenant's callback signing secrets: what `comfyq tenant callback-secret` calls."""
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": TENANT_PATTERN},
            "description": "The tenant. A tenant's admin may name only its own."}
    who = "Admin role: the caller's own tenant. Operator: any tenant. "
    return {
        "/admin/tenants/{name}/callback-secrets": {
            "get": {
                "operationId": "listCallbackSecrets", "tags": ["admin"],
                "summary": "List a tenant's callback signing secrets (never the secrets)",
                "description": who + "Active ones (`retired_at` null) each sign every callback of the tenant.",
                "parameters": [name],
                "responses": {"200": _json(_ref("CallbackSecretList"), "The tenant's secrets.")}},
            "post": {
                "operationId": "createCallbackSecret", "tags": ["admin"], "summary": "Create a callback signing secret",
                "description": who + "No body. The new secret signs the tenant's callbacks from the next delivery "
                               "on, next to the ones already active: each callback's `webhook-signature` carries one "
                               "`v1,<signature>` per active secret, so the receiver verifies with either while it "
                               "moves to the new one. Then retire the old one. At most "
                               f"{MAX_ACTIVE} active at once (409).",
                "parameters": [name],
                "responses": {"201": _json(_ref("NewCallbackSecret"), "Created; `secret` is the secret.")}}},
        "/admin/tenants/{name}/callback-secrets/{secret_id}": {
            "delete": {
                "operationId": "retireCallbackSecret", "tags": ["admin"], "summary": "Retire a callback signing secret",
                "description": who + "It signs nothing from the next delivery on. A tenant with no active secret gets "
                               "no callbacks: they wait until it has one.",
                "parameters": [name, {"name": "secret_id", "in": "path", "required": True,
                                      "schema": {"type": "integer", "minimum": 1, "maximum": MAX_JOB_ID},
                                      "description": "The secret's `id`."}],
                "responses": {"200": _json(_ref("CallbackSecret"), "Retired.")}}},
    }


def _paths(settings: Settings) -> dict[str, Any]:
    operations = _operations(settings)
    paths: dict[str, Any] = {}
    for path, methods in operations.items():
        for method, operation in methods.items():
            errors = OPERATION_ERRORS[(method, path)]
            for status in sorted(errors):
                operation["responses"][str(status)] = _error_response(status, errors[status])
            if (method, path) in PUBLIC_OPERATIONS:
                operation["security"] = []
            else:
                operation["security"] = [{"bearerAuth": []}]
                operation["x-required-role"] = REQUIRED_ROLES.get((method, path), "submitter")
            paths.setdefault(path, {})[method] = operation
    return paths


def build_document(settings: Settings | None = None) -> dict[str, Any]:
    """The OpenAPI document for an app with these settings (the environment's when None)."""
    settings = settings or Settings()
    components: dict[str, Any] = {}
    schemas = {**_request_schemas(settings, components), **_response_schemas(), **_model_responses(components)}
    components.update(schemas)
    return {
        "openapi": OPENAPI_VERSION,
        "jsonSchemaDialect": JSON_SCHEMA_DIALECT,
        "info": {
            "title": "comfyq API",
            "version": _version(),
            "summary": "A batch job queue for ComfyUI.",
            "description": "Submit ComfyUI jobs (templates with params, or raw graphs), follow them, cancel and "
                           "retry them. Every error answers `{\"error\": {\"code\", \"message\", \"details\"}}`. "
                           "Tokens are bound to a tenant and a role (`submitter`, `admin` or `operator`); a "
                           "tenant sees only its own jobs, a tenant's admin acts on its own tenant only, an "
                           "operator across tenants. See docs/api.md.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}},
        "tags": [{"name": "jobs"}, {"name": "workflows"}, {"name": "stats"}, {"name": "admin"},
                 {"name": "health"}],
        "paths": _paths(settings),
        "components": {
            "schemas": components,
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "`Authorization: Bearer <token>`: a token from `comfyq token create` (stored only "
                               "as a hash), or COMFYQ_API_TOKEN, an operator token of tenant "
                               f"`{settings.api_tenant}`. Each operation's `x-required-role` names the least "
                               "role its token needs (submitter < admin < operator)."}}},
    }


def _version() -> str:
    try:
        return metadata.version("comfyq")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def document_for_app() -> dict[str, Any]:
    """The current app's document, built once per app."""
    document: dict[str, Any] | None = current_app.extensions.get(EXTENSION)
    if document is None:
        document = build_document(current_app.config["COMFYQ_SETTINGS"])
        current_app.extensions[EXTENSION] = document
    return copy.deepcopy(document)


@bp.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(document_for_app())
