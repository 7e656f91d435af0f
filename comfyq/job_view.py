"""The public JSON view of a job, shared by every process that shows jobs: GET /jobs/{id} of the API and the
events process (snapshots, waits, outputs of a success). Flask-free, so the events process can use it; the
caller says where output downloads live (base_url) because only it knows the request's host."""

from __future__ import annotations

import logging
from typing import Any

from comfyq.storage import STORAGE_ERRORS, Storage

log = logging.getLogger(__name__)

PUBLIC_FIELDS = ("id", "status", "workflow", "params", "priority", "attempts", "max_attempts", "progress",
                 "current_node", "timeout_seconds", "cancel_requested", "callback_url", "error")
TIME_FIELDS = ("created_at", "run_at", "started_at", "finished_at", "deadline")


def signed_url(storage: Storage, key: str, expires: int) -> str | None:
    """A download URL, or None when the backend has none or cannot sign right now (the job is still shown)."""
    try:
        return storage.presigned_url(key, expires)
    except STORAGE_ERRORS as exc:
        log.warning("cannot sign a URL for %s: %s", key, exc, extra={"action": "presign"})
        return None


def public_location(output: dict[str, Any]) -> str | None:
    """s3://bucket/key as stored; a file on the worker's disk is named by its key only (local:<key>)."""
    location = output.get("location")
    if isinstance(location, str) and "://" not in location:
        return f"local:{output.get('key')}"
    return location


def present_outputs(job_id: int, outputs: list[dict[str, Any]], storage: Storage, expires: int,
                    base_url: str) -> list[dict[str, Any]]:
    """Every stored output with a download URL: the backend's signed one, or the API's own output route."""
    return [{**output, "location": public_location(output),
             "url": signed_url(storage, output["key"], expires) or f"{base_url}/jobs/{job_id}/outputs/{index}"}
            for index, output in enumerate(outputs)]


def present_job(row: dict[str, Any], storage: Storage, expires: int, base_url: str) -> dict[str, Any]:
    """The same JSON as the API's GET /jobs/{id}."""
    out = {key: row.get(key) for key in PUBLIC_FIELDS}
    out["outputs"] = present_outputs(row["id"], list(row.get("outputs") or []), storage, expires, base_url)
    for key in TIME_FIELDS:
        value = row.get(key)
        out[key] = value.isoformat() if value is not None else None
    return out
