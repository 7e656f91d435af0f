"""Publishes the node catalogue of this worker's ComfyUI (GET /object_info) to the database, where the API
reads it to refuse, at submission, graphs that ComfyUI would reject (comfyq.node_limits). The catalogue is a
hint for the API, never needed to run jobs: every failure here is logged and swallowed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from comfyq.db import Database
from comfyq.object_info_store import ObjectInfoStore
from comfyq.settings import Settings
from comfyq.worker.comfy_client import ComfyClient

log = logging.getLogger(__name__)

REFRESH_SECONDS = 300.0  # new checkpoints or custom nodes show up in the catalogue within this long
RETRY_FIRST_SECONDS = 5.0
RETRY_MAX_SECONDS = 60.0


def catalogue_problem(object_info: Any) -> str | None:
    """Why a /object_info body is not worth publishing (the API would refuse every class it lacks), or None."""
    if not isinstance(object_info, Mapping) or not object_info:
        return "it lists no node classes"
    bad = [name for name, info in object_info.items() if not isinstance(info, Mapping) or "input" not in info]
    if bad:
        return f"{len(bad)} entries are not node descriptions (e.g. {bad[0]!r})"
    return None


def publish_object_info(db: Database, comfy: ComfyClient, comfyui_url: str, worker_id: str) -> bool:
    """GET /object_info from comfy and upsert it as the catalogue of comfyui_url. Never raises: returns whether
    it was published, and logs why not."""
    try:
        object_info = comfy.object_info()
        problem = catalogue_problem(object_info)
        if problem is not None:
            log.warning("not publishing the object_info of %s: %s", comfyui_url, problem,
                        extra={"action": "object_info_publish"})
            return False
        ObjectInfoStore(db).publish(comfyui_url, object_info, worker_id)
    except Exception as exc:  # a hint for the API: nothing here may stop the worker
        log.warning("could not publish the object_info of %s: %s", comfyui_url, exc,
                    extra={"action": "object_info_publish"})
        return False
    log.debug("published the object_info of %s (%d node classes)", comfyui_url, len(object_info),
              extra={"action": "object_info_publish"})
    return True


class ObjectInfoPublisher:
    """A daemon thread that publishes at start, retries (5 s doubling to 60 s) until the first publication
    succeeds, since ComfyUI often starts after the worker, then republishes every refresh_seconds so new
    checkpoints and custom nodes reach the API. Owns its ComfyClient (clients are not shared across threads)."""

    def __init__(self, db: Database, comfy: ComfyClient, comfyui_url: str, worker_id: str, *,
                 refresh_seconds: float = REFRESH_SECONDS, retry_seconds: float = RETRY_FIRST_SECONDS,
                 retry_max_seconds: float = RETRY_MAX_SECONDS) -> None:
        self.db = db
        self.comfy = comfy
        self.comfyui_url = comfyui_url
        self.worker_id = worker_id
        self.refresh_seconds = refresh_seconds
        self.retry_seconds = retry_seconds
        self.retry_max_seconds = retry_max_seconds
        self.published = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="object-info-publisher", daemon=True)

    @classmethod
    def from_settings(cls, settings: Settings, db: Database, worker_id: str) -> ObjectInfoPublisher:
        comfy = ComfyClient(settings.comfyui_url, client_id=f"comfyq-{worker_id}-object-info",
                            connect_timeout=settings.comfyui_connect_timeout,
                            request_timeout=settings.comfyui_request_timeout)
        return cls(db, comfy, settings.comfyui_url, worker_id)

    def start(self) -> ObjectInfoPublisher:
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        delay = self.retry_seconds
        while not self._stop.is_set():
            if publish_object_info(self.db, self.comfy, self.comfyui_url, self.worker_id):
                if not self.published:
                    log.info("published the object_info of %s; refreshing it every %.0f s", self.comfyui_url,
                             self.refresh_seconds, extra={"action": "object_info_publish"})
                self.published += 1
                delay = self.retry_seconds
                wait = self.refresh_seconds
            else:
                wait = delay
                delay = min(delay * 2, self.retry_max_seconds)
            self._stop.wait(wait)
