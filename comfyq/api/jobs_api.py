"""Job routes: submit one or a batch, read, list, cancel (POST .../cancel or DELETE) and retry."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, current_app, redirect, request, send_file, url_for
from flask.typing import ResponseReturnValue
from pydantic import ValidationError
from werkzeug.datastructures import MultiDict
from werkzeug.routing import IntegerConverter, Map

from comfyq.api.api_errors import MAX_LISTED_ERRORS, ApiError, validation_details
from comfyq.api.auth import Caller, require_token
from comfyq.api.graph_check import graph_problems
from comfyq.api.limits import enforce_quota, enforce_rate
from comfyq.api.metrics import count_submitted
from comfyq.api.node_check import node_limit_problems
from comfyq.api.pagination import MAX_ID, decode_cursor, encode_cursor, page_limit
from comfyq.api.request_body import json_body, too_many_items, validated
from comfyq.api.responses import BatchSubmitted, CancelResult, DeduplicatedJob, Job, JobList, Submitted, answer
from comfyq.api.schemas import BatchRequest, JobRequest
from comfyq.api.services import services
from comfyq.job_view import present_job, signed_url
from comfyq.jobs import STATUSES, TERMINAL_STATUSES, IdempotencyConflict, NewJob
from comfyq.settings import Settings
from comfyq.storage import LocalStorage
from comfyq.workflows import ParamError

log = logging.getLogger(__name__)
bp = Blueprint("jobs", __name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
JOBS_CURSOR = "id"  # GET /jobs' cursors: `id:<the last job id seen>`


def digits_at_most(number: int) -> str:
    """A regex of the decimal numbers from 0 to number: fewer digits, or as many with a smaller digit after a
    common prefix, or number itself."""
    text = str(number)
    shorter = [rf"\d{{1,{len(text) - 1}}}"] if len(text) > 1 else []
    below = [f"{text[:i]}[0-{int(digit) - 1}]" + (rf"\d{{{len(text) - i - 1}}}" if i < len(text) - 1 else "")
             for i, digit in enumerate(text) if digit != "0"]
    return "(?:" + "|".join([*shorter, *below, text]) + ")"


class BigintConverter(IntegerConverter):
    """The app's `<int:...>` path parts: 0 to the largest Postgres bigint. A larger number (or a sign) matches no
    route and answers 404, as an unknown job does, instead of reaching the database as an out-of-range bigint.
    The range is in the regex, not only in the conversion: werkzeug answers a path whose number matched a rule's
    regex but failed its conversion with 405 when another method's rule has the same shape (DELETE /jobs/{id})."""

    regex = digits_at_most(MAX_ID)

    def __init__(self, url_map: Map, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", MAX_ID)
        super().__init__(url_map, *args, **kwargs)


def _settings() -> Settings:
    settings: Settings = current_app.config["COMFYQ_SETTINGS"]
    return settings


def _canonical_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _request_hash(key: str | None, path: str, body: Any) -> str | None:
    """What a repeat under the same Idempotency-Key must match; only computed when there is a key (hashing
    the canonical form of a 10k-job body is not free)."""
    return None if key is None else _canonical_hash({"path": path, "body": body})


def _idempotency_key(key: str | None) -> str | None:
    """The request's Idempotency-Key header, checked; None without one."""
    if key is None:
        return None
    key = key.strip()
    if not 1 <= len(key) <= 255 or "\x00" in key:
        raise ApiError(400, "invalid_idempotency_key", f"{IDEMPOTENCY_HEADER} must be 1 to 255 characters, without NUL")
    return key


def _enforce_quota_unless_replay(caller: Caller, key: str | None, adding: int) -> None:
    """The queued-job quota applies to every new submission; only a repeat of a key already used (answered
    from what it created then, or refused with 409) adds nothing and skips it."""
    if key is not None and services().queue.idempotency_key_used(caller.tenant, key):
        return
    enforce_quota(caller, adding)


def build_job(req: JobRequest, caller: Caller, settings: Settings, *, with_dedupe_hash: bool = True) -> NewJob:
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
        # Random defaults (seeds) are left out: with dedupe, "the same request" means what the caller sent.
        identity: dict[str, Any] = {"workflow": req.workflow, "params": {
            k: v for k, v in params.items() if k in req.params or not workflow.params[k].random_default}}
    else:
        if not caller.allow_raw_graphs:
            raise ApiError(403, "raw_graphs_not_allowed",
                           f"tenant {caller.tenant!r} may submit only workflow templates, not raw graphs")
        graph = req.graph or {}
        params = {}
        problems = graph_problems(graph, settings.max_graph_nodes)
        if problems:
            raise ApiError(422, "invalid_graph", "the graph is not a valid ComfyUI API-format graph", problems)
        identity = {"graph": graph}
    rejection = node_limit_problems(graph)
    if rejection is not None:
        raise ApiError(422, "comfyui_validation_failed", "ComfyUI would reject this graph", rejection)
    return NewJob(graph=graph, workflow=req.workflow, params=params, priority=req.priority,
                  max_attempts=req.max_attempts or settings.default_max_attempts, tenant=caller.tenant,
                  timeout_seconds=req.timeout_seconds, deadline=req.deadline, callback_url=req.callback_url,
                  dedupe_hash=_canonical_hash(identity) if with_dedupe_hash else None)


def present(row: dict[str, Any]) -> dict[str, Any]:
    """The public view of a job row (comfyq/job_view.py, shared with the events process). Every stored output gets
    a download URL: the backend's signed one, or the API's own route for backends without URLs (local storage);
    `location` never shows a path on a host."""
    return present_job(row, services().storage, _settings().s3_presign_seconds, request.url_root.rstrip("/"))


def _submitted(row: dict[str, Any]) -> dict[str, Any]:
    """What a write answers about each job it touched: its id and status."""
    return {"id": row["id"], "status": row["status"]}


def _location(job_id: int) -> str:
    return url_for("jobs.get_job", job_id=job_id)


@bp.post("/jobs")
def submit_job() -> tuple[Response, int, dict[str, str]]:
    caller = require_token()
    enforce_rate(caller)
    row, status, deduplicated = submit_one(caller, json_body(), request.headers.get(IDEMPOTENCY_HEADER))
    if deduplicated:
        return answer(DeduplicatedJob, {**present(row), "deduplicated": True}), 200, {"Location": _location(row["id"])}
    return answer(Submitted, _submitted(row)), status, {"Location": _location(row["id"])}


def submit_one(caller: Caller, body: dict[str, Any], key_header: str | None) -> tuple[dict[str, Any], int, bool]:
    """One submission validated and written, for POST /jobs and the web console: (the job's row, 200 for a replay
    or a deduplicated twin and 202 for a new job, whether the row is a succeeded twin). Raises ApiError."""
    req = validated(JobRequest, body)
    new_job = build_job(req, caller, _settings())
    if req.dedupe and new_job.dedupe_hash:
        twin = services().queue.succeeded_twin(caller.tenant, new_job.dedupe_hash)
        if twin is not None:
            return twin, 200, True
    key = _idempotency_key(key_header)
    _enforce_quota_unless_replay(caller, key, 1)
    try:
        submission = services().queue.submit([new_job], caller.tenant, idempotency_key=key,
                                             request_hash=_request_hash(key, "/jobs", body))
    except IdempotencyConflict as exc:
        raise ApiError(409, "idempotency_key_reused", str(exc), {"idempotency_key": key}) from exc
    if not submission.replayed:
        count_submitted(1)
    return submission.rows[0], 200 if submission.replayed else 202, False


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Building a batch allocates ~500k containers (10k graphs) and none of them form cycles, yet each
    allocation burst sets off the cyclic collector, which rescans everything still alive: measured at 25-35%
    of a 10k-job request. Reference counting frees all of it as usual; the collector resumes afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@bp.post("/jobs/batch")
def submit_batch() -> tuple[Response, int]:
    with _collector_paused():
        return _submit_batch()


def _submit_batch() -> tuple[Response, int]:
    caller = require_token()
    enforce_rate(caller)
    settings = _settings()
    # Counted while the body is read (413 as soon as the item past the limit arrives), and once more here for a
    # list short enough to be read in one piece: either way before any item is validated.
    body = json_body(max_bytes=settings.max_batch_body_bytes, max_list_items=settings.max_batch_jobs)
    written, status = submit_many(caller, body, request.headers.get(IDEMPOTENCY_HEADER))
    return answer(BatchSubmitted, {"count": len(written), "jobs": written}), status


def submit_many(caller: Caller, body: dict[str, Any], key_header: str | None) -> tuple[list[dict[str, Any]], int]:
    """A batch body validated and written all or nothing, for POST /jobs/batch and the web console's sweeps:
    ([{id, status}] of its jobs, 200 for a replay and 202 for new jobs). Raises ApiError."""
    settings = _settings()
    items = body.get("jobs")
    if isinstance(items, list) and len(items) > settings.max_batch_jobs:
        raise too_many_items(len(items), settings.max_batch_jobs)
    batch = validated(BatchRequest, body)
    jobs, problems, invalid = _build_batch(batch, caller, settings)
    if invalid:
        listed = "" if invalid <= len(problems) else f" (the first {len(problems)} are listed)"
        raise ApiError(422, "invalid_batch_items", f"{invalid} item(s) are invalid{listed}; nothing was written",
                       {"items": problems, "invalid": invalid})
    key = _idempotency_key(key_header)
    _enforce_quota_unless_replay(caller, key, len(jobs))
    try:
        submission = services().queue.submit(jobs, caller.tenant, idempotency_key=key,
                                             request_hash=_request_hash(key, "/jobs/batch", body))
    except IdempotencyConflict as exc:
        raise ApiError(409, "idempotency_key_reused", str(exc), {"idempotency_key": key}) from exc
    if not submission.replayed:
        count_submitted(len(submission.rows))
    return [_submitted(row) for row in submission.rows], 200 if submission.replayed else 202


def _build_batch(batch: BatchRequest, caller: Caller, settings: Settings,
                 ) -> tuple[list[NewJob], list[dict[str, Any]], int]:
    """Every item validated and built: the jobs, the first MAX_LISTED_ERRORS problems (index, code, message,
    details) and how many items are invalid. Once one is, the jobs are no longer kept, only counted."""
    jobs: list[NewJob] = []
    problems: list[dict[str, Any]] = []
    invalid = 0
    for index, item in enumerate(batch.jobs):
        try:
            req = validated(JobRequest, item)
            if req.dedupe:
                raise ApiError(422, "validation_error", "'dedupe' applies to single submissions (POST /jobs)")
            # Batch jobs carry no dedupe hash: hashing 10k canonical requests cost a tenth of the ingest time,
            # and dedupe is a single-submission feature.
            job = build_job(req, caller, settings, with_dedupe_hash=False)
        except ValidationError as exc:
            problem = {"index": index, "code": "validation_error", "details": validation_details(exc)}
        except ApiError as exc:
            problem = {"index": index, "code": exc.code, "message": exc.message, "details": exc.details}
        else:
            if not invalid:
                jobs.append(job)
            continue
        invalid += 1
        jobs.clear()
        if len(problems) < MAX_LISTED_ERRORS:
            problems.append(problem)
    return jobs, problems, invalid


@bp.get("/jobs/<int:job_id>")
def get_job(job_id: int) -> Response:
    caller = require_token()
    row = services().queue.get(job_id, caller.tenant)
    if row is None:
        raise ApiError(404, "not_found", f"no job {job_id}")
    return answer(Job, present(row))


@bp.get("/jobs/<int:job_id>/outputs/<int:index>")
def get_output(job_id: int, index: int) -> ResponseReturnValue:
    return output_response(require_token(), job_id, index)


def output_response(caller: Caller, job_id: int, index: int) -> ResponseReturnValue:
    """One stored output of one of the caller's jobs (GET /jobs/{id}/outputs/{i} and the web console): streamed
    from local storage (Content-Type, ETag, Last-Modified, range requests), or a redirect to a short-lived signed
    URL of the object storage."""
    row = services().queue.get(job_id, caller.tenant)
    outputs = (row or {}).get("outputs") or []
    if row is None or not 0 <= index < len(outputs):
        raise ApiError(404, "not_found", f"job {job_id} has no output {index}")
    output = outputs[index]
    storage = services().storage
    signed = signed_url(storage, output["key"], min(300, _settings().s3_presign_seconds))
    if signed is not None:
        return redirect(signed, code=302)
    path = storage.path_of(output["key"]) if isinstance(storage, LocalStorage) else None
    if path is None or not path.is_file():
        raise ApiError(404, "output_missing", f"output {index} of job {job_id} is not in storage (removed by "
                       "retention, or this API does not share the workers' storage folder)")
    return send_file(path, mimetype=output.get("content_type") or "application/octet-stream", conditional=True,
                     etag=True, max_age=0, download_name=output.get("filename") or path.name)


@bp.get("/jobs")
def list_jobs() -> Response:
    return answer(JobList, list_page(require_token(), request.args))


def list_page(caller: Caller, args: MultiDict[str, str]) -> dict[str, Any]:
    """One page of the caller's jobs (GET /jobs and the web console): {"jobs", "next_cursor"}; raises ApiError
    for a bad query."""
    unknown = set(args) - {"status", "workflow", "since", "limit", "cursor"}
    if unknown:
        raise ApiError(400, "invalid_query", "unknown query parameters", {"unknown": sorted(unknown)})
    status = args.get("status")
    if status is not None and status not in STATUSES:
        raise ApiError(400, "invalid_query", f"status must be one of {', '.join(sorted(STATUSES))}")
    since = None
    if "since" in args:
        try:
            since = datetime.fromisoformat(args["since"].upper().replace("Z", "+00:00"))
        except ValueError as exc:
            raise ApiError(400, "invalid_query", "since must be an ISO 8601 time, e.g. 2026-01-01T00:00:00Z") from exc
        if since.tzinfo is None:
            raise ApiError(400, "invalid_query", "since needs a timezone, e.g. 2026-01-01T00:00:00Z")
        try:
            since = since.astimezone(UTC)  # Postgres refuses offsets beyond 15:59
        except OverflowError as exc:
            raise ApiError(400, "invalid_query", "since is out of range") from exc
    if "\x00" in args.get("workflow", ""):
        raise ApiError(400, "invalid_query", "workflow may not contain NUL characters")
    limit = page_limit(args, _settings().list_page_max)
    # An empty cursor: the first page.
    before_id = decode_cursor(args["cursor"], JOBS_CURSOR, 1)[0] if args.get("cursor") else None
    rows = services().queue.list_jobs(caller.tenant, status=status, workflow=args.get("workflow"), since=since,
                                 before_id=before_id, limit=limit + 1)
    page = rows[:limit]
    next_cursor = encode_cursor(JOBS_CURSOR, page[-1]["id"]) if len(rows) > limit else None
    return {"jobs": [present(row) for row in page], "next_cursor": next_cursor}


@bp.delete("/jobs/<int:job_id>")
@bp.post("/jobs/<int:job_id>/cancel")
def cancel_job(job_id: int) -> Response:
    """Both routes cancel: DELETE /jobs/{id} is the REST spelling of POST /jobs/{id}/cancel, with the same rules
    and answer. The job's row and history stay (retention deletes finished jobs)."""
    caller = require_token()
    enforce_rate(caller)
    return answer(CancelResult, {**_submitted(cancel(caller, job_id)), "cancel_requested": True})


def cancel(caller: Caller, job_id: int) -> dict[str, Any]:
    """Cancel one of the caller's jobs (the cancel routes and the web console); raises ApiError 404 or 409."""
    row = services().queue.cancel(job_id, caller.tenant)
    if row is None:
        current = services().queue.status(job_id, caller.tenant)
        if current is None:
            raise ApiError(404, "not_found", f"no job {job_id}")
        raise ApiError(409, "not_cancelable", f"job {job_id} is already {current}", {"status": current})
    return row


@bp.post("/jobs/<int:job_id>/retry")
def retry_job(job_id: int) -> Response:
    caller = require_token()
    enforce_rate(caller)
    return answer(Submitted, _submitted(retry(caller, job_id)))


def retry(caller: Caller, job_id: int) -> dict[str, Any]:
    """Queue one of the caller's ended jobs again (POST /jobs/{id}/retry and the web console); raises ApiError."""
    current = services().queue.status(job_id, caller.tenant)
    if current is None:
        raise ApiError(404, "not_found", f"no job {job_id}")
    if current not in TERMINAL_STATUSES - {"succeeded"}:
        raise ApiError(409, "not_retryable", f"job {job_id} is {current}; only failed, canceled or expired jobs "
                       "can be retried", {"status": current})
    enforce_quota(caller, 1)
    row = services().queue.retry(job_id, caller.tenant)
    if row is None:  # it changed between the two reads
        raise ApiError(409, "not_retryable", f"job {job_id} changed state; read it again")
    return row
