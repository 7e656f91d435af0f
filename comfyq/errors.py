"""The project's own exception tree: callers decide retry or give-up by type, never by driver internals."""

from __future__ import annotations

from typing import Any


class ComfyqError(Exception):
    """Base of every error comfyq raises on purpose."""


class ConfigurationError(ComfyqError):
    """A setting or a file the project ships is wrong; fix it and restart."""


class DependencyUnavailable(ComfyqError):
    """Something comfyq depends on (ComfyUI, Postgres, storage, Redis) is down, restarting or hung. An outage,
    never the job's fault: the worker stops claiming and waits for it, and no attempt is spent."""

    dependency = "dependency"


class DatabaseError(ComfyqError):
    """Any database failure that is not one of the more specific ones below."""


class DatabaseUnavailable(DatabaseError, DependencyUnavailable):
    """The database cannot be reached; callers answer 503 or retry later."""

    dependency = "database"


class OutcomeUnknown(DatabaseUnavailable):
    """The connection was lost after a write was sent: it may or may not have committed. A client retries with
    the same Idempotency-Key; the worker's writes are fenced, so sending them again is safe."""


class ConstraintViolation(DatabaseError):
    """A row broke a constraint (unique key, check); the input was wrong, retrying will not help."""

    def __init__(self, message: str, constraint: str | None = None) -> None:
        super().__init__(message)
        self.constraint = constraint


class MigrationError(ComfyqError):
    """A migration file is missing, edited after it was applied, or failed."""


class JobFailure(ComfyqError):
    """A job attempt failed; subclasses tell whether another attempt can help."""

    retryable = False
    error_type = "job_failed"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None, node: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.node = node

    def to_record(self) -> dict[str, Any]:
        """The JSON stored in job_queue.error."""
        record: dict[str, Any] = {"type": self.error_type, "message": self.message, "retryable": self.retryable}
        if self.node is not None:
            record["node"] = self.node
        if self.details:
            record["details"] = self.details
        return record


class TransientFailure(JobFailure):
    """Connection lost, 5xx, storage down, out of memory: another attempt later may succeed."""

    retryable = True
    error_type = "transient"


class ComfyUnavailable(DependencyUnavailable):
    """ComfyUI did not answer, answered 5xx, or dropped the connection: an outage, not the job's failure."""

    dependency = "comfyui"
    error_type = "comfyui_unavailable"


class StorageUnavailable(DependencyUnavailable):
    """The output storage refused or failed a write for reasons of its own (down, read-only, full): the
    outputs wait in ComfyUI and storing is tried again; the job is not failed."""

    dependency = "storage"


class PromptLost(TransientFailure):
    """ComfyUI forgot the prompt (restart): neither queued nor in history. The worker submits it again
    without spending an attempt; this failure is only recorded when that is impossible."""

    error_type = "prompt_lost"


class PermanentFailure(JobFailure):
    """The job itself is wrong; retrying cannot help."""

    error_type = "permanent"


class PromptRejected(PermanentFailure):
    """ComfyUI answered 400: the graph failed validation. node_errors are kept in details."""

    error_type = "validation_error"


class ExecutionFailed(PermanentFailure):
    """A node raised during execution."""

    error_type = "execution_error"


class JobTimedOut(TransientFailure):
    """The attempt ran past its timeout and was interrupted."""

    error_type = "timeout"
