"""Per-process service objects (database pool, queue, templates), built on first use so each gunicorn
worker opens its own pool after fork."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from flask import current_app

from comfyq.connect import open_database
from comfyq.db import Database
from comfyq.jobs import JobQueue
from comfyq.settings import Settings
from comfyq.storage import Storage, build_storage
from comfyq.transport import build_transport
from comfyq.workflows import Workflow, load_workflows


@dataclass
class Services:
    db: Database
    queue: JobQueue
    workflows: dict[str, Workflow]
    storage: Storage


_lock = threading.Lock()


def build_services(settings: Settings) -> Services:
    db = open_database(settings, application_name="comfyq-api", start_embedded=False)
    # QUEUE_BACKEND=redis: every submit, and every retry through the API, also publishes the job ids after the
    # commit (comfyq/redis_transport.py); the routes are the same for both backends.
    queue = JobQueue(db, lease_seconds=settings.lease_seconds, transport=build_transport(settings))
    return Services(db=db, queue=queue,
                    workflows=load_workflows(settings.workflows_dir), storage=build_storage(settings))


def services() -> Services:
    app = current_app
    existing: Services | None = app.extensions.get("comfyq")
    if existing is not None:
        return existing
    with _lock:
        if "comfyq" not in app.extensions:
            app.extensions["comfyq"] = build_services(app.config["COMFYQ_SETTINGS"])
        return app.extensions["comfyq"]  # type: ignore[no-any-return]
