"""Request bodies, validated strictly: unknown fields and wrong types are refused, never guessed at."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from comfyq.tokens import TENANT_PATTERN, Role


class JobRequest(BaseModel):
    """POST /jobs: either a template name with params, or a raw API-format graph."""

    model_config = ConfigDict(extra="forbid")

    workflow: StrictStr | None = Field(default=None, min_length=1, max_length=100)
    params: dict[str, Any] = Field(default_factory=dict)
    graph: dict[str, Any] | None = None
    priority: StrictInt = 0
    max_attempts: StrictInt | None = Field(default=None, ge=1, le=100)
    timeout_seconds: StrictInt | None = Field(default=None, ge=1, le=86400)
    deadline: datetime | None = None
    callback_url: StrictStr | None = Field(default=None, max_length=2000,
                                           pattern=r"^https?://[^\s/?#]+[^\s]*$")
    dedupe: bool = False

    @field_validator("deadline")
    @classmethod
    def _deadline_in_utc(cls, value: datetime | None) -> datetime | None:
        """In UTC (Postgres refuses offsets beyond 15:59) and far enough from year 1 and 9999 that every
        session time zone can read it back (Python has no year 0 or 10000)."""
        if value is None or value.tzinfo is None:
            return value  # a missing time zone is reported by _one_source
        try:
            value = value.astimezone(UTC)
        except OverflowError:
            value = datetime.min.replace(tzinfo=UTC)
        if not 2 <= value.year <= 9998:
            raise ValueError("'deadline' must be between the years 2 and 9998")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> JobRequest:
        if (self.workflow is None) == (self.graph is None):
            raise ValueError("give exactly one of 'workflow' (with 'params') or 'graph'")
        if self.graph is not None and self.params:
            raise ValueError("'params' apply to a workflow template, not to a raw graph")
        if self.deadline is not None and self.deadline.tzinfo is None:
            raise ValueError("'deadline' needs a timezone, e.g. 2026-01-01T00:00:00Z")
        return self


class BatchRequest(BaseModel):
    """POST /jobs/batch: many jobs, written all or nothing."""

    model_config = ConfigDict(extra="forbid")

    jobs: list[dict[str, Any]] = Field(min_length=1)


TenantName = Annotated[str, Field(strict=True, pattern=TENANT_PATTERN)]
INT32_MAX = 2**31 - 1  # the tenants table's integer columns
# The least rate_per_second: the tenants table keeps it as a Postgres real, which refuses what is nearer zero than
# about 1e-45 (5e-324 was a 500); below one request in 11 days a rate means nothing anyway.
RATE_MIN = 1e-6


class RetentionRequest(BaseModel):
    """POST /admin/retention: delete finished jobs older than this (with their logs and outputs), of the
    caller's tenant, or for an operator of every tenant or the one named."""

    model_config = ConfigDict(extra="forbid")

    older_than_days: float = Field(gt=0, le=36500)
    tenant: TenantName | None = None


class TokenRequest(BaseModel):
    """POST /admin/tokens: a new token; the tenant defaults to the caller's own."""

    model_config = ConfigDict(extra="forbid")

    tenant: TenantName | None = None
    role: Role = "submitter"
    description: StrictStr = Field(default="", max_length=200)


class TenantSettings(BaseModel):
    """PUT /admin/tenants/{name}: the tenant's whole settings; a limit left out falls back to the default."""

    model_config = ConfigDict(extra="forbid")

    allow_raw_graphs: StrictBool = False
    max_queued_jobs: StrictInt | None = Field(default=None, ge=0, le=INT32_MAX)
    rate_per_second: Annotated[float, Field(strict=True, ge=RATE_MIN, le=1_000_000)] | None = None
    rate_burst: StrictInt | None = Field(default=None, ge=1, le=INT32_MAX)
