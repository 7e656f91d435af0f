"""Stream tokens: short-lived signed tokens that let a browser open one job stream of the events process
(EventSource and WebSocket cannot send an Authorization header, and a bearer token in a URL ends up in logs).
In the core because two processes use the same format: the events process issues (POST /events/token) and
redeems them, and the API's web console issues them for a signed-in session. Both sign with
COMFYQ_EVENTS_STREAM_SECRET, so they must share it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class StreamCaller:
    tenant: str
    role: str


class InvalidStreamToken(Exception):
    """A forged, expired or already used stream token."""


class StreamTokens:
    """`<payload>.<signature>`, the payload the tenant, role, expiry and a nonce. Each works for one stream
    within its lifetime; expired, forged or reused ones are refused."""

    def __init__(self, secret: str | None, lifetime: int) -> None:
        # Unset: a random secret, good for this process only (tokens die with it).
        self._key = (secret or secrets.token_urlsafe(32)).encode()
        self.lifetime = lifetime
        self._used: dict[str, float] = {}  # nonce -> expiry

    def _sign(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()

    def issue(self, caller: StreamCaller, now: float | None = None) -> tuple[str, int]:
        """A token for this caller and its expiry (Unix seconds)."""
        expires = int((now or time.time()) + self.lifetime)
        body = json.dumps({"t": caller.tenant, "r": caller.role, "e": expires, "n": secrets.token_urlsafe(12)},
                          separators=(",", ":"))
        payload = base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")
        return f"{payload}.{self._sign(payload)}", expires

    def redeem(self, token: str, now: float | None = None) -> StreamCaller:
        """The caller a token stands for; raises InvalidStreamToken for a forged, expired or already used one."""
        now = now or time.time()
        payload, _, signature = token.partition(".")
        if not payload or not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            raise InvalidStreamToken("the stream token is not valid")
        try:
            body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            tenant, role, expires, nonce = str(body["t"]), str(body["r"]), float(body["e"]), str(body["n"])
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidStreamToken("the stream token is not valid") from exc
        if expires <= now:
            raise InvalidStreamToken("the stream token has expired")
        self._used = {n: e for n, e in self._used.items() if e > now}
        if nonce in self._used:
            raise InvalidStreamToken("the stream token was already used")
        self._used[nonce] = expires
        return StreamCaller(tenant, role)
