"""A small client of the comfyq HTTP API, for the operator CLI and scripts: every error the API answers comes
back as ApiCallFailed with the API's own code and message."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote

import requests

from comfyq.errors import ComfyqError


class ApiCallFailed(ComfyqError):
    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}" if status else message)  # 0: no answer at all
        self.status = status
        self.code = code
        self.details = details


class ApiClient:
    def __init__(self, base_url: str, token: str | None, *, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.http = requests.Session()
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, self.base_url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise ApiCallFailed(0, "unreachable", f"cannot reach the API at {self.base_url}: "
                                f"{exc.__class__.__name__}") from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            error = (body or {}).get("error", {}) if isinstance(body, dict) else {}
            raise ApiCallFailed(response.status_code, error.get("code", "http_error"),
                                error.get("message", response.text[:200]), error.get("details"))
        return body

    def submit_batch(self, jobs: Sequence[dict[str, Any]], idempotency_key: str | None = None) -> list[dict[str, Any]]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = self._call("POST", "/jobs/batch", json={"jobs": list(jobs)}, headers=headers)
        return list(body["jobs"])

    def job(self, job_id: int) -> dict[str, Any]:
        return dict(self._call("GET", f"/jobs/{job_id}"))

    def jobs(self, *, status: str | None = None, workflow: str | None = None,
             limit: int = 50) -> Iterator[dict[str, Any]]:
        """Every job matching the filters, newest first, following the cursor."""
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        if workflow:
            params["workflow"] = workflow
        while True:
            page = self._call("GET", "/jobs", params=params)
            yield from page["jobs"]
            if not page.get("next_cursor"):
                return
            params["cursor"] = page["next_cursor"]

    def cancel(self, job_id: int) -> dict[str, Any]:
        return dict(self._call("POST", f"/jobs/{job_id}/cancel"))

    def retry(self, job_id: int) -> dict[str, Any]:
        return dict(self._call("POST", f"/jobs/{job_id}/retry"))

    def stats(self) -> dict[str, Any]:
        return dict(self._call("GET", "/stats"))

    # Admin routes (comfyq/api/admin_api.py) ------------------------------------------------------------------
    def workers(self, *, include_stopped: bool = False) -> list[dict[str, Any]]:
        return list(self._call("GET", "/admin/workers", params={"all": "true" if include_stopped else "false"})[
            "workers"])

    def forget_worker(self, worker_id: str) -> dict[str, Any]:
        """Delete a dead or stopped worker's row; the API answers 409 for one that may still be alive."""
        return dict(self._call("DELETE", f"/admin/workers/{quote(worker_id, safe='')}"))

    def tokens(self, tenant: str | None = None) -> list[dict[str, Any]]:
        return list(self._call("GET", "/admin/tokens", params={"tenant": tenant} if tenant else {})["tokens"])

    def create_token(self, tenant: str | None, role: str, description: str = "") -> dict[str, Any]:
        """The new token's row with its secret in `token` (the only time the API shows it)."""
        body: dict[str, Any] = {"role": role, "description": description}
        if tenant:
            body["tenant"] = tenant
        return dict(self._call("POST", "/admin/tokens", json=body))

    def revoke_token(self, ref: str) -> dict[str, Any]:
        return dict(self._call("DELETE", f"/admin/tokens/{quote(ref, safe='')}"))

    def tenants(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/admin/tenants")["tenants"])

    def set_tenant(self, name: str, settings: dict[str, Any]) -> dict[str, Any]:
        return dict(self._call("PUT", f"/admin/tenants/{quote(name, safe='')}", json=settings))

    def callback_secrets(self, tenant: str) -> list[dict[str, Any]]:
        return list(self._call("GET", f"/admin/tenants/{quote(tenant, safe='')}/callback-secrets")["callback_secrets"])

    def create_callback_secret(self, tenant: str) -> dict[str, Any]:
        """The new secret's row with the secret in `secret` (the only time the API shows it)."""
        return dict(self._call("POST", f"/admin/tenants/{quote(tenant, safe='')}/callback-secrets"))

    def retire_callback_secret(self, tenant: str, secret_id: int) -> dict[str, Any]:
        return dict(self._call("DELETE", f"/admin/tenants/{quote(tenant, safe='')}/callback-secrets/{secret_id}"))

    def retention(self, older_than_days: float, tenant: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"older_than_days": older_than_days}
        if tenant:
            body["tenant"] = tenant
        return dict(self._call("POST", "/admin/retention", json=body))
