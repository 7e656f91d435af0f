"""The console's pages. Each one reaches the queue through the same functions as the JSON routes (jobs_api.submit_one,
submit_many, list_page, cancel, retry, output_response), so the rules, limits and messages are the API's.
Every page but sign-in needs a session; every POST needs the session's CSRF token."""

from __future__ import annotations

import secrets
from typing import Any

from flask import Blueprint, abort, current_app, flash, g, jsonify, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from pydantic import ValidationError
from werkzeug.datastructures import MultiDict

from comfyq.api import jobs_api
from comfyq.api.api_errors import ApiError, validation_details
from comfyq.api.auth import Caller
from comfyq.api.console import forms, job_page, sweeps
from comfyq.api.console.session import csrf_ok, csrf_token, sign_in, signed_in
from comfyq.api.limits import enforce_rate
from comfyq.api.node_check import workflow_node_limits
from comfyq.api.services import services
from comfyq.jobs import STATUSES, TERMINAL_STATUSES
from comfyq.settings import Settings
from comfyq.stream_tokens import StreamCaller, StreamTokens
from comfyq.workflows import Workflow

bp = Blueprint("console", __name__, url_prefix="/ui", template_folder="templates", static_folder="static")
PUBLIC_ENDPOINTS = {"console.signin", "console.static"}
PAGE_SIZE = 25
TIMELINE_MAX = 200  # log rows shown on a job page


def _settings() -> Settings:
    settings: Settings = current_app.config["COMFYQ_SETTINGS"]
    return settings


def _caller() -> Caller:
    caller: Caller = g.console_caller
    return caller


@bp.before_request
def _guard() -> ResponseReturnValue | None:
    """No secret: a page that says how to turn the console on. Then CSRF on every POST, then a session."""
    if not current_app.secret_key:
        return render_template("disabled.html"), 503
    if request.method == "POST" and not csrf_ok():
        return render_template("message.html", title="Refused", message="The form was missing its security "
                               "token or it has expired. Go back, reload the page and try again."), 403
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    caller = signed_in()
    if caller is None:
        if request.method == "POST":
            abort(401)
        return redirect(url_for("console.signin", next=request.full_path if request.args else request.path))
    g.console_caller = caller
    return None


@bp.app_context_processor
def _globals() -> dict[str, Any]:
    return {"csrf_token": csrf_token, "caller": g.get("console_caller")}


@bp.get("/")
def home() -> ResponseReturnValue:
    return redirect(url_for("console.jobs"))


@bp.route("/signin", methods=["GET", "POST"])
def signin() -> ResponseReturnValue:
    error = None
    if request.method == "POST":
        token = request.form.get("token", "")
        if token.strip() and sign_in(token) is not None:
            target = request.args.get("next", "")
            return redirect(target if target.startswith("/ui/") else url_for("console.jobs"), code=303)
        error = "That token was not accepted: it is unknown, revoked or mistyped."
    return render_template("signin.html", error=error)


@bp.post("/signout")
def signout() -> ResponseReturnValue:
    session.clear()
    return redirect(url_for("console.signin"), code=303)


@bp.get("/jobs")
def jobs() -> ResponseReturnValue:
    args = MultiDict({k: v for k, v in request.args.items() if k in ("status", "cursor") and v})
    args["limit"] = str(PAGE_SIZE)
    try:
        page = jobs_api.list_page(_caller(), args)
    except ApiError as exc:
        return render_template("message.html", title="Jobs", message=exc.message), exc.status
    return render_template("jobs.html", page=page, statuses=sorted(STATUSES), status=args.get("status", ""),
                           retryable=TERMINAL_STATUSES - {"succeeded"}, final=TERMINAL_STATUSES)


def _job_action(job_id: int, action: str) -> ResponseReturnValue:
    caller = _caller()
    try:
        enforce_rate(caller)
        jobs_api.cancel(caller, job_id) if action == "cancel" else jobs_api.retry(caller, job_id)
    except ApiError as exc:
        flash(exc.message, "error")
    else:
        flash(f"Job {job_id}: {'cancel requested' if action == 'cancel' else 'queued again'}.", "info")
    target = request.form.get("next", "")
    return redirect(target if target.startswith("/ui/") else url_for("console.jobs"), code=303)


@bp.post("/jobs/<int:job_id>/cancel")
def cancel(job_id: int) -> ResponseReturnValue:
    return _job_action(job_id, "cancel")


@bp.post("/jobs/<int:job_id>/retry")
def retry(job_id: int) -> ResponseReturnValue:
    return _job_action(job_id, "retry")


@bp.route("/submit", methods=["GET", "POST"])
def submit() -> ResponseReturnValue:
    workflows = services().workflows
    name = request.values.get("workflow") or (sorted(workflows)[0] if workflows else "")
    workflow = workflows.get(name)
    if workflow is None:
        return render_template("message.html", title="Submit", message=f"No workflow template named {name!r}."), 404
    settings = _settings()
    errors: dict[str, str] = {}
    form = request.form if request.method == "POST" else None
    if form is not None:
        outcome = _submit_form(workflow, form, settings)
        if isinstance(outcome, dict):
            errors = outcome
        else:
            return outcome
    # Each rendering carries a new submission key; going back must fetch a new one, not resubmit under the old.
    return render_template(
        "submit.html", workflows=sorted(workflows), workflow=workflow, errors=errors,
        fields=forms.fields(workflow, workflow_node_limits(workflow), form), form=form or MultiDict(),
        priority=form.get("priority", "0") if form is not None else "0", general=errors.get(forms.GENERAL),
        priority_min=settings.priority_min, priority_max=settings.priority_max, sweepable=sweeps.sweepable(workflow),
        max_batch_jobs=settings.max_batch_jobs, submission_key=f"console-{secrets.token_urlsafe(18)}",
    ), 200, {"Cache-Control": "no-store"}


def _submit_form(workflow: Workflow, form: MultiDict[str, str], settings: Settings,
                 ) -> ResponseReturnValue | dict[str, str]:
    """The form submitted as POST /jobs (one job) or POST /jobs/batch (a sweep) would be, under the form's
    submission key as Idempotency-Key (a double click or a resent form adds no jobs): a redirect to the job or
    the batch, or the errors by field."""
    caller = _caller()
    key = form.get("submission_key") or f"console-{secrets.token_urlsafe(18)}"
    try:
        sweep = sweeps.parse(workflow, form, settings.max_batch_jobs)
    except ApiError as exc:
        return {sweeps.FIELD: exc.message, forms.GENERAL: "The sweep was refused; nothing was written."}
    try:
        enforce_rate(caller)
        if sweep is None:
            row, _, _ = jobs_api.submit_one(caller, forms.job_body(workflow, form), key)
            return redirect(url_for("console.job", job_id=row["id"]), code=303)
        jobs_api.submit_many(caller, sweeps.batch_body(forms.job_body(workflow, form), sweep), key)
        return redirect(url_for("console.batch", key=key), code=303)
    except ValidationError as exc:  # the body's shape, answered 422 by the API's error handler
        return forms.field_errors(ApiError(422, "validation_error", "the request body failed validation",
                                           validation_details(exc)))
    except ApiError as exc:
        return forms.field_errors(exc) if sweep is None else sweeps.batch_errors(exc, sweep)


@bp.get("/batches/<key>")
def batch(key: str) -> ResponseReturnValue:
    """The jobs one sweep created, found by the submission key they were written under (tenant-scoped)."""
    rows = services().queue.submission_jobs(_caller().tenant, key)
    if rows is None:
        return render_template("message.html", title="Batch", message="No such batch."), 404
    return render_template("batch.html", jobs=rows)


@bp.post("/jobs/<int:job_id>/resubmit")
def resubmit(job_id: int) -> ResponseReturnValue:
    """A new job with the same workflow and params (the stored ones, random seeds included, so it reproduces
    the first) or the same raw graph, priority, attempts and timeout, through POST /jobs's code."""
    caller = _caller()
    row = services().queue.get(job_id, caller.tenant)
    if row is None:
        flash(f"no job {job_id}", "error")
        return redirect(url_for("console.jobs"), code=303)
    try:
        enforce_rate(caller)
        new, _, _ = jobs_api.submit_one(caller, job_page.resubmit_body(row), None)
    except (ApiError, ValidationError) as exc:  # a stored setting outside today's limits is a ValidationError
        reason = exc.message if isinstance(exc, ApiError) else "its settings no longer pass validation"
        flash(f"Job {job_id} was not re-submitted: {reason}", "error")
        return redirect(url_for("console.job", job_id=job_id), code=303)
    flash(f"Job {new['id']}: a re-submission of job {job_id}.", "info")
    return redirect(url_for("console.job", job_id=new["id"]), code=303)


@bp.get("/jobs/<int:job_id>")
def job(job_id: int) -> ResponseReturnValue:
    caller = _caller()
    row = services().queue.get(job_id, caller.tenant)
    if row is None:
        return render_template("message.html", title="Job", message=f"No job {job_id}."), 404
    history = services().queue.history(job_id, caller.tenant, after_id=0, limit=TIMELINE_MAX) or []
    return render_template("job.html", job=jobs_api.present(row), history=history, final=TERMINAL_STATUSES,
                           error=job_page.error_view(row.get("error")),
                           # The stream resumes after the last row shown: what happens meanwhile is not missed.
                           last_event_id=history[-1]["id"] if history and len(history) < TIMELINE_MAX else "",
                           retryable=TERMINAL_STATUSES - {"succeeded"},
                           events_url=_settings().console_events_url.rstrip("/"))


@bp.get("/jobs/<int:job_id>/outputs/<int:index>")
def output(job_id: int, index: int) -> ResponseReturnValue:
    try:
        return jobs_api.output_response(_caller(), job_id, index)
    except ApiError as exc:
        return render_template("message.html", title="Output", message=exc.message), exc.status


def _stream_tokens() -> StreamTokens:
    """One signer per worker, on the events process's secret (without it the events process would not accept
    what this one signs; the console's job page then shows the state as loaded, and says why it is not live)."""
    signer: StreamTokens | None = current_app.extensions.get("console_stream_tokens")
    if signer is None:
        settings = _settings()
        signer = current_app.extensions["console_stream_tokens"] = StreamTokens(
            settings.events_stream_secret, settings.events_stream_token_seconds)
    return signer


@bp.post("/stream-token")
def stream_token() -> ResponseReturnValue:
    """A stream token for the job page's EventSource (fetch with the X-CSRF-Token header), one per (re)connect."""
    if not _settings().events_stream_secret:
        return jsonify(error="live updates need COMFYQ_EVENTS_STREAM_SECRET on the API and the events process"), 503
    caller = _caller()
    token, expires = _stream_tokens().issue(StreamCaller(caller.tenant, caller.role))
    return jsonify(stream_token=token, expires_at=expires)
