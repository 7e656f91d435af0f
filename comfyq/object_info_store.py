"""The node catalogues of the ComfyUI instances (GET /object_info), one row per instance in comfyui_object_info:
workers publish them, the API reads the latest to refuse at submission the graphs ComfyUI would reject
(comfyq/api/node_check.py, comfyq.node_limits)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from comfyq.db import Database

STALE_AFTER = timedelta(hours=24)


@dataclass(frozen=True)
class CatalogueVersion:
    """Which catalogue is the latest, without the catalogue itself: cheap to poll."""

    comfyui_url: str
    content_hash: str
    fetched_at: datetime


@dataclass(frozen=True)
class Catalogue:
    object_info: dict[str, Any]
    comfyui_url: str
    content_hash: str
    fetched_at: datetime

    def fresh(self, now: datetime | None = None) -> bool:
        """Recent enough to be taken as the complete list of ComfyUI's node classes."""
        return (now or datetime.now(UTC)) - self.fetched_at <= STALE_AFTER


class ObjectInfoStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def publish(self, comfyui_url: str, object_info: Mapping[str, Any], worker_id: str) -> None:
        """Store object_info as the catalogue of comfyui_url. Its hash is of the canonical JSON, so an unchanged
        catalogue is recognised (and not rewritten) whatever order ComfyUI listed it in."""
        text = json.dumps(object_info, sort_keys=True, separators=(",", ":"))
        self.db.execute("object_info_upsert", {
            "comfyui_url": comfyui_url, "object_info": text, "node_count": len(object_info),
            "content_hash": hashlib.sha256(text.encode("utf-8")).hexdigest(), "worker_id": worker_id})

    def latest_version(self) -> CatalogueVersion | None:
        row = self.db.fetch_one("object_info_latest_version")
        if row is None:
            return None
        return CatalogueVersion(row["comfyui_url"], row["content_hash"], row["fetched_at"])

    def latest(self) -> Catalogue | None:
        """The most recently published catalogue; None when there is none, or its value is not a JSON object."""
        row = self.db.fetch_one("object_info_latest")
        if row is None or not isinstance(row["object_info"], dict):
            return None
        return Catalogue(row["object_info"], row["comfyui_url"], row["content_hash"], row["fetched_at"])
