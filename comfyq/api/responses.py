"""Response bodies as pydantic models: the routes build their JSON through them (`body()`), and openapi.py writes
the document's response schemas from the same models, so the document cannot say one thing and the code answer
another. A row the model refuses is a bug and answers 500, not a body the document does not describe.

Times are datetimes serialized as `datetime.isoformat()` (`2026-01-05T10:00:00.120000+00:00`, as the API has
always written them), described as `date-time` strings."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

Timestamp = Annotated[datetime, PlainSerializer(datetime.isoformat, return_type=str),
                      WithJsonSchema({"type": "string", "format": "date-time"})]
Count = Annotated[int, Field(ge=0)]


class Response(BaseModel):
    """A response body: every field is written out (nulls included) and nothing else is allowed."""

    model_config = ConfigDict(extra="forbid")


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

    model_config = ConfigDict(json_schema_extra={"examples": [{"logs": [
        {"id": 101, "event": "queued", "from_status": None, "to_status": "queued", "attempt": 0, "worker_id": None,
         "message": None, "details": None, "duration_ms": None, "created_at": "2026-01-05T10:00:00.120000+00:00"},
        {"id": 102, "event": "claimed", "from_status": "queued", "to_status": "running", "attempt": 1,
         "worker_id": "gpu-1", "message": None, "details": None, "duration_ms": 1180,
         "created_at": "2026-01-05T10:00:01.300000+00:00"}], "next_cursor": "bG9nOjE3OjEwMg"}]})

    logs: list[JobLogEntry] = Field(description="Oldest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


# Every model a route answers with, for openapi.py (the models they nest come with them).
RESPONSE_MODELS: tuple[type[Response], ...] = (JobLogPage,)


def body(model: type[Response], value: dict[str, Any]) -> dict[str, Any]:
    """value checked against the model and written as JSON-ready data, in the model's field order."""
    return model.model_validate(value).model_dump(mode="json")
