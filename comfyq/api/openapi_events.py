"""The events process's part of the OpenAPI document. `comfyq events` (comfyq/events/app.py) serves the streams, the
WebSockets, the stream tokens and the `wait` of GET /jobs/{id} and POST /jobs; nginx sends those requests there,
so to a client it is one API, and one document describes it.

Every operation says which process serves it in `x-comfyq-served-by` (`api`, `events`, or both for GET /jobs/{id}
and POST /jobs, which the events process serves only with `wait`); the `wait` parameter and the answers only the
events process gives carry the mark too. The schema of each stream message is in `x-comfyq-message-schema` of
the streaming answer (OpenAPI 3.1 cannot describe the items of a `text/event-stream` or a WebSocket).

The events process cannot import the API (pyproject's import contracts), so its messages are described here by the
models of responses.py; tests/test_openapi.py checks what a real events process sends against them and these
operations against its ROUTES."""

from __future__ import annotations

from typing import Any

from comfyq.api.openapi_common import LOCATION, MAX_JOB_ID, json_response, ref
from comfyq.jobs import STATUSES
from comfyq.settings import Settings

SERVED_BY = "x-comfyq-served-by"
API, EVENTS = "api", "events"
MESSAGE_SCHEMA = "x-comfyq-message-schema"

# Routes of the events process that are not in the document: each process's own liveness and metrics, on its own
# port. Through nginx these paths are the API's, which the document describes.
NOT_DOCUMENTED = {("get", "/healthz"), ("get", "/metrics")}
STREAM_ERRORS: dict[int, list[str]] = {400: ["invalid_last_event_id"], 401: ["unauthorized"],
                                       503: ["database_unavailable"]}
JOB_STREAM_ERRORS: dict[int, list[str]] = {**STREAM_ERRORS, 404: ["not_found"]}
TENANT_STREAM_ERRORS: dict[int, list[str]] = {**STREAM_ERRORS, 400: ["invalid_last_event_id", "invalid_filter"]}
# Error codes of the events process by operation, added to the API's for the operations both serve.
EVENTS_OPERATION_ERRORS: dict[tuple[str, str], dict[int, list[str]]] = {
    ("get", "/jobs/{job_id}/events"): JOB_STREAM_ERRORS,
    ("get", "/ws/jobs/{job_id}"): JOB_STREAM_ERRORS,
    ("get", "/events"): TENANT_STREAM_ERRORS,
    ("get", "/ws/events"): TENANT_STREAM_ERRORS,
    ("post", "/events/token"): {401: ["unauthorized"], 503: ["database_unavailable"]},
    ("get", "/jobs/{job_id}"): {400: ["invalid_wait"], 401: ["unauthorized"], 404: ["not_found"],
                                503: ["database_unavailable"]},
    # The API's refusals come back unchanged; these are the events process's own. A 404: the job was deleted
    # (retention) while it was waited for.
    ("post", "/jobs"): {400: ["invalid_wait"], 401: ["unauthorized"], 404: ["not_found"],
                        503: ["database_unavailable", "api_unavailable"]},
}
# A stream takes the bearer token, or a stream token in the URL (browsers cannot set headers on EventSource).
STREAM_SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"streamToken": []}]
STREAM_TOKEN_SCHEME = {
    "type": "apiKey", "in": "query", "name": "stream_token",
    "description": "Streams only: a token from `POST /events/token`, for clients that cannot send headers "
                   "(EventSource, a WebSocket in a browser). Good for one stream within its lifetime "
                   "(COMFYQ_EVENTS_STREAM_TOKEN_SECONDS); bearer tokens are never taken from the URL."}
TAG = {"name": "events", "description": "Served by the events process (`comfyq events`, docs/events.md): live "
                                        "streams of job events and bounded waits for a job's end."}


def events_schemas() -> dict[str, Any]:
    """The messages of each kind of stream, for `x-comfyq-message-schema`."""
    return {
        "JobStreamMessage": {
            "description": "A message of a per-job stream: the snapshot first (not on a resume), then the job's "
                           "logged changes and its progress.",
            "oneOf": [ref("StreamSnapshot"), ref("StreamJobEvent"), ref("StreamProgress")]},
        "TenantStreamMessage": {
            "description": "A message of a tenant-wide stream: every job's logged changes and progress.",
            "oneOf": [ref("StreamJobEvent"), ref("StreamProgress")]},
    }


def _parameters() -> dict[str, dict[str, Any]]:
    event_id = {"type": "integer", "minimum": 0, "maximum": MAX_JOB_ID}
    resume = ("Resume: the `id` of the last message received. The stream then sends every event after it that the "
              "caller may see, in id order, once, and goes on live; no snapshot. Not an event id: 400 "
              "`invalid_last_event_id`.")
    return {
        "job_id": {"name": "job_id", "in": "path", "required": True,
                   "schema": {"type": "integer", "minimum": 1, "maximum": MAX_JOB_ID}},
        "Last-Event-ID": {"name": "Last-Event-ID", "in": "header", "required": False, "schema": event_id,
                          "description": resume + " EventSource sends it by itself when it reconnects."},
        "last_event_id": {"name": "last_event_id", "in": "query", "required": False, "schema": event_id,
                          "description": resume + " For clients that cannot send headers (a WebSocket in a "
                                                  "browser); `Last-Event-ID` wins when both are given."},
        "status": {"name": "status", "in": "query", "required": False, "style": "form", "explode": True,
                   "schema": {"type": "array", "items": {"type": "string", "enum": sorted(STATUSES)}},
                   "description": "Only events that leave a job in one of these statuses; repeat the parameter or "
                                  "comma-separate (`status=running,failed`). Another value: 400 `invalid_filter`."},
        "workflow": {"name": "workflow", "in": "query", "required": False, "style": "form", "explode": True,
                     "schema": {"type": "array", "items": {"type": "string"}},
                     "description": "Only events of jobs of these templates; repeat or comma-separate."},
    }


def _sse(message: str, description: str, example: str) -> dict[str, Any]:
    return {"description": description, MESSAGE_SCHEMA: ref(message), "content": {"text/event-stream": {
        "schema": {"type": "string", "description": "Server-Sent Events; each message's `data` line is described "
                                                    f"by `{MESSAGE_SCHEMA}`."},
        "example": example}}}


def _websocket(message: str) -> dict[str, Any]:
    return {"description": "Switching Protocols: the WebSocket is open. Each message is one JSON text frame (the "
                           f"same object as an SSE message's `data`), described by `{MESSAGE_SCHEMA}`. The server "
                           "sends ping frames every COMFYQ_EVENTS_HEARTBEAT_SECONDS and reads nothing from the "
                           "client but its close frame and pongs.",
            MESSAGE_SCHEMA: ref(message)}


NOT_AN_UPGRADE = {"description": "A request that is not a WebSocket upgrade is answered as plain text.",
                  "content": {"text/plain": {"schema": {"type": "string"}}}}
GONE = {"description": "A reconnect with a `Last-Event-ID` (or `last_event_id`) at or after the job's final event: "
                       "nothing more will come. EventSource stops reconnecting on a 204."}
JOB_EXAMPLE = ("retry: 2000\n\n"
               "id: 1041\nevent: snapshot\ndata: {\"event\":\"snapshot\",\"job_id\":42,\"status\":\"queued\","
               "\"job\":{...}}\n\n"
               "id: 1057\nevent: claimed\ndata: {\"id\":1057,\"job_id\":42,\"event\":\"claimed\","
               "\"status\":\"running\",\"from_status\":\"queued\",\"attempt\":1,\"worker_id\":\"gpu-1\",\"workflow\":\"txt2img\","
               "\"created_at\":\"2026-01-05T10:00:01.300000+00:00\"}\n\n"
               "event: progress\ndata: {\"job_id\":42,\"event\":\"progress\",\"status\":\"running\",\"attempt\":1,"
               "\"worker_id\":\"gpu-1\",\"workflow\":\"txt2img\",\"progress\":0.4,\"current_node\":\"3\"}\n\n"
               ": heartbeat\n\n")
TENANT_EXAMPLE = ("retry: 2000\n\n"
                  "id: 1057\nevent: claimed\ndata: {\"id\":1057,\"job_id\":42,\"event\":\"claimed\",...}\n\n"
                  "id: 1058\nevent: queued\ndata: {\"id\":1058,\"job_id\":43,\"event\":\"queued\",...}\n\n")


def _events_only(settings: Settings) -> dict[str, dict[str, Any]]:
    """The operations only the events process serves."""
    p = _parameters()
    framing = ("`text/event-stream`: a `retry: 2000` line first, then one message per event, each an `event:` line "
               "(the message's `event` field), an `id:` line (logged changes and the snapshot; progress has none), "
               "and a `data:` line with the message as one line of JSON, ended by a blank line. An idle stream gets "
               f"a `: heartbeat` comment every COMFYQ_EVENTS_HEARTBEAT_SECONDS ({settings.events_heartbeat_seconds:g}"
               " s here).")
    per_job = ("First a `snapshot` of the job as GET /jobs/{job_id} shows it (not on a resume), then every logged "
               "change of the job and its `progress` while it runs; closed after the job's final state (a job "
               "already final: after its snapshot).")
    tenant_wide = ("Every logged change and the progress of every job of the caller's tenant, until the client "
                   "leaves. A subscriber that falls COMFYQ_EVENTS_SUBSCRIBER_BUFFER events behind is disconnected; "
                   "it reconnects with its last event id and misses nothing.")
    return {
        "/jobs/{job_id}/events": {"get": {
            "operationId": "streamJobEvents", "tags": ["events"], "security": STREAM_SECURITY,
            "summary": "Follow one job (Server-Sent Events)",
            "description": per_job + " " + framing + " Call `close()` on the final event: EventSource reconnects "
                           "after any close, and the reconnect is answered 204.",
            "parameters": [p["job_id"], p["Last-Event-ID"], p["last_event_id"]],
            "responses": {"200": _sse("JobStreamMessage", "The job's events as they happen.", JOB_EXAMPLE),
                          "204": GONE}}},
        "/events": {"get": {
            "operationId": "streamEvents", "tags": ["events"], "security": STREAM_SECURITY,
            "summary": "Follow every job of the tenant (Server-Sent Events)",
            "description": tenant_wide + " " + framing,
            "parameters": [p["status"], p["workflow"], p["Last-Event-ID"], p["last_event_id"]],
            "responses": {"200": _sse("TenantStreamMessage", "The tenant's events as they happen.",
                                      TENANT_EXAMPLE)}}},
        "/ws/jobs/{job_id}": {"get": {
            "operationId": "websocketJobEvents", "tags": ["events"], "security": STREAM_SECURITY,
            "summary": "Follow one job (WebSocket)",
            "description": "The messages of GET /jobs/{job_id}/events over a WebSocket (`ws://` or `wss://`). "
                           + per_job,
            "parameters": [p["job_id"], p["Last-Event-ID"], p["last_event_id"]],
            "responses": {"101": _websocket("JobStreamMessage"), "204": GONE, "400": NOT_AN_UPGRADE}}},
        "/ws/events": {"get": {
            "operationId": "websocketEvents", "tags": ["events"], "security": STREAM_SECURITY,
            "summary": "Follow every job of the tenant (WebSocket)",
            "description": "The messages of GET /events over a WebSocket. " + tenant_wide,
            "parameters": [p["status"], p["workflow"], p["Last-Event-ID"], p["last_event_id"]],
            "responses": {"101": _websocket("TenantStreamMessage"), "400": NOT_AN_UPGRADE}}},
        "/events/token": {"post": {
            "operationId": "createStreamToken", "tags": ["events"], "summary": "A token for one stream (browsers)",
            "description": "Trades the bearer token for a short-lived token that opens one stream as "
                           "`?stream_token=`, for clients that cannot send headers; a bearer token in a URL would "
                           "end up in access logs. Bound to the caller's tenant and role, good for "
                           f"COMFYQ_EVENTS_STREAM_TOKEN_SECONDS ({settings.events_stream_token_seconds} s here) and "
                           "one stream: get a new one for each reconnect. Needs the bearer token itself. No body.",
            "security": [{"bearerAuth": []}],
            "responses": {"200": json_response(ref("StreamToken"), "The stream token.")}}},
    }


def _wait(settings: Settings) -> dict[str, Any]:
    return {"name": "wait", "in": "query", "required": False, "schema": {"type": "number", "minimum": 0},
            SERVED_BY: [EVENTS],
            "description": "Seconds to wait for the job's final state, at most COMFYQ_EVENTS_WAIT_MAX_SECONDS "
                           f"({settings.events_wait_max_seconds:g} here; more waits that long). With a value the "
                           "request goes to the events process (nginx sends it there); empty or absent, to the API. "
                           "Not a number of 0 or more: 400 `invalid_wait`."}


def _add_wait(operations: dict[str, dict[str, Any]], settings: Settings) -> None:
    """The `wait` of GET /jobs/{job_id} and POST /jobs, which the events process serves: 200 once the job is
    final, 202 with its current state when the wait ends first. Woken by the job's events, never by polling."""
    read = operations["/jobs/{job_id}"]["get"]
    read["parameters"] = [*read["parameters"], _wait(settings)]
    read["description"] += (" With `wait`: 200 as soon as the job is final, or 202 with its current state when the "
                            "wait ends first (answered by the events process).")
    read["responses"]["202"] = json_response(ref("Job"), "With `wait` only: the wait ended before the job's final "
                                                         "state; the job as it is now.") | {
        "headers": {"Location": LOCATION}, SERVED_BY: [EVENTS]}
    submit = operations["/jobs"]["post"]
    submit["parameters"] = [*submit["parameters"], _wait(settings)]
    submit["description"] += (" With `wait`, the events process hands the request to the API as it came (body, "
                              "Authorization, Idempotency-Key): a refusal comes back unchanged; an accepted job "
                              "(new, replayed or a dedupe twin) is then waited for as GET /jobs/{job_id}?wait= "
                              "does, and answered as the full job: 200 once it is final, 202 with its current "
                              "state when the wait ends first. 503 `api_unavailable`: the API did not answer the "
                              "events process; retry with the same Idempotency-Key.")
    for status, when in (("200", "With `wait`: the job, final."),
                         ("202", "With `wait`: the wait ended before the job's final state; the job as it is now.")):
        answer = submit["responses"][status]
        schema = answer["content"]["application/json"]["schema"]
        answer["content"]["application/json"]["schema"] = {"oneOf": [*schema.get("oneOf", [schema]), ref("Job")]}
        answer["description"] += " " + when


def add_events_operations(operations: dict[str, dict[str, Any]], settings: Settings) -> None:
    """The events process's operations added to the API's (which are marked `api` already), in place."""
    _add_wait(operations, settings)
    for path, method in (("/jobs/{job_id}", "get"), ("/jobs", "post")):
        operation = operations[path][method]
        operation[SERVED_BY] = [API, EVENTS]
        operation["tags"] = [*operation["tags"], "events"]
    for path, methods in _events_only(settings).items():
        for method, operation in methods.items():
            operation[SERVED_BY] = [EVENTS]
            operations.setdefault(path, {})[method] = operation
