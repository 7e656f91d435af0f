"""The Flask app factory: `gunicorn 'comfyq.api.app:create_app()'`."""

from __future__ import annotations

from flask import Flask

from comfyq.errors import ConfigurationError
from comfyq.settings import Settings, get_settings
from comfyq.workflows import load_workflows


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    if not settings.database_url:
        raise ConfigurationError("DATABASE_URL must be set for the API (run `comfyq db-url` for the embedded one)")
    load_workflows(settings.workflows_dir)  # fail at start-up, not on the first request, if a manifest is bad
    app = Flask("comfyq.api")
    app.config.update(
        COMFYQ_SETTINGS=settings, COMFYQ_TOKEN=settings.api_token, COMFYQ_TENANT=settings.api_tenant,
        MAX_CONTENT_LENGTH=settings.max_body_bytes, JSON_SORT_KEYS=False)
    app.json.sort_keys = False  # type: ignore[attr-defined]

    from comfyq.api.admin_api import bp as admin_bp  # noqa: PLC0415
    from comfyq.api.api_errors import register_error_handlers  # noqa: PLC0415
    from comfyq.api.console import init_console  # noqa: PLC0415
    from comfyq.api.health_api import bp as health_bp  # noqa: PLC0415
    from comfyq.api.job_logs_api import bp as job_logs_bp  # noqa: PLC0415
    from comfyq.api.jobs_api import BigintConverter  # noqa: PLC0415
    from comfyq.api.jobs_api import bp as jobs_bp  # noqa: PLC0415
    from comfyq.api.metrics import init_metrics  # noqa: PLC0415
    from comfyq.api.openapi import bp as openapi_bp  # noqa: PLC0415
    from comfyq.api.stats_api import bp as stats_bp  # noqa: PLC0415
    from comfyq.api.workflows_api import bp as workflows_bp  # noqa: PLC0415

    app.url_map.converters["int"] = BigintConverter  # before any route is added: ids are bigints
    register_error_handlers(app)
    app.register_blueprint(health_bp)
    app.register_blueprint(jobs_bp)
    app.register_blueprint(job_logs_bp)
    app.register_blueprint(stats_bp)
    app.register_blueprint(admin_bp)
    app.register_blueprint(workflows_bp)
    app.register_blueprint(openapi_bp)
    init_console(app, settings)
    init_metrics(app)
    return app
