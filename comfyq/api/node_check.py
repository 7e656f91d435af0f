"""Checks graphs at submission against the node catalogue that workers publish from ComfyUI's /object_info,
so a job that ComfyUI would reject is refused with ComfyUI's own detail instead of failing on a worker.

The catalogue is a hint. With none published yet, nothing is checked. The latest one published (by any
worker) is used, which assumes the ComfyUI instances of a deployment run the same nodes and models; it is
kept in process for CACHE_SECONDS, after which one cheap query tells whether a newer one must be loaded.
A catalogue not refreshed for comfyq.object_info_store.STALE_AFTER is still used for the limits of the classes it
knows, but no longer to refuse a class it does not know (see comfyq.node_limits.validate_graph, `complete`)."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any

from flask import current_app

from comfyq.api.services import services
from comfyq.errors import ComfyqError
from comfyq.node_limits import input_limits, short_messages, validate_graph
from comfyq.object_info_store import Catalogue, ObjectInfoStore
from comfyq.workflows import Workflow

log = logging.getLogger(__name__)

CACHE_SECONDS = 5.0
_EXTENSION = "comfyq_object_info"
_create_lock = threading.Lock()


class CatalogueCache:
    """The latest published catalogue, reloaded only when another one (URL or content) became the latest."""

    def __init__(self, store: ObjectInfoStore, ttl: float = CACHE_SECONDS) -> None:
        self.store = store
        self.ttl = ttl
        self._lock = threading.Lock()
        self._checked_at: float | None = None
        self._current: Catalogue | None = None

    def get(self) -> Catalogue | None:
        with self._lock:
            now = time.monotonic()
            if self._checked_at is not None and now - self._checked_at < self.ttl:
                return self._current
            self._checked_at = now
            try:
                self._current = self._load()
            except ComfyqError as exc:  # keep what we had: the check is a hint, never a reason to fail
                log.warning("cannot read the object_info cache: %s", exc, extra={"action": "object_info_load"})
            return self._current

    def _load(self) -> Catalogue | None:
        version = self.store.latest_version()
        if version is None:
            return None
        current = self._current
        if current is not None and (current.comfyui_url, current.content_hash) == (
                version.comfyui_url, version.content_hash):
            return dataclasses.replace(current, fetched_at=version.fetched_at)
        catalogue = self.store.latest()
        if catalogue is None:
            return None
        log.info("loaded the object_info of %s (%d node classes)", catalogue.comfyui_url,
                 len(catalogue.object_info), extra={"action": "object_info_load"})
        return catalogue


def catalogue_cache() -> CatalogueCache:
    """This app's cache (per app, not per module: tests build several apps on different databases)."""
    app = current_app
    cache: CatalogueCache | None = app.extensions.get(_EXTENSION)
    if cache is None:
        with _create_lock:
            cache = app.extensions.get(_EXTENSION)
            if cache is None:
                cache = CatalogueCache(ObjectInfoStore(services().db))
                app.extensions[_EXTENSION] = cache
    return cache


def node_limit_problems(graph: dict[str, Any]) -> dict[str, Any] | None:
    """None when ComfyUI would accept graph (or no catalogue is known); otherwise the details for a 422:
    `{"error": ComfyUI's error or None, "node_errors": ComfyUI's node_errors, "nodes": {node_id: one line}}`.
    error is None when only some outputs are invalid (ComfyUI would run the others and skip these)."""
    catalogue = catalogue_cache().get()
    if catalogue is None:
        return None
    try:
        error, node_errors = validate_graph(graph, catalogue.object_info, complete=catalogue.fresh())
    except RecursionError:
        log.warning("graph too deep to check against the node limits; accepted unchecked",
                    extra={"action": "node_check"})
        return None
    except Exception:  # a bug in a hint must not block submissions
        log.exception("node limit check failed; the graph is accepted unchecked", extra={"action": "node_check"})
        return None
    if error is None and not node_errors:
        return None
    return {"error": error, "node_errors": node_errors, "nodes": short_messages(node_errors, error)}


def workflow_node_limits(workflow: Workflow) -> dict[str, list[dict[str, Any]]]:
    """For each param of workflow, what ComfyUI accepts at each input it fills (type, min, max, step, choices),
    from the catalogue; empty when none is known."""
    catalogue = catalogue_cache().get()
    if catalogue is None:
        return {}
    limits: dict[str, list[dict[str, Any]]] = {}
    for name, spec in workflow.params.items():
        found = []
        for target in spec.targets:
            class_type = workflow.graph[target.node]["class_type"]
            described = input_limits(catalogue.object_info, class_type, target.input)
            if described is not None:
                found.append({"node": target.node, **described})
        if found:
            limits[name] = found
    return limits
