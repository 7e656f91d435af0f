"""The API's OpenAPI 3.1 description (JSON Schema 2020-12), served without a token on GET /openapi.json.

Request bodies come from the pydantic models in schemas.py, with the rules those models check in code (exactly
one of workflow/graph, the priority range of the settings) added. Response bodies come from the models of
responses.py, which every route (and the error handlers) answers through, so a body the document does not
describe cannot be sent. Written out here: the operations, their parameters and the error codes each can
answer. The document is built from the app's settings, so limits that are settings (priority range, page size,
body sizes, batch size) are the ones this deployment enforces.

The events process's operations (streams, WebSockets, stream tokens, the `wait` of GET /jobs/{id} and POST /jobs)
are added by openapi_events.py; every operation names the process that serves it in `x-comfyq-served-by`.

tests/test_openapi.py validates the document and fuzzes the API against it with schemathesis (the Flask app's own
part, build_document(events=False)): a route that answers a status, a header or a body not described here fails
that test."""

from __future__ import annotations

import copy
from importlib import metadata
from typing import Any

from flask import Blueprint, Response, current_app, jsonify
from pydantic import BaseModel

from comfyq.api.openapi_common import LOCATION, MAX_JOB_ID, REF, RETRY_AFTER
from comfyq.api.openapi_common import error_response as _error_response
from comfyq.api.openapi_common import json_response as _json
from comfyq.api.openapi_common import ref as _ref
from comfyq.api.openapi_events import (
    API,
    EVENTS,
    EVENTS_OPERATION_ERRORS,
    SERVED_BY,
    STREAM_TOKEN_SCHEME,
    add_events_operations,
    events_schemas,
)
from comfyq.api.openapi_events import TAG as EVENTS_TAG
from comfyq.api.pagination import default_page
from comfyq.api.request_body import BYTES_PER_VALUE
from comfyq.api.responses import EVENTS_MODELS, RESPONSE_MODELS
from comfyq.api.schemas import BatchRequest, JobRequest, RetentionRequest, TenantSettings, TokenRequest
from comfyq.callback_secrets import MAX_ACTIVE
from comfyq.jobs import STATUSES
from comfyq.settings import Settings
from comfyq.tokens import TENANT_PATTERN

OPENAPI_VERSION = "3.1.0"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
EXTENSION = "comfyq_openapi"

bp = Blueprint("openapi", __name__)


# Error codes by status: what each route can answer besides its success (descriptions: openapi_common.py).
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

# Response schemas ---------------------------------------------------------------------------------------------
def _model_responses(components: dict[str, Any], models: tuple[type[BaseModel], ...]) -> dict[str, Any]:
    """The response schemas written from the models the routes answer through (responses.py); the models they
    nest go into components under their own names."""
    schemas = {}
    for model in models:
        schema = _without_defaults(model.model_json_schema(mode="serialization", ref_template=REF + "{model}"))
        for name, definition in schema.pop("$defs", {}).items():
            components.setdefault(name, definition)
        schemas[model.__name__] = schema
    return schemas


def _without_defaults(schema: Any) -> Any:
    """The schema without `default` keywords: a response field's default (None, for one that is left out when it
    has no value) is never sent, so it says nothing about an answer. Property names are kept (a workflow param
    has a property called `default`)."""
    if isinstance(schema, list):
        return [_without_defaults(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {key: ({name: _without_defaults(item) for name, item in value.items()} if key in ("properties", "$defs")
                  else _without_defaults(value)) for key, value in schema.items() if key != "default"}


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


def _errors(method: str, path: str, served_by: list[str]) -> dict[int, list[str]]:
    """The error codes of an operation: the API's, and the events process's where it serves the operation too."""
    errors = {status: list(codes) for status, codes in OPERATION_ERRORS.get((method, path), {}).items()}
    if EVENTS in served_by:
        for status, codes in EVENTS_OPERATION_ERRORS[(method, path)].items():
            errors.setdefault(status, []).extend(code for code in codes if code not in errors[status])
    return errors


def _paths(settings: Settings, events: bool) -> dict[str, Any]:
    operations = _operations(settings)
    for methods in operations.values():
        for operation in methods.values():
            operation[SERVED_BY] = [API]
    if events:
        add_events_operations(operations, settings)
    paths: dict[str, Any] = {}
    for path, methods in operations.items():
        for method, operation in methods.items():
            errors = _errors(method, path, operation[SERVED_BY])
            for status in sorted(errors):
                answer = _error_response(status, errors[status])
                other = operation["responses"].get(str(status))
                if other is not None:  # a WebSocket route's 400 for a request that is no upgrade (text/plain)
                    answer["description"] += " " + other["description"]
                    answer["content"].update(other["content"])
                operation["responses"][str(status)] = answer
            if (method, path) in PUBLIC_OPERATIONS:
                operation["security"] = []
            else:
                operation.setdefault("security", [{"bearerAuth": []}])
                operation["x-required-role"] = REQUIRED_ROLES.get((method, path), "submitter")
            paths.setdefault(path, {})[method] = operation
    return paths


def build_document(settings: Settings | None = None, *, events: bool = True) -> dict[str, Any]:
    """The OpenAPI document for an app with these settings (the environment's when None): the whole API as nginx
    serves it, or with events=False only what the Flask app itself serves (for the fuzz runs, which call the Flask
    app alone), without the events process's operations and the `wait` of GET /jobs/{id} and POST /jobs."""
    settings = settings or Settings()
    components: dict[str, Any] = {}
    models = RESPONSE_MODELS + EVENTS_MODELS if events else RESPONSE_MODELS
    schemas = {**_request_schemas(settings, components), **_model_responses(components, models)}
    if events:
        schemas.update(events_schemas())
    components.update(schemas)
    security_schemes: dict[str, Any] = {"bearerAuth": {
        "type": "http", "scheme": "bearer",
        "description": "`Authorization: Bearer <token>`: a token from `comfyq token create` (stored only as a "
                       "hash), or COMFYQ_API_TOKEN, an operator token of tenant "
                       f"`{settings.api_tenant}`. Each operation's `x-required-role` names the least role its "
                       "token needs (submitter < admin < operator)."}}
    if events:
        security_schemes["streamToken"] = STREAM_TOKEN_SCHEME
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
                           "operator across tenants. See docs/api.md. Two processes serve it behind nginx: the "
                           "API and the events process (live streams and waits, docs/events.md); each operation "
                           "names its own in `x-comfyq-served-by`.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"}},
        "tags": [{"name": "jobs"}, {"name": "workflows"}, {"name": "stats"}, {"name": "admin"},
                 {"name": "health"}, *([EVENTS_TAG] if events else [])],
        "paths": _paths(settings, events),
        "components": {"schemas": components, "securitySchemes": security_schemes},
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
