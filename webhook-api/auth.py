"""Bearer-token auth. For now one token from the environment (COMFYQ_API_TOKEN) for one tenant; compared in
constant time so response timing leaks nothing about the token."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from comfyq_api.api_errors import ApiError
from flask import current_app, g, request


@dataclass(frozen=True)
class Caller:
    tenant: str


def require_token() -> Caller:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    expected: str = current_app.config["COMFYQ_TOKEN"]
    if scheme.lower() != "bearer" or not token or not hmac.compare_digest(token.strip().encode(),
                                                                          expected.encode()):
        raise ApiError(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required",
                       headers={"WWW-Authenticate": 'Bearer realm="comfyq"'})
    caller = Caller(tenant=current_app.config["COMFYQ_TENANT"])
    g.caller = caller
    return caller
