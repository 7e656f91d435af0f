"""API tokens: random secrets shown once, stored only as SHA-256 hashes, each bound to a tenant and a role."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from comfyq.db import Database, Row

ROLES = ("submitter", "admin")
PREFIX_LENGTH = 11  # "cq_" + 8 characters: enough to name a token in lists and revocations


@dataclass(frozen=True)
class NewToken:
    token: str  # the secret; shown once, never stored
    row: Row


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def generate() -> str:
    return "cq_" + secrets.token_urlsafe(32)


def create(db: Database, tenant: str, role: str, description: str = "") -> NewToken:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    token = generate()
    db.execute("tenant_ensure", {"name": tenant})
    row = db.fetch_one("token_insert", {"tenant": tenant, "role": role, "token_hash": hash_token(token),
                                        "token_prefix": token[:PREFIX_LENGTH], "description": description})
    assert row is not None
    return NewToken(token=token, row=row)


class TokenConflict(ValueError):
    """The secret is already stored for another tenant or role, or was revoked."""


def import_token(db: Database, token: str, tenant: str, role: str, description: str = "") -> tuple[Row, bool]:
    """Store a secret made elsewhere (comfyq init) with this tenant and role, once; returns (row, created).
    Idempotent, so the compose stack's one-shot setup can run at every start."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not token.startswith("cq_") or len(token) < 24:
        raise ValueError("not a comfyq token (cq_ followed by at least 21 random characters)")
    db.execute("tenant_ensure", {"name": tenant})
    row = db.fetch_one("token_import", {"tenant": tenant, "role": role, "token_hash": hash_token(token),
                                        "token_prefix": token[:PREFIX_LENGTH], "description": description})
    assert row is not None
    if (row["tenant"], row["role"]) != (tenant, role) or row["revoked_at"] is not None:
        raise TokenConflict(f"token {row['token_prefix']}... is stored for tenant {row['tenant']}, role "
                            f"{row['role']}{' (revoked)' if row['revoked_at'] else ''}")
    return row, bool(row["created"])


def list_tokens(db: Database, tenant: str | None = None) -> list[Row]:
    return db.fetch_all("token_list", {"tenant": tenant})


def revoke(db: Database, ref: str) -> Row | None:
    """Revoke by id or by the prefix shown in listings."""
    return db.fetch_one("token_revoke", {"ref": ref})


def lookup(db: Database, token: str) -> Row | None:
    """The active token row for a presented secret, or None. The hash comparison is constant-time."""
    digest = hash_token(token)
    row = db.fetch_one("token_lookup", {"token_hash": digest})
    if row is None or row["revoked_at"] is not None:
        return None
    if not hmac.compare_digest(str(row["token_hash"]), digest):
        return None
    return row


def public(row: Row) -> dict[str, Any]:
    return {key: (value.isoformat() if hasattr(value, "isoformat") else value) for key, value in row.items()
            if key != "token_hash"}
