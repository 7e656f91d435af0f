"""The console's session: a Flask session cookie (signed, HttpOnly, SameSite=Strict, Secure over https) that holds
the SHA-256 hash of the API token a person signed in with, never the token, plus a CSRF token. Each request
resolves the hash through comfyq.api.auth like a bearer token, so a revoked token ends its sessions too."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from flask import Flask, request, session
from flask.sessions import SecureCookieSessionInterface

from comfyq import tokens
from comfyq.api.auth import Caller, caller_for_hash
from comfyq.settings import Settings

DERIVE_LABEL = b"comfyq console session v1"
SESSION_SECONDS = 12 * 3600  # a sign-in lasts this long at most, then the token is asked for again
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"


def console_secret(settings: Settings) -> str | None:
    """COMFYQ_CONSOLE_SECRET, else a key derived from COMFYQ_EVENTS_STREAM_SECRET (an HMAC under a label of its
    own, so neither key tells the other). Never random: gunicorn builds the app in each worker after the fork
    (preload_app = False), and workers with keys of their own would refuse each other's cookies."""
    if settings.console_secret:
        return settings.console_secret
    if settings.events_stream_secret:
        return hmac.new(settings.events_stream_secret.encode(), DERIVE_LABEL, hashlib.sha256).hexdigest()
    return None


class ConsoleSessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie session, with Secure set whenever the browser came over https: directly, or
    through nginx (X-Forwarded-Proto). Trusting that header can only add the flag, never remove it."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def csrf_token() -> str:
    """The session's CSRF token, made on first use (the sign-in page opens a session for it)."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = session["csrf"] = secrets.token_urlsafe(24)
    return token


def csrf_ok() -> bool:
    """Whether a POST carries the session's CSRF token, in the form or (for fetch) in the X-CSRF-Token header."""
    expected = session.get("csrf")
    given = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    return isinstance(expected, str) and hmac.compare_digest(given.encode(), expected.encode())


def sign_in(token: str) -> Caller | None:
    """Check a pasted token as the API would; on success a fresh session (new CSRF token) holds its hash."""
    digest = tokens.hash_token(token.strip())
    caller = caller_for_hash(digest)
    if caller is None:
        return None
    session.clear()
    session.update(h=digest, at=int(time.time()), csrf=secrets.token_urlsafe(24))
    return caller


def signed_in() -> Caller | None:
    """The caller of this request's session, or None (no session, expired, or its token revoked)."""
    digest, at = session.get("h"), session.get("at")
    if not isinstance(digest, str) or not isinstance(at, int) or time.time() - at > SESSION_SECONDS:
        return None
    return caller_for_hash(digest)
