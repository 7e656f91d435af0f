"""One settings object, read once from the environment, so no module reads os.environ on its own."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Every knob of comfyq. Names are the environment variables, upper-cased, with a COMFYQ_ prefix
    except the two that the ecosystem already names (DATABASE_URL, COMFYUI_URL)."""

    model_config = SettingsConfigDict(env_prefix="COMFYQ_", extra="ignore", frozen=True,
                                      populate_by_name=True)

    database_url: str | None = Field(default=None, validation_alias=AliasChoices("DATABASE_URL"))
    comfyui_url: str = Field(default="http://127.0.0.1:8188", validation_alias=AliasChoices("COMFYUI_URL"))

    # Where the project keeps its files.
    sql_dir: Path = PROJECT_ROOT / "sql"
    workflows_dir: Path = PROJECT_ROOT / "workflows"
    data_dir: Path = PROJECT_ROOT / "var"

    # Database pool.
    db_pool_min: int = Field(default=1, ge=0)
    db_pool_max: int = Field(default=4, ge=1)
    db_connect_timeout: int = Field(default=5, ge=1)

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

    # Worker and ComfyUI.
    worker_id: str | None = None
    job_timeout_seconds: float = Field(default=1800.0, gt=0)
    comfyui_connect_timeout: float = Field(default=5.0, gt=0)
    comfyui_request_timeout: float = Field(default=30.0, gt=0)
    progress_min_interval_seconds: float = Field(default=0.5, ge=0)

    # Storage: "local" writes under storage_dir.
    storage_backend: str = "local"
    storage_dir: Path = PROJECT_ROOT / "var" / "outputs"

    # API.
    api_token: str | None = None
    api_tenant: str = "default"
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_prompt_chars: int = Field(default=10_000, ge=1)
    max_graph_nodes: int = Field(default=500, ge=1)

    log_level: str = "INFO"

    @field_validator("storage_backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value not in {"local"}:
            raise ValueError(f"unknown storage backend {value!r}; expected 'local'")
        return value

    @field_validator("comfyui_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"COMFYUI_URL must be an http(s) URL, got {value!r}")
        return value.rstrip("/")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; parsed once so a bad value fails at start-up, not mid-job."""
    return Settings()
