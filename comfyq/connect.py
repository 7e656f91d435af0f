"""Picks the database: DATABASE_URL when set, else the embedded server in the project's data folder."""

from __future__ import annotations

from comfyq import embedded
from comfyq.db import Database
from comfyq.errors import ConfigurationError
from comfyq.settings import Settings


def database_url(settings: Settings, *, start_embedded: bool = True) -> str:
    if settings.database_url:
        return settings.database_url
    if not start_embedded:
        raise ConfigurationError("DATABASE_URL is not set")
    return embedded.start(settings.data_dir / "pg")


def open_database(settings: Settings, *, application_name: str = "comfyq",
                  start_embedded: bool = True) -> Database:
    return Database(database_url(settings, start_embedded=start_embedded), settings.sql_dir,
                    min_size=settings.db_pool_min, max_size=settings.db_pool_max,
                    connect_timeout=settings.db_connect_timeout, application_name=application_name,
                    prepare=settings.db_prepare_statements, io_timeout=settings.db_io_timeout_seconds)
