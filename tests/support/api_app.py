"""The API as a Flask app in the test process, against a test's own database, with its pool closed afterwards;
and the Authorization header of a new token."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from flask import Flask

from comfyq import tokens
from comfyq.api.app import create_app
from comfyq.db import Database
from comfyq.settings import Settings


@contextlib.contextmanager
def api_app(**settings: Any) -> Iterator[Flask]:
    """create_app with these settings and no token cache (a revoked token is refused at once)."""
    app = create_app(Settings(**{"token_cache_seconds": 0, **settings}))
    try:
        yield app
    finally:
        services = app.extensions.get("comfyq")
        if services is not None:
            services.db.close()


def bearer(db: Database, tenant: str, role: str) -> dict[str, str]:
    """The Authorization header of a new token of this tenant and role."""
    return {"Authorization": f"Bearer {tokens.create(db, tenant, role).token}"}
