"""One JSON error shape for every failure: {"error": {"code", "message", "details"}}."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from comfyq.api.responses import Error, answer
from comfyq.errors import ConstraintViolation, DatabaseUnavailable, OutcomeUnknown, StorageUnavailable
from comfyq.storage import StorageFailure

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, details: Any = None,
                   headers: dict[str, str] | None = None) -> tuple[Response, int, dict[str, str]]:
    body: dict[str, Any] = {"code": code, "message": message, "details": details if details is not None else {}}
    return answer(Error, {"error": body}), status, headers or {}


DB_RETRY_AFTER = {"Retry-After": "5"}
# Methods whose routes change nothing a client asked for: a lost connection never leaves their outcome unknown.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@contextlib.contextmanager
def bookkeeping_write() -> Iterator[None]:
    """For the API's own small writes before a request's real work (the token's last use, a rate-limit token):
    losing the connection during one leaves the request without effect, so the client hears
    database_unavailable (retry freely), not outcome_unknown."""
    try:
        yield
    except OutcomeUnknown as exc:
        raise DatabaseUnavailable(str(exc)) from exc


MAX_LISTED_ERRORS = 100  # problems named in one answer; the rest are counted


def validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic's errors without the echoed input (which may be megabytes), the first MAX_LISTED_ERRORS of them
    and a count of the rest: a body with an error per item or key must not answer one object per error."""
    errors = exc.errors(include_url=False, include_input=False)
    return capped([{"field": ".".join(str(p) for p in err["loc"]) or "(body)", "problem": err["msg"],
                    "type": err["type"]} for err in errors[:MAX_LISTED_ERRORS]], len(errors))


def capped(listed: list[dict[str, Any]], total: int) -> list[dict[str, Any]]:
    """Validation details of which the first len(listed) of total are named, with one more entry for the rest."""
    if total > len(listed):
        listed.append({"field": "(body)", "problem": f"{total - len(listed)} more problems are not listed",
                       "type": "too_many_errors"})
    return listed


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Any:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.errorhandler(ValidationError)
    def _validation(exc: ValidationError) -> Any:
        return error_response(422, "validation_error", "the request body failed validation",
                              validation_details(exc))

    @app.errorhandler(DatabaseUnavailable)
    def _db_down(exc: DatabaseUnavailable) -> Any:
        if isinstance(exc, OutcomeUnknown) and request.method not in READ_METHODS:
            log.warning("database connection lost during a write: %s", exc, extra={"action": "db_outcome_unknown"})
            return error_response(503, "outcome_unknown", "the database connection was lost while this request "
                                  "was being written: it may or may not have taken effect. Retry with the same "
                                  "Idempotency-Key, which answers with what the first try created or does it now; "
                                  "without a key, look for the job (GET /jobs) before sending it again",
                                  headers=DB_RETRY_AFTER)
        log.warning("database unavailable: %s", exc, extra={"action": "db_unavailable"})
        return error_response(503, "database_unavailable", "the database is unavailable and nothing was written; "
                              "retry later", headers=DB_RETRY_AFTER)

    @app.errorhandler(StorageUnavailable)
    @app.errorhandler(StorageFailure)  # not known to be an outage, but retrying later is the caller's best move
    def _storage_down(exc: StorageUnavailable | StorageFailure) -> Any:
        log.warning("storage unavailable: %s", exc, extra={"action": "storage_unavailable"})
        return error_response(503, "storage_unavailable", "the object storage is unavailable; retry later",
                              headers={"Retry-After": "30"})

    @app.errorhandler(ConstraintViolation)
    def _constraint(exc: ConstraintViolation) -> Any:
        return error_response(422, "constraint_violation", "the job breaks a database constraint",
                              {"constraint": exc.constraint})

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Any:
        code = (exc.name or "error").lower().replace(" ", "_")
        # The exception's own headers but its HTML Content-Type: 405 needs its Allow header (RFC 9110 15.5.6).
        headers = {name: value for name, value in exc.get_headers() if name.lower() != "content-type"}
        return error_response(exc.code or 500, code, exc.description or exc.name or "error", headers=headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        log.exception("unhandled error", extra={"action": "unhandled"})
        return error_response(500, "internal_error", "an unexpected error occurred")
