"""One settings object, read once from the environment, so no module reads os.environ on its own."""

from __future__ import annotations

import itertools
import re
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from comfyq.errors import ConfigurationError
from comfyq.resources import package_path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# COMFYQ_API_TOKEN opens everything (an operator of every tenant), so it must be a random secret, never a value
# copied from an example: .env.example's `change-me...` placeholders, `<the token>`-style ones, or too few
# distinct characters for anything random (`xxxx...`, `1234...`; 32 random hex digits have fewer than 8 once in
# 30 million).
API_TOKEN_MIN_LENGTH = 32
API_TOKEN_MIN_DISTINCT = 8
# COMFYQ_WORKER_DEAD_AFTER_SECONDS: its default, and the fewest heartbeat intervals it may span.
DEAD_AFTER_SECONDS = 120.0
DEAD_AFTER_HEARTBEATS = 3
API_TOKEN_PLACEHOLDER = re.compile(r"change[-_ ]?me|your[-_ ]?token|^<.*>$", re.IGNORECASE)


def _local_state() -> Path:
    """Local state (the embedded database, demo logs, local outputs): ./var in a source checkout, else var/ under
    the working directory (never inside site-packages)."""
    if (PROJECT_ROOT / "pyproject.toml").is_file():
        return PROJECT_ROOT / "var"
    return Path.cwd() / "var"


class Settings(BaseSettings):
    """Every knob of comfyq. Names are the environment variables, upper-cased, with a COMFYQ_ prefix
    except those that the ecosystem already names (DATABASE_URL, COMFYUI_URL, QUEUE_BACKEND, REDIS_URL)."""

    # hide_input_in_errors: a refused value is never echoed (it may be a token, a password in a URL, a key).
    model_config = SettingsConfigDict(env_prefix="COMFYQ_", extra="ignore", frozen=True,
                                      populate_by_name=True, hide_input_in_errors=True)

    database_url: str | None = Field(default=None, validation_alias=AliasChoices("DATABASE_URL"))
    comfyui_url: str = Field(default="http://127.0.0.1:8188", validation_alias=AliasChoices("COMFYUI_URL"))

    # Where the project keeps its files.
    sql_dir: Path = Field(default_factory=lambda: package_path("comfyq_sql"))
    workflows_dir: Path = Field(default_factory=lambda: package_path("comfyq_workflows"))
    data_dir: Path = Field(default_factory=_local_state)

    # Database pool.
    db_pool_min: int = Field(default=1, ge=0)
    db_pool_max: int = Field(default=4, ge=1)
    db_connect_timeout: int = Field(default=5, ge=1)
    # PREPARE each named query once per connection (docs/configuration.md). Off behind PgBouncer in transaction
    # mode, which hands a session's statements to other server connections.
    db_prepare_statements: bool = True

    # Queue behaviour.
    lease_seconds: float = Field(default=60.0, gt=0)
    heartbeat_seconds: float = Field(default=10.0, gt=0)
    rescue_interval_seconds: float = Field(default=15.0, gt=0)
    poll_interval_seconds: float = Field(default=5.0, gt=0)
    default_max_attempts: int = Field(default=3, ge=1, le=100)
    retry_base_seconds: float = Field(default=2.0, gt=0)
    retry_max_seconds: float = Field(default=300.0, gt=0)
    priority_min: int = -1000
    priority_max: int = 1000

    # Queue transport (docs/redis.md). "postgres": workers claim with SKIP LOCKED and sleep on LISTEN.
    # "redis": Postgres stays the system of record, job ids also travel through RQ queues, one per priority band.
    queue_backend: str = Field(default="postgres", validation_alias=AliasChoices("QUEUE_BACKEND"))
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL"))
    redis_prefix: str = "comfyq"  # RQ queue names and message ids start with it (several deployments, one Redis)
    # Lower bounds of the priority bands, highest first: "100,10,1,0,-9,-99" makes the bands >=100, 10..99,
    # 1..9, 0, -9..-1, -99..-10 and <=-100. Workers take the highest non-empty band first, FIFO inside a band.
    redis_band_floors: str = "100,10,1,0,-9,-99"
    reconcile_interval_seconds: float = Field(default=5.0, gt=0)  # re-enqueue queued rows whose message is lost
    reconcile_grace_seconds: float = Field(default=5.0, ge=0)  # a row this fresh may still be being published
    redis_scheduler_seconds: float = Field(default=0.5, gt=0)  # moves due delayed messages (RQ's scheduler)
    redis_retry_seconds: float = Field(default=5.0, gt=0)  # after a Redis error: Postgres only for this long

    # Worker and ComfyUI.
    worker_id: str | None = None
    # A worker silent this long is declared dead by the others' maintenance ticks (and an operator may forget it).
    # Above the n8n alert's heartbeat_silence_seconds plus its period, so a death is announced before it is handled.
    worker_dead_after_seconds: float = Field(default=DEAD_AFTER_SECONDS, gt=0)
    job_timeout_seconds: float = Field(default=1800.0, gt=0)
    comfyui_connect_timeout: float = Field(default=5.0, gt=0)
    comfyui_request_timeout: float = Field(default=30.0, gt=0)
    progress_min_interval_seconds: float = Field(default=0.5, ge=0)
    # A prompt with no event for this long is looked up in /history and /queue, whatever the socket says.
    history_poll_seconds: float = Field(default=2.0, gt=0)
    # Hear cancels at once through LISTEN comfyq_cancel; off behind a pooler without LISTEN (PgBouncer in transaction
    # mode): cancels then arrive with the next heartbeat.
    cancel_listen: bool = True

    # Outages of what the worker depends on (docs/operations.md, "Outages"). An outage spends no attempt: the
    # worker stops claiming, probes again with jittered backoff between these bounds, and resumes by itself.
    dependency_timeout_seconds: float = Field(default=5.0, gt=0)  # longest wait for one answer of ComfyUI or Redis
    db_io_timeout_seconds: float | None = Field(default=10.0, gt=0)  # a database silent this long is down (hung)
    outage_backoff_min_seconds: float = Field(default=1.0, gt=0)
    outage_backoff_max_seconds: float = Field(default=30.0, gt=0)
    outage_budget_seconds: float = Field(default=600.0, gt=0)  # then in-flight jobs go back to the queue

    # Storage: "local" writes under storage_dir; "s3" writes to an S3 API (MinIO, AWS, ...).
    storage_backend: str = "local"
    storage_dir: Path = Field(default_factory=lambda: _local_state() / "outputs")
    s3_endpoint: str | None = None  # host:port or URL of the S3 API, e.g. minio:9000
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_bucket: str = "comfyq-outputs"
    s3_region: str | None = None
    s3_secure: bool = False
    s3_presign_seconds: int = Field(default=3600, ge=60, le=7 * 24 * 3600)

    # Prefetch: jobs handed to ComfyUI's own queue ahead of the one running (0 = one job at a time).
    prefetch_depth: int = Field(default=1, ge=0, le=8)

    # Input images given as URLs in params or LoadImage inputs.
    input_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    input_timeout_seconds: float = Field(default=30.0, gt=0)
    # Hosts or CIDR blocks allowed even though they are private/loopback/link-local (comma separated).
    url_allowlist: str = ""

    # Completion callbacks (Standard Webhooks), signed with each tenant's own secrets (comfyq tenant
    # callback-secret). Deprecated: COMFYQ_CALLBACK_SECRET ("whsec_" + base64) is stored by the first worker that
    # starts with it as the secret of api_tenant, if that tenant never had one; after that it is ignored.
    callback_secret: str | None = None
    callback_max_tries: int = Field(default=5, ge=1, le=20)
    callback_timeout_seconds: float = Field(default=10.0, gt=0)

    # Observability.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)  # worker Prometheus port; unset = off
    # The bearer token the API's /metrics asks for (what Prometheus sends); unset or empty, /metrics is open.
    # Its own secret, not an API token: it opens the scrape and nothing else.
    metrics_token: str | None = Field(default=None, min_length=16)
    log_format: str = "text"  # text | json

    # Where the operator CLI finds the API.
    api_url: str = "http://127.0.0.1:8000"

    # API. COMFYQ_API_TOKEN is an optional bootstrap operator token of api_tenant (others live in api_tokens), and
    # the token the CLI sends. At least API_TOKEN_MIN_LENGTH random characters: see _random_api_token.
    api_token: str | None = None
    api_tenant: str = "default"
    token_cache_seconds: float = Field(default=5.0, ge=0)  # a revoked token stops working within this time
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_batch_body_bytes: int = Field(default=64 * 1_048_576, ge=1024)
    max_batch_jobs: int = Field(default=10_000, ge=1)
    list_page_max: int = Field(default=500, ge=1)
    # Per-tenant defaults; a tenant's own row in `tenants` overrides them. Unset = unlimited.
    default_max_queued_jobs: int | None = Field(default=None, ge=0)
    default_rate_per_second: float | None = Field(default=None, gt=0)
    default_rate_burst: int = Field(default=50, ge=1)
    max_prompt_chars: int = Field(default=10_000, ge=1)
    max_graph_nodes: int = Field(default=500, ge=1)

    # The events process (comfyq events, docs/events.md): live job streams and bounded waits.
    events_bind: str = "127.0.0.1:8001"  # loopback by default, like the API: published through nginx
    events_heartbeat_seconds: float = Field(default=15.0, gt=0)  # a comment line on an idle stream this often
    events_subscriber_buffer: int = Field(default=256, ge=1)  # events a subscriber may lag behind; then dropped
    events_gap_wait_seconds: float = Field(default=2.0, gt=0)  # how long a missing job_logs id may hold the rest
    events_poll_seconds: float = Field(default=1.0, gt=0)  # a read without a notification (claims send none)
    events_wait_max_seconds: float = Field(default=60.0, gt=0)  # the longest ?wait= a request may ask for
    events_stream_secret: str | None = Field(default=None, min_length=32)  # signs stream tokens; unset = random
    events_stream_token_seconds: int = Field(default=60, ge=5, le=3600)  # a stream token is good this long
    events_api_url: str = "http://127.0.0.1:8000"  # where POST /jobs?wait= hands the submission to the API
    events_url: str | None = None  # where the CLI (watch, submit --wait) reads job streams; unset = api_url

    # The web console (/ui/, docs/ui.md). Its session cookie is signed with console_secret; every API worker and
    # host must share it, so unset means derived from events_stream_secret, and with neither the console is off.
    console_secret: str | None = Field(default=None, min_length=32)
    console_events_url: str = ""  # where console pages open job streams; empty = their own origin (nginx)

    log_level: str = "INFO"

    @field_validator("api_token")
    @classmethod
    def _random_api_token(cls, value: str | None) -> str | None:
        """Refuse a short or placeholder token at start-up: the API would otherwise accept `x` (or the example's
        `change-me-to-a-long-random-string`) as an operator token of every tenant, silently. Empty means unset.
        The messages never include the value."""
        if not value:
            return None
        hint = ("; `comfyq init` writes a random one, or: "
                "python3 -c 'import secrets; print(\"cq_\" + secrets.token_urlsafe(32))'")
        if API_TOKEN_PLACEHOLDER.search(value):
            raise ValueError("COMFYQ_API_TOKEN is a placeholder, not a secret" + hint)
        if len(value) < API_TOKEN_MIN_LENGTH:
            raise ValueError(f"COMFYQ_API_TOKEN is shorter than {API_TOKEN_MIN_LENGTH} characters" + hint)
        if len(set(value)) < API_TOKEN_MIN_DISTINCT or value != value.strip():
            raise ValueError("COMFYQ_API_TOKEN does not look random (too few distinct characters, or spaces around "
                             "it)" + hint)
        return value

    @field_validator("storage_backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value not in {"local", "s3"}:
            raise ValueError(f"unknown storage backend {value!r}; expected 'local' or 's3'")
        return value

    @field_validator("queue_backend")
    @classmethod
    def _known_queue_backend(cls, value: str) -> str:
        if value not in {"postgres", "redis"}:
            raise ValueError(f"unknown queue backend {value!r}; expected 'postgres' or 'redis'")
        return value

    @field_validator("redis_prefix")
    @classmethod
    def _prefix_chars(cls, value: str) -> str:
        if not value or not all(c.isascii() and (c.isalnum() or c == "_") for c in value):
            raise ValueError("COMFYQ_REDIS_PREFIX may hold only letters, digits and '_'")
        return value

    @field_validator("redis_band_floors")
    @classmethod
    def _band_floors(cls, value: str) -> str:
        try:
            floors = [int(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"COMFYQ_REDIS_BAND_FLOORS must be integers separated by commas, got {value!r}") from None
        if not floors or any(a <= b for a, b in itertools.pairwise(floors)):
            raise ValueError("COMFYQ_REDIS_BAND_FLOORS needs at least one floor, strictly descending")
        return ",".join(str(f) for f in floors)

    @model_validator(mode="after")
    def _dead_after_heartbeats(self) -> Settings:
        """A worker is declared dead only after several missed heartbeats, never for one slow tick."""
        if self.worker_dead_after_seconds < DEAD_AFTER_HEARTBEATS * self.heartbeat_seconds:
            raise ValueError(f"COMFYQ_WORKER_DEAD_AFTER_SECONDS must be at least {DEAD_AFTER_HEARTBEATS} x "
                             f"COMFYQ_HEARTBEAT_SECONDS ({DEAD_AFTER_HEARTBEATS * self.heartbeat_seconds:g} s)")
        return self

    @model_validator(mode="after")
    def _redis_needs_url(self) -> Settings:
        if self.queue_backend == "redis" and not self.redis_url:
            raise ValueError("QUEUE_BACKEND=redis needs REDIS_URL (e.g. redis://redis:6379/0)")
        return self

    @property
    def band_floors(self) -> tuple[int, ...]:
        return tuple(int(part) for part in self.redis_band_floors.split(","))

    @field_validator("metrics_token", "events_stream_secret", "console_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return value or None

    @field_validator("log_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in {"text", "json"}:
            raise ValueError(f"unknown log format {value!r}; expected 'text' or 'json'")
        return value

    @field_validator("comfyui_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"COMFYUI_URL must be an http(s) URL, got {value!r}")
        return value.rstrip("/")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; parsed once so a bad value fails at start-up, not mid-job, as a
    ConfigurationError that names each bad setting and why (never its value)."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigurationError(settings_problems(exc)) from None


def settings_problems(exc: ValidationError) -> str:
    problems = [f"{'.'.join(str(part) for part in error['loc']) or 'settings'}: {error['msg']}"
                for error in exc.errors(include_url=False, include_input=False)]
    return "invalid settings: " + "; ".join(problems)
