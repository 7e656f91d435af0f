"""What both parts of the OpenAPI document use (the Flask app's operations in openapi.py, the events process's in
openapi_events.py): schema references, JSON answers, error answers and the headers they carry."""

from __future__ import annotations

from typing import Any

REF = "#/components/schemas/"
MAX_JOB_ID = 2**63 - 1  # job ids are Postgres bigints


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


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

RETRY_AFTER = {"description": "Seconds to wait before trying again.", "required": True,
               "schema": {"type": "integer", "minimum": 1}}
WWW_AUTHENTICATE = {"description": "Always `Bearer realm=\"comfyq\"`.", "required": True, "schema": {"type": "string"}}
LOCATION = {"description": "The job's URL, `/jobs/{id}`.", "required": True,
            "schema": {"type": "string", "pattern": "^/jobs/[0-9]+$"}}


def error_response(status: int, codes: list[str]) -> dict[str, Any]:
    schema = {"allOf": [ref("Error"), {"type": "object", "properties": {"error": {
        "type": "object", "properties": {"code": {"enum": codes}}}}}]}
    response: dict[str, Any] = {
        "description": ERROR_DESCRIPTIONS[status] + " Codes: " + ", ".join(f"`{c}`" for c in codes) + ".",
        "content": {"application/json": {"schema": schema}}}
    if status in (429, 503):
        response["headers"] = {"Retry-After": RETRY_AFTER}
    elif status == 401:
        response["headers"] = {"WWW-Authenticate": WWW_AUTHENTICATE}
    return response


def json_response(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema, **extra}}}
