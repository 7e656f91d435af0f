"""Who is asking, for the events process: the API's rules (comfyq.api.auth) on the same tokens and tenants. A
bearer token in the Authorization header, looked up by hash through comfyq.tokens and cached for
COMFYQ_TOKEN_CACHE_SECONDS, or COMFYQ_API_TOKEN (an operator of COMFYQ_API_TENANT). Every role reads its own
tenant's jobs only, as GET /jobs/{id} does.

Browsers cannot set headers on EventSource or WebSocket, and a bearer token in a URL ends up in logs, so a
caller trades its bearer token for a stream token (POST /events/token): signed with COMFYQ_EVENTS_STREAM_SECRET,
bound to the tenant, good for COMFYQ_EVENTS_STREAM_TOKEN_SECONDS and for one stream (its nonce is remembered
until it expires; with several events processes behind one name, give them the same secret and route a client
to one of them)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from comfyq import tokens
from comfyq.db import Database
from comfyq.settings import Settings


@dataclass(frozen=True)
class Caller:
    tenant: str
    role: str


class Unauthorized(Exception):
    """No valid credentials: 401."""


class TokenCache:
    """Bearer token -> Caller (or None for an unknown one), for token_cache_seconds, in the core's CallerCache."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._cache: tokens.CallerCache[Caller] = tokens.CallerCache()

    def cached(self, token: str) -> tuple[bool, Caller | None]:
        """(known, caller) without touching the database."""
        return self._cache.get(token)

    def resolve(self, token: str) -> Caller | None:
        """Blocking (a database read): run it off the event loop."""
        settings = self.settings
        if tokens.is_bootstrap(token, settings.api_token):
            caller: Caller | None = Caller(settings.api_tenant, "operator")
        else:
            row = tokens.lookup(self.db, token)
            caller = None if row is None else Caller(row["tenant"], row["role"])
        self._cache.put(token, caller, settings.token_cache_seconds)
        return caller


def bearer_token(header: str) -> str | None:
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class StreamTokens:
    """Short-lived signed tokens for browsers: `<payload>.<signature>`, the payload the tenant, role, expiry and
    a nonce. Each works for one stream within its lifetime; expired, forged or reused ones are refused."""

    def __init__(self, secret: str | None, lifetime: int) -> None:
        # Unset: a random secret, good for this process only (tokens die with it).
        self._key = (secret or secrets.token_urlsafe(32)).encode()
        self.lifetime = lifetime
        self._used: dict[str, float] = {}  # nonce -> expiry

    def _sign(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()

    def issue(self, caller: Caller, now: float | None = None) -> tuple[str, int]:
        """A token for this caller and its expiry (Unix seconds)."""
        expires = int((now or time.time()) + self.lifetime)
        body = json.dumps({"t": caller.tenant, "r": caller.role, "e": expires, "n": secrets.token_urlsafe(12)},
                          separators=(",", ":"))
        payload = base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")
        return f"{payload}.{self._sign(payload)}", expires

    def redeem(self, token: str, now: float | None = None) -> Caller:
        """The caller a token stands for; raises Unauthorized for a forged, expired or already used one."""
        now = now or time.time()
        payload, _, signature = token.partition(".")
        if not payload or not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            raise Unauthorized("the stream token is not valid")
        try:
            body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            tenant, role, expires, nonce = str(body["t"]), str(body["r"]), float(body["e"]), str(body["n"])
        except (ValueError, KeyError, TypeError) as exc:
            raise Unauthorized("the stream token is not valid") from exc
        if expires <= now:
            raise Unauthorized("the stream token has expired")
        self._used = {n: e for n, e in self._used.items() if e > now}
        if nonce in self._used:
            raise Unauthorized("the stream token was already used")
        self._used[nonce] = expires
        return Caller(tenant, role)
