"""Each tenant's callback signing secrets (Standard Webhooks `whsec_...`), so that what verifies one tenant's
callbacks cannot sign another's. A secret is made at random and shown once, listed by its prefix, and retired once
the tenant's receiver has moved to a newer one; while several are active, all of them sign. The one place the API,
the CLI and the workers reach the callback_secrets table through."""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass

from comfyq.db import Database, Row

SECRET_PREFIX = "whsec_"
PREFIX_LENGTH = len(SECRET_PREFIX) + 8  # names a secret in listings; 6 of its 32 bytes, not enough to sign
SECRET_BYTES = 32
SECRET_FORMAT = re.compile(r"whsec_[A-Za-z0-9+/]+={0,2}")  # the callback_secrets_format constraint
# Two cover a rotation (the old one until the receiver has the new one); a third leaves room for a mistake. Each
# active secret adds a signature to every callback.
MAX_ACTIVE = 3


@dataclass(frozen=True)
class NewSecret:
    secret: str  # shown once; the workers read it from the database when they sign
    row: Row


def generate() -> str:
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def check_format(secret: str) -> None:
    """Raise ValueError unless secret is "whsec_" + base64, what Standard Webhooks libraries take and what the
    callback_secrets_format constraint accepts."""
    body = secret.removeprefix(SECRET_PREFIX).rstrip("=")
    if not SECRET_FORMAT.fullmatch(secret) or len(body) % 4 == 1:  # one character left over is no base64
        raise ValueError("a callback secret is 'whsec_' followed by base64 (comfyq init makes one)")


def create(db: Database, tenant: str) -> NewSecret | None:
    """A new active secret for the tenant, or None when it already has MAX_ACTIVE (retire one first)."""
    secret = generate()
    row = db.fetch_one("callback_secret_insert", {"tenant": tenant, "secret": secret,
                                                  "secret_prefix": secret[:PREFIX_LENGTH], "max_active": MAX_ACTIVE})
    return None if row is None else NewSecret(secret=secret, row=row)


def list_secrets(db: Database, tenant: str) -> list[Row]:
    """The tenant's secrets, retired ones included, by id; never the secrets themselves."""
    return db.fetch_all("callback_secret_list", {"tenant": tenant})


def retire(db: Database, tenant: str, secret_id: int) -> Row | None:
    """Stop signing with this secret; None when the tenant has no active secret with this id."""
    return db.fetch_one("callback_secret_retire", {"tenant": tenant, "id": secret_id})


def seed_from_setting(db: Database, tenant: str, secret: str) -> Row | None:
    """Store COMFYQ_CALLBACK_SECRET as the tenant's secret when the tenant has never had one, so a deployment that
    signed with the setting keeps its receivers working after the upgrade; None when nothing was stored (the
    tenant has secrets, or had: a retired one is not brought back by the next start)."""
    check_format(secret)
    db.execute("tenant_ensure", {"name": tenant})
    return db.fetch_one("callback_secret_seed", {"tenant": tenant, "secret": secret,
                                                 "secret_prefix": secret[:PREFIX_LENGTH]})


def signing_secrets(db: Database, tenant: str) -> list[str]:
    """The tenant's active secrets, newest first: each one signs its callbacks."""
    return [str(row["secret"]) for row in db.fetch_all("callback_signing_secrets", {"tenant": tenant})]

