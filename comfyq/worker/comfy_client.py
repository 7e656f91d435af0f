"""ComfyUI over HTTP, as observed in PROTOCOL.md: client-chosen prompt ids, /history and /queue for where a
prompt stands, /view for results. Maps every failure to the project's errors: ComfyUnavailable (an outage,
never the job's fault) or a JobFailure (the graph was rejected or failed). The WebSocket is comfy_socket.py."""

from __future__ import annotations

import json
import logging
import urllib.parse
from dataclasses import dataclass
from typing import Any

import requests

from comfyq.errors import (
    ComfyUnavailable,
    ExecutionFailed,
    PromptRejected,
    TransientFailure,
)

log = logging.getLogger(__name__)

MAX_STORED_INPUT_CHARS = 2000
OOM_MARKERS = ("OutOfMemory", "out of memory", "CUDA out of memory")


class OutOfMemory(TransientFailure):
    """ComfyUI ran out of (V)RAM; freeing memory and retrying may succeed."""

    error_type = "out_of_memory"


class ComfyServerError(ComfyUnavailable):
    """ComfyUI answered 5xx: usually an outage (starting up, overloaded), but a graph that makes POST /prompt
    answer 500 every time is the job's fault; the pipeline tells the two apart by counting."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class RunResult:
    """How one prompt ended, read from its /history entry."""

    prompt_id: str
    outcome: str  # success | error | interrupted
    error: dict[str, Any] | None = None


@dataclass(frozen=True)
class OutputFile:
    node_id: str
    filename: str
    subfolder: str
    kind: str


def truncate(value: Any, limit: int = MAX_STORED_INPUT_CHARS) -> Any:
    """current_inputs holds tensor reprs that can be megabytes; keep a bounded preview."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more characters]"


def execution_error_from(data: dict[str, Any]) -> TransientFailure | ExecutionFailed:
    """Classify an execution_error event: out-of-memory is transient, anything else is the job's fault."""
    exception_type = str(data.get("exception_type", ""))
    message = str(data.get("exception_message", "")).strip() or "node raised during execution"
    details = {
        "node_id": data.get("node_id"), "node_type": data.get("node_type"),
        "exception_type": exception_type, "exception_message": truncate(message),
        "current_inputs": truncate(data.get("current_inputs", {})),
        "traceback": truncate("".join(data.get("traceback") or [])),
    }
    node = str(data.get("node_id")) if data.get("node_id") is not None else None
    if any(marker in exception_type or marker in message for marker in OOM_MARKERS):
        return OutOfMemory(f"out of memory in node {node}: {message[:300]}", details=details, node=node)
    return ExecutionFailed(f"{data.get('node_type')} (node {node}) failed: {exception_type}: {message[:300]}",
                           details=details, node=node)


class ComfyClient:
    """One ComfyUI instance. Not thread-safe: one per worker thread."""

    def __init__(self, base_url: str, client_id: str, *, connect_timeout: float = 5.0,
                 request_timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.http = requests.Session()

    # HTTP -------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            response = self.http.request(method, self.base_url + path,
                                         timeout=(self.connect_timeout, self.request_timeout), **kwargs)
        except requests.RequestException as exc:
            raise ComfyUnavailable(f"ComfyUI at {self.base_url} did not answer {method} {path}: "
                                   f"{exc.__class__.__name__}") from exc
        if response.status_code >= 500:
            raise ComfyServerError(f"ComfyUI answered {response.status_code} to {method} {path}: "
                                   f"{response.text[:300]}", response.status_code)
        return response

    def submit(self, graph: dict[str, Any], prompt_id: str) -> None:
        """POST /prompt. 400 and partial acceptance are permanent: ComfyUI would reject it every time."""
        body = {"prompt": graph, "client_id": self.client_id, "prompt_id": prompt_id}
        response = self._request("POST", "/prompt", json=body)
        try:
            payload = response.json()
        except ValueError:
            payload = {}
        if response.status_code == 400:
            error = payload.get("error") or {}
            message = error.get("message") or "ComfyUI rejected the prompt"
            if error.get("details"):
                message = f"{message}: {error['details']}"
            raise PromptRejected(message, details={"error": error, "node_errors": payload.get("node_errors", {})})
        if response.status_code != 200:
            raise ComfyUnavailable(f"ComfyUI answered {response.status_code} to POST /prompt")
        node_errors = payload.get("node_errors") or {}
        if node_errors:
            # Partially valid graph: ComfyUI runs the valid outputs and silently skips the rest.
            self.interrupt(prompt_id)
            self.delete_queued([prompt_id])
            raise PromptRejected("some outputs of the graph failed validation",
                                 details={"node_errors": node_errors})

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry, or None while ComfyUI does not have it (unknown, pending or running)."""
        response = self._request("GET", f"/history/{urllib.parse.quote(prompt_id)}")
        payload = response.json() if response.status_code == 200 else {}
        entry = payload.get(prompt_id) if isinstance(payload, dict) else None
        return entry if isinstance(entry, dict) else None

    def queue_state(self) -> tuple[set[str], set[str]]:
        """(running, pending) prompt ids from GET /queue."""
        payload = self._request("GET", "/queue").json()

        def ids(key: str) -> set[str]:
            return {str(item[1]) for item in payload.get(key, []) if isinstance(item, list) and len(item) > 1}

        return ids("queue_running"), ids("queue_pending")

    def view(self, output: OutputFile) -> tuple[bytes, str]:
        params = {"filename": output.filename, "subfolder": output.subfolder, "type": output.kind}
        response = self._request("GET", "/view", params=params)
        if response.status_code == 404:
            raise ComfyUnavailable(f"ComfyUI has no file {output.subfolder}/{output.filename}")
        if response.status_code != 200:
            raise ComfyUnavailable(f"ComfyUI answered {response.status_code} to /view")
        return response.content, response.headers.get("Content-Type", "application/octet-stream")

    def interrupt(self, prompt_id: str) -> None:
        """Interrupts prompt_id only if it is the one running (ComfyUI ignores other ids)."""
        try:
            self._request("POST", "/interrupt", json={"prompt_id": prompt_id})
        except ComfyUnavailable:
            log.warning("could not interrupt prompt %s", prompt_id, extra={"action": "interrupt"})

    def delete_queued(self, prompt_ids: list[str]) -> None:
        try:
            self._request("POST", "/queue", json={"delete": prompt_ids})
        except ComfyUnavailable:
            log.warning("could not remove prompts %s from ComfyUI's queue", prompt_ids,
                        extra={"action": "queue_delete"})

    def upload_image(self, name: str, data: bytes, content_type: str) -> str:
        """POST /upload/image; returns the name ComfyUI stored it under (it renames on a clash, so the
        returned name is the one to use in LoadImage)."""
        files = {"image": (name, data, content_type)}
        response = self._request("POST", "/upload/image", files=files, data={"type": "input", "overwrite": "false"})
        if response.status_code != 200:
            raise ComfyUnavailable(f"ComfyUI answered {response.status_code} to /upload/image: {response.text[:200]}")
        payload = response.json()
        subfolder = payload.get("subfolder") or ""
        return f"{subfolder}/{payload['name']}" if subfolder else str(payload["name"])

    def free_memory(self) -> None:
        """Ask ComfyUI to unload models and free memory (after an out-of-memory error)."""
        try:
            self._request("POST", "/free", json={"unload_models": True, "free_memory": True})
        except ComfyUnavailable:
            log.warning("could not ask ComfyUI to free memory", extra={"action": "free"})

    def system_stats(self) -> dict[str, Any]:
        response = self._request("GET", "/system_stats")
        if response.status_code != 200:
            raise ComfyUnavailable(f"ComfyUI answered {response.status_code} to /system_stats")
        result: dict[str, Any] = response.json()
        return result

    def object_info(self) -> dict[str, Any]:
        """GET /object_info: every node class with its inputs, limits and choices (~0.5 MB on a stock install)."""
        response = self._request("GET", "/object_info")
        if response.status_code != 200:
            raise ComfyUnavailable(f"ComfyUI answered {response.status_code} to /object_info")
        try:
            result = response.json()
        except ValueError as exc:
            raise ComfyUnavailable("ComfyUI answered /object_info with a body that is not JSON") from exc
        if not isinstance(result, dict):
            raise ComfyUnavailable("ComfyUI answered /object_info with JSON that is not an object")
        return result


def result_from_history(prompt_id: str, entry: dict[str, Any]) -> RunResult:
    """Interrupted and failed runs both say status_str 'error': the last message's type tells them apart."""
    status = entry.get("status") or {}
    messages = status.get("messages") or []
    if status.get("status_str") == "success":
        return RunResult(prompt_id=prompt_id, outcome="success")
    last_type, last_data = (messages[-1][0], messages[-1][1]) if messages else ("", {})
    if last_type == "execution_interrupted":
        return RunResult(prompt_id=prompt_id, outcome="interrupted")
    return RunResult(prompt_id=prompt_id, outcome="error", error=last_data if isinstance(last_data, dict) else {})


def output_files(entry: dict[str, Any]) -> list[OutputFile]:
    """Saved files listed in a history entry (type 'output'; temp previews are not results)."""
    files: list[OutputFile] = []
    for node_id, node_output in sorted((entry.get("outputs") or {}).items()):
        for kind_key in ("images", "gifs", "videos", "audio"):
            for item in node_output.get(kind_key, []) or []:
                if isinstance(item, dict) and item.get("type", "output") == "output" and item.get("filename"):
                    files.append(OutputFile(str(node_id), item["filename"], item.get("subfolder", ""), "output"))
    return files
