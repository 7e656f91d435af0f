"""The bearer token a request presents, compared in constant time with a secret from the settings. For the two
checks comfyq.api.auth (tokens stored in the database, bound to a tenant and a role) cannot make: the scrape token
of /metrics, which is no API token, and COMFYQ_API_TOKEN while the database is down."""

from __future__ import annotations

import hmac

from flask import request


def presented() -> str | None:
    """The token of the request's `Authorization: Bearer <token>` header, or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def matches(secret: str | None) -> bool:
    """True when the request presents exactly this secret; never for an unset one."""
    token = presented()
    if not secret or token is None:
        return False
    return hmac.compare_digest(token.encode(), secret.encode())
