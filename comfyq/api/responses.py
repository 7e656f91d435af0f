"""Response bodies as pydantic models: the routes build their JSON through them (`answer()`, and the error handlers
through Error), and openapi.py writes the document's response schemas from the same models, so the document
cannot say one thing and the code answer another. A value a model refuses is a bug and answers 500, never a body
the document does not describe.

Times are written as `datetime.isoformat()` (`2026-01-05T10:00:00.120000+00:00`), as the API always wrote them,
and described as `date-time` strings; a number that may be an int or a float keeps its JSON form (`int | float`),
so the answers are the bytes they were before the models."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from flask import Response as FlaskResponse
from flask import jsonify
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, ValidationError, WithJsonSchema

from comfyq.jobs import STATUSES
from comfyq.tokens import TENANT_PATTERN, Role

Timestamp = Annotated[datetime, PlainSerializer(datetime.isoformat, return_type=str),
                      WithJsonSchema({"type": "string", "format": "date-time"})]
Count = Annotated[int, Field(ge=0)]
Number = Annotated[int | float, WithJsonSchema({"type": "number"})]  # as given: 30 stays 30, 7.0 stays 7.0
TenantName = Annotated[str, Field(pattern=TENANT_PATTERN)]


# A Literal, checked in pydantic's core rather than by a Python call per job (10,000 in a batch's answer).
Status = Annotated[Literal["queued", "running", "succeeded", "failed", "canceled", "expired"],
                   WithJsonSchema({"type": "string", "enum": sorted(STATUSES)})]
assert set(get_args(get_args(Status)[0])) == STATUSES, "Status names every job status"


class Response(BaseModel):
    """A response body: its fields are all written (nulls included) and nothing else is allowed. A field that is
    left out when it has no value (an output's `size`) has the default None and a type without null: the default
    never appears in an answer, and an explicit null is refused."""

    model_config = ConfigDict(extra="forbid")


def left_out(**field: Any) -> Any:
    """A field that an answer leaves out when it has no value (see Response); typed Any so that its default None
    may stand for a type without null."""
    return Field(default=None, **field)


def _examples(*examples: dict[str, Any]) -> ConfigDict:
    return ConfigDict(extra="forbid", json_schema_extra={"examples": list(examples)})


# Errors ---------------------------------------------------------------------------------------------------------
class ErrorDetail(Response):
    code: str = Field(description="Stable, machine-readable; branch on this.")
    message: str = Field(description="For humans; may change.")
    details: dict[str, Any] | list[Any] = Field(
        description="Structured detail; `{}` when there is none. For `validation_error` from the request model: a "
                    "list of `{field, problem, type}`; for param and graph problems: an object keyed by param name "
                    "or node id.")


class Error(Response):
    """The one shape of every error answer."""

    model_config = _examples({"error": {"code": "invalid_params", "message": "some params are invalid",
                                        "details": {"steps": "0 is smaller than the minimum 1"}}})

    error: ErrorDetail


# Jobs -----------------------------------------------------------------------------------------------------------
class Submitted(Response):
    """A job written to the queue (or, on an idempotent replay, the job written the first time)."""

    model_config = _examples({"id": 17, "status": "queued"})

    id: int
    status: Status


class BatchSubmitted(Response):
    model_config = _examples({"count": 2, "jobs": [{"id": 18, "status": "queued"}, {"id": 19, "status": "queued"}]})

    count: Count
    jobs: list[Submitted] = Field(description="In the order of the request's items.")


class CancelResult(Response):
    """`status` is `canceled` for a job that was queued; a running job stays `running` with `cancel_requested`
    until its worker stops it (within a heartbeat)."""

    id: int
    status: Status
    cancel_requested: Literal[True]


class JobOutput(BaseModel):
    """One stored output file."""

    model_config = ConfigDict(extra="allow")

    key: str = Field(description="The object key in storage, `{installation}/{job}/{attempt}/{file}` "
                                 "(`{job}/{attempt}/{file}` for jobs stored before installation ids).")
    size: Count = left_out(description="Bytes.")
    content_type: str = left_out()
    location: str | None = left_out(description="`s3://bucket/key`, or `local:{key}` for the local "
                                                           "backend (never a path on a host).")
    node_id: str = left_out(description="The graph node that produced it.")
    filename: str = left_out(description="The file name ComfyUI gave it.")
    url: str = Field(description="Where to download it: a presigned URL of the object storage, valid for "
                                 "COMFYQ_S3_PRESIGN_SECONDS; with the local backend (or when the storage cannot sign "
                                 "right now) the API's own `/jobs/{id}/outputs/{n}`, which needs the bearer token.")


class JobError(BaseModel):
    """Why the last attempt failed (or why the job expired)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["validation_error", "execution_error", "timeout", "comfyui_unavailable",
                                "lease_expired", "deadline_exceeded"])
    message: str
    retryable: bool
    node: str = left_out(description="The node that failed, when known.")
    details: dict[str, Any] = left_out(description="E.g. ComfyUI's own `node_errors` for a rejection.")


JOB_EXAMPLE: dict[str, Any] = {
    "id": 17, "status": "succeeded", "workflow": "txt2img",
    "params": {"prompt": "a red fox in snow", "seed": 42, "negative_prompt": "", "width": 512, "height": 512,
               "steps": 20, "cfg": 7.0, "checkpoint": "v1-5-pruned-emaonly.safetensors"},
    "priority": 5, "attempts": 1, "max_attempts": 3, "progress": 1.0, "current_node": None,
    "timeout_seconds": None, "cancel_requested": False, "callback_url": None, "error": None,
    "outputs": [{"key": "17/1/comfyq_00001_.png", "size": 48213, "content_type": "image/png",
                 "location": "s3://comfyq-outputs/17/1/comfyq_00001_.png", "node_id": "9",
                 "filename": "comfyq_00001_.png", "url": "https://minio.example:9000/..."}],
    "created_at": "2026-01-05T10:00:00.120000+00:00", "run_at": "2026-01-05T10:00:00.120000+00:00",
    "started_at": "2026-01-05T10:00:01.300000+00:00", "finished_at": "2026-01-05T10:00:07.900000+00:00",
    "deadline": None}


class Job(Response):
    model_config = _examples(JOB_EXAMPLE)

    id: int
    status: Status
    workflow: str | None = Field(description="null for a raw graph.")
    params: dict[str, Any] = Field(description="The template params with defaults filled in (random seeds as "
                                               "drawn); `{}` for a raw graph.")
    priority: int
    attempts: Count
    max_attempts: int = Field(ge=1, le=100)
    progress: float = Field(ge=0, le=1)
    current_node: str | None
    timeout_seconds: int | None
    cancel_requested: bool
    callback_url: str | None
    error: JobError | None
    outputs: list[JobOutput]
    created_at: Timestamp
    run_at: Timestamp = Field(description="When the job becomes (or became) eligible.")
    started_at: Timestamp | None
    finished_at: Timestamp | None
    deadline: Timestamp | None


class DeduplicatedJob(Job):
    """A succeeded job with the same request, returned instead of a new one (`dedupe: true`)."""

    model_config = _examples(JOB_EXAMPLE | {"deduplicated": True})

    deduplicated: Literal[True]


class JobList(Response):
    jobs: list[Job] = Field(description="Newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class JobLogEntry(Response):
    """One row of a job's history (job_logs): a state change, or an event within a state."""

    id: int = Field(description="Increases with every entry of the whole queue; orders a job's history.")
    event: str = Field(description="What happened: `queued`, `claimed`, `retry_scheduled`, `rescued`, `released`, "
                                   "`resubmitted`, `outage`, `succeeded`, `failed`, `cancel_requested`, `canceled`, "
                                   "`expired`, `requeued` (a retry through the API), `callback_delivered`, "
                                   "`callback_failed`.", examples=["claimed"])
    from_status: str | None = Field(description="The job's status before; null for its first entry.")
    to_status: str | None = Field(description="The job's status after.")
    attempt: Count = Field(description="The attempt the entry belongs to (0 before the first claim).")
    worker_id: str | None = Field(description="The worker that made the change, when one did.")
    message: str | None = Field(description="Why, for humans: the error of a failed attempt, a retry's delay, the "
                                            "cause of a rescue.")
    details: dict[str, Any] | None = Field(description="Structured detail, e.g. the error of an attempt or the "
                                                       "dependency of an outage.")
    duration_ms: Count | None = Field(description="How long the job was in `from_status` (for a finished attempt: "
                                                  "its run time).")
    created_at: Timestamp


class JobLogPage(Response):
    """GET /jobs/{id}/logs."""

    model_config = _examples({"logs": [
        {"id": 101, "event": "queued", "from_status": None, "to_status": "queued", "attempt": 0, "worker_id": None,
         "message": None, "details": None, "duration_ms": None, "created_at": "2026-01-05T10:00:00.120000+00:00"},
        {"id": 102, "event": "claimed", "from_status": "queued", "to_status": "running", "attempt": 1,
         "worker_id": "gpu-1", "message": None, "details": None, "duration_ms": 1180,
         "created_at": "2026-01-05T10:00:01.300000+00:00"}], "next_cursor": "bG9nOjE3OjEwMg"})

    logs: list[JobLogEntry] = Field(description="Oldest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


# Statistics, retention, health ----------------------------------------------------------------------------------
class JobsByPriority(Response):
    """Jobs by status, then by priority (the priority as a string key)."""

    queued: dict[str, Count]
    running: dict[str, Count]


class WorkerCounts(Response):
    """Workers of the whole deployment (not per tenant): alive, silent (no recent heartbeat, not declared dead yet)
    and dead."""

    alive: Count
    silent: Count
    dead: Count


class Stats(Response):
    model_config = _examples({
        "queued": 4, "running": 1, "by_priority": {"queued": {"9": 1, "5": 1, "0": 2}, "running": {"0": 1}},
        "oldest_queued_seconds": 12.5, "finished_last_hour": {"succeeded": 40, "failed": 1},
        "workers": {"alive": 2, "silent": 0, "dead": 0}, "scope": "acme"})

    queued: Count
    running: Count
    by_priority: JobsByPriority
    oldest_queued_seconds: Annotated[float, Field(ge=0)] | None
    finished_last_hour: dict[str, Count] = Field(description="Jobs that ended in the last hour, by final status.")
    workers: WorkerCounts
    scope: str = Field(description="`all tenants` for an operator token, else the tenant.")


class RetentionResult(Response):
    model_config = _examples({"jobs_deleted": 2, "logs_deleted": 6, "objects_deleted": 2, "older_than_days": 30,
                              "scope": "acme"})

    jobs_deleted: Count
    logs_deleted: Count
    objects_deleted: Count
    older_than_days: Number
    scope: str = Field(description="The tenant whose jobs were deleted, or `all tenants` (an operator naming none).")


class Health(Response):
    status: Literal["ok", "ready", "unavailable"]
    reason: str = left_out(description="Why the database does not answer; only for an admin or operator "
                                                  "token.")


# Workflows ------------------------------------------------------------------------------------------------------
class NodeLimit(BaseModel):
    """What ComfyUI accepts at one input a param fills, from the node catalogue a worker published."""

    model_config = ConfigDict(extra="allow")

    node: str
    class_type: str
    input: str
    type: str
    min: Number = left_out()
    max: Number = left_out()
    step: Number = left_out()
    choices: list[Any] = left_out()


class WorkflowParam(Response):
    type: Literal["string", "integer", "number", "boolean"]
    required: bool
    default: Any = left_out(description="The value used when the param is omitted; the string `random` "
                                                   "for a seed drawn per job (and stored with it).")
    min: Number = left_out()
    max: Number = left_out()
    min_length: Count = left_out()
    max_length: Count = left_out()
    multiple_of: int = left_out()
    description: str = left_out()
    node_limits: list[NodeLimit] = left_out(description="Only on GET /workflows/{name}, once a worker has "
                                                                   "published ComfyUI's node catalogue.")


class Workflow(Response):
    model_config = _examples({"name": "txt2img", "description": "Text to image with one checkpoint.", "params": {
        "prompt": {"type": "string", "required": True, "min_length": 1, "max_length": 10000},
        "seed": {"type": "integer", "required": False, "default": "random", "min": 0, "max": 18446744073709551615},
        "steps": {"type": "integer", "required": False, "default": 20, "min": 1, "max": 150}}})

    name: str
    description: str
    params: dict[str, WorkflowParam]


class WorkflowList(Response):
    workflows: list[Workflow] = Field(description="Sorted by name.")


# Admin: workers, tokens, tenants, callback secrets --------------------------------------------------------------
class Worker(Response):
    model_config = _examples({"id": "gpu-1", "status": "running", "host": "gpu-1", "pid": 4242,
                              "comfyui_url": "http://gpu-1:8188", "current_job_id": 17, "jobs_done": 1234,
                              "dependencies_down": [], "started_at": "2026-01-05T09:00:00+00:00",
                              "heartbeat_at": "2026-01-05T10:00:00+00:00", "heartbeat_age_seconds": 2.5})

    id: str
    status: Literal["running", "draining", "stopped", "dead"] = Field(
        description="`dead`: no heartbeat for COMFYQ_WORKER_DEAD_AFTER_SECONDS, declared by another worker; running "
                    "again if it heartbeats again.")
    host: str
    pid: int
    comfyui_url: str
    current_job_id: int | None = Field(description="Of any tenant.")
    jobs_done: Count
    dependencies_down: list[str] = Field(description="What the worker sees down now (`comfyui`, `database`, "
                                                     "`storage`, `redis`): it claims nothing meanwhile.")
    started_at: Timestamp
    heartbeat_at: Timestamp
    heartbeat_age_seconds: Number = Field(description="Seconds since the last heartbeat; a live worker beats every "
                                                      "COMFYQ_HEARTBEAT_SECONDS.")


class WorkerList(Response):
    workers: list[Worker] = Field(description="Most recent heartbeat first.")


TOKEN_EXAMPLE: dict[str, Any] = {"id": 7, "tenant": "acme", "role": "submitter", "token_prefix": "cq_AbCdEfGh",
                                 "description": "n8n", "created_at": "2026-01-05T10:00:00+00:00",
                                 "last_used_at": None, "revoked_at": None}


class Token(Response):
    """A token as listings show it: never its secret, which only its creation answers."""

    model_config = _examples(TOKEN_EXAMPLE)

    id: int
    tenant: TenantName
    role: Role
    token_prefix: str = Field(description="The secret's first 11 characters: names the token in lists and "
                                          "revocations, and is not enough to use it.")
    description: str
    created_at: Timestamp
    last_used_at: Timestamp | None = Field(description="Updated at most once a minute.")
    revoked_at: Timestamp | None


class NewToken(Token):
    model_config = _examples(TOKEN_EXAMPLE | {"token": "cq_AbCdEfGh0123456789abcdefghijklmnopqrstuvw"})

    token: str = Field(description="The secret: shown this once, stored only as a hash.")


class TokenList(Response):
    tokens: list[Token] = Field(description="By id.")


class Tenant(Response):
    model_config = _examples({"name": "acme", "allow_raw_graphs": False, "max_queued_jobs": 100000,
                              "rate_per_second": 50.0, "rate_burst": 200, "created_at": "2026-01-05T10:00:00+00:00",
                              "active_tokens": 2})

    name: TenantName
    allow_raw_graphs: bool
    max_queued_jobs: Count | None = Field(description="null: COMFYQ_DEFAULT_MAX_QUEUED_JOBS.")
    rate_per_second: Number | None = Field(description="null: COMFYQ_DEFAULT_RATE_PER_SECOND.")
    rate_burst: Annotated[int, Field(ge=1)] | None = Field(description="null: COMFYQ_DEFAULT_RATE_BURST.")
    created_at: Timestamp
    active_tokens: Count


class TenantList(Response):
    tenants: list[Tenant] = Field(description="By name.")


SECRET_EXAMPLE: dict[str, Any] = {"id": 3, "tenant": "acme", "secret_prefix": "whsec_AbCdEfGh", "source": "api",
                                  "created_at": "2026-01-05T10:00:00+00:00", "retired_at": None}


class CallbackSecret(Response):
    """A callback signing secret as listings show it: never the secret, which only its creation answers."""

    model_config = _examples(SECRET_EXAMPLE)

    id: int
    tenant: TenantName
    secret_prefix: str = Field(description="The secret's first 14 characters (`whsec_` and 8 more): names it in "
                                           "lists, and is not enough to sign.")
    source: Literal["api", "setting"] = Field(description="`api`: made by this route; `setting`: the deprecated "
                                                          "COMFYQ_CALLBACK_SECRET, stored by the first worker that "
                                                          "started with it.")
    created_at: Timestamp
    retired_at: Timestamp | None = Field(description="null while it signs the tenant's callbacks.")


class NewCallbackSecret(CallbackSecret):
    model_config = _examples(SECRET_EXAMPLE | {"secret": "whsec_AbCdEfGh0123456789abcdefghijklmnopqrstuvwx="})

    secret: str = Field(pattern=r"^whsec_[A-Za-z0-9+/]+={0,2}$",
                        description="The secret, shown this once: give it to the tenant's receiver, which verifies "
                                    "with any Standard Webhooks library.")


class CallbackSecretList(Response):
    callback_secrets: list[CallbackSecret] = Field(description="By id, retired ones included.")


# The events process (comfyq events) ----------------------------------------------------------------------------
# Its messages and answers, for the document. The events process may not import the API (pyproject's import
# contracts) and writes its per-subscriber messages as plain dicts, so it builds no model on its hot path;
# tests/test_openapi.py holds the messages of a real events process to these models instead.
class StreamSnapshot(Response):
    """The first message of a per-job stream (none on a resume): the job as GET /jobs/{id} shows it."""

    event: Literal["snapshot"]
    job_id: int
    status: Status
    job: Job


class StreamJobEvent(Response):
    """One logged change of a job (a job_logs row); `id` is the stream's event id, to resume from."""

    id: int = Field(description="The job_logs row's id: grows across the whole queue; the SSE `id:` line and the "
                                "`Last-Event-ID` to resume from.")
    job_id: int
    event: str = Field(description="As in GET /jobs/{id}/logs: `queued`, `claimed`, `retry_scheduled`, `rescued`, "
                                   "`released`, `resubmitted`, `outage`, `requeued`, `cancel_requested`, `succeeded`, "
                                   "`failed`, `canceled`, `expired`, and (after the final state, so on tenant-wide "
                                   "streams) `callback_delivered`, `callback_failed`.", examples=["claimed"])
    status: Status | None = Field(description="The job's status after the event; null for a callback delivery.")
    from_status: Status | None = Field(description="The job's status before; null for its first entry.")
    attempt: Count
    worker_id: str | None
    workflow: str | None = Field(description="null for a raw graph.")
    created_at: Timestamp
    message: str = left_out(description="Why, for humans.")
    details: dict[str, Any] = left_out(description="Structured detail, e.g. the error of an attempt.")
    error: JobError = left_out(description="A retry or a failure: the job's error as it stands.")
    outputs: list[JobOutput] = left_out(description="A success: the outputs, each with a download `url` as "
                                                    "GET /jobs/{id} gives them.")


class StreamProgress(Response):
    """A running job's progress. Not logged, so it has no id and is not replayed on a resume."""

    job_id: int
    event: Literal["progress"]
    status: Literal["running"]
    attempt: Count
    worker_id: str | None
    workflow: str | None
    progress: float = Field(ge=0, le=1)
    current_node: str | None


class StreamToken(Response):
    """POST /events/token: a token for one stream, for clients that cannot send headers (EventSource)."""

    model_config = _examples({"stream_token": "eyJ0IjoiYWNtZSIsInIiOiJzdWJtaXR0ZXIiLCJlIjoxNzY3NjA3MjYwLCJuIjoi"
                                              "cVJ4In0.5f0c...", "expires_at": 1767607260, "expires_in": 60})

    stream_token: str = Field(description="Pass as `?stream_token=`; good for one stream.")
    expires_at: int = Field(description="Unix seconds.")
    expires_in: int = Field(ge=1, description="Seconds it is good for (COMFYQ_EVENTS_STREAM_TOKEN_SECONDS).")


# Every model a route answers with, for openapi.py (the models they nest come with them).
RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    Error, Submitted, BatchSubmitted, CancelResult, Job, DeduplicatedJob, JobList, JobLogPage, Stats,
    RetentionResult, Health, WorkflowList, Workflow, WorkerList, Worker, TokenList, Token, NewToken, TenantList,
    Tenant, CallbackSecretList, CallbackSecret, NewCallbackSecret)
# What the events process answers, for openapi.py's events part.
EVENTS_MODELS: tuple[type[BaseModel], ...] = (StreamSnapshot, StreamJobEvent, StreamProgress, StreamToken)


class InvalidAnswer(Exception):
    """A route built a body its model refuses: a bug, answered 500 by the app's catch-all handler. Not a pydantic
    ValidationError, which the app answers as a 422 about the request."""


def answer(model: type[BaseModel], value: dict[str, Any]) -> FlaskResponse:
    """value checked against the model and written as JSON: the model's fields in its order, optional ones only
    when the value has them (an output's `size`, a param's `min`)."""
    try:
        checked = model.model_validate(value)
    except ValidationError as exc:
        raise InvalidAnswer(f"the answer does not fit {model.__name__}: {exc}") from exc
    return jsonify(checked.model_dump(mode="json", exclude_unset=True))
