"""Who is asking, for the events process: the API's rules (comfyq.api.auth) on the same tokens and tenants. A
bearer token in the Authorization header, looked up by hash through comfyq.tokens and cached for
COMFYQ_TOKEN_CACHE_SECONDS, or COMFYQ_API_TOKEN (an operator of COMFYQ_API_TENANT). Every role reads its own
tenant's jobs only, as GET /jobs/{id} does.

Browsers cannot set headers on EventSource or WebSocket, and a bearer token in a URL ends up in logs, so a
caller trades its bearer token for a stream token (POST /events/token): signed with COMFYQ_EVENTS_STREAM_SECRET,
bound to the tenant, good for COMFYQ_EVENTS_STREAM_TOKEN_SECONDS and for one stream (its nonce is remembered
until it expires; with several events processes behind one name, give them the same secret and route a client
to one of them). The tokens' format is in the core (comfyq.stream_tokens): the API's web console issues
them too."""

from __future__ import annotations

from comfyq import tokens
from comfyq.db import Database
from comfyq.settings import Settings
from comfyq.stream_tokens import StreamCaller as Caller


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
