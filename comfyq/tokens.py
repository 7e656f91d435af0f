"""API tokens and tenants: random secrets shown once, stored only as SHA-256 hashes, each bound to a tenant and a
role; and the tenants' settings. The one place the API and the CLI reach these tables through."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, get_args

from comfyq.db import Database, Row

# In rank order: each role may do what the ones before it may. submitter: its tenant's jobs; admin: also its own
# tenant's tokens and retention; operator: the whole deployment (workers, tenants, every tenant's tokens).
Role = Literal["submitter", "admin", "operator"]
ROLES: tuple[str, ...] = get_args(Role)
PREFIX_LENGTH = 11  # "cq_" + 8 characters: enough to name a token in lists and revocations
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"  # the tenants_name_format constraint (migration 0003)
CALLER_CACHE_MAX = 10_000  # entries; past it the cache starts over, so made-up tokens cannot grow it
T = TypeVar("T")


def rank(role: str) -> int:
    return ROLES.index(role)


def manageable_roles(role: str) -> tuple[str, ...]:
    """The roles of the tokens a caller with this role may list, create and revoke: its own and those below,
    so a tenant's admin never sees, mints or revokes an operator token."""
    return ROLES[:rank(role) + 1]


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


def import_token(db: Database, token: str, tenant: str, role: str, description: str = "", *,
                 update_role: bool = False) -> tuple[Row, bool]:
    """Store a secret made elsewhere (comfyq init) with this tenant and role, once; returns (row, created).
    Idempotent, so the compose stack's one-shot setup can run at every start. A secret stored with another role
    is refused unless update_role: then an active token of the same tenant takes this role (an upgrade that
    changes what a deployment's own token is for)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not token.startswith("cq_") or len(token) < 24:
        raise ValueError("not a comfyq token (cq_ followed by at least 21 random characters)")
    db.execute("tenant_ensure", {"name": tenant})
    row = db.fetch_one("token_import", {"tenant": tenant, "role": role, "token_hash": hash_token(token),
                                        "token_prefix": token[:PREFIX_LENGTH], "description": description})
    assert row is not None
    if update_role and row["tenant"] == tenant and row["role"] != role and row["revoked_at"] is None:
        row = db.fetch_one("token_set_role", {"id": row["id"], "role": role}) or row
    if (row["tenant"], row["role"]) != (tenant, role) or row["revoked_at"] is not None:
        raise TokenConflict(f"token {row['token_prefix']}... is stored for tenant {row['tenant']}, role "
                            f"{row['role']}{' (revoked)' if row['revoked_at'] else ''}")
    return row, bool(row["created"])


def list_tokens(db: Database, tenant: str | None = None, roles: tuple[str, ...] = ROLES) -> list[Row]:
    """Tokens of one tenant (None: all) with one of these roles, never their hashes."""
    return db.fetch_all("token_list", {"tenant": tenant, "roles": list(roles)})


def revoke(db: Database, ref: str, tenant: str | None = None, roles: tuple[str, ...] = ROLES) -> Row | None:
    """Revoke by id or by the prefix shown in listings, within the same scope as list_tokens; None when no
    active token there matches."""
    return db.fetch_one("token_revoke", {"ref": ref, "tenant": tenant, "roles": list(roles)})


def touch(db: Database, token_id: int) -> None:
    """Record a token's use (at most once a minute), for `last_used_at` in listings."""
    db.execute("token_touch", {"id": token_id})


def tenant_limits(db: Database, name: str) -> Row | None:
    """A tenant's own limits and raw-graph permission, or None when it has no row."""
    return db.fetch_one("tenant_limits", {"name": name})


def list_tenants(db: Database, name: str | None = None) -> list[Row]:
    """Every tenant (or the one named) with its settings and its number of active tokens."""
    return db.fetch_all("tenant_list", {"name": name})


def set_tenant(db: Database, name: str, *, allow_raw_graphs: bool = False, max_queued_jobs: int | None = None,
               rate_per_second: float | None = None, rate_burst: int | None = None) -> Row:
    """Create a tenant or replace all its settings (unset limits fall back to the deployment's defaults)."""
    row = db.fetch_one("tenant_upsert", {"name": name, "allow_raw_graphs": allow_raw_graphs,
                                         "max_queued_jobs": max_queued_jobs, "rate_per_second": rate_per_second,
                                         "rate_burst": rate_burst})
    assert row is not None
    return row


def lookup(db: Database, token: str) -> Row | None:
    """The active token row for a presented secret, or None. The hash comparison is constant-time."""
    return lookup_hash(db, hash_token(token))


def lookup_hash(db: Database, digest: str) -> Row | None:
    """lookup() by the token's hash, for the web console's session, which keeps the hash and never the token."""
    row = db.fetch_one("token_lookup", {"token_hash": digest})
    if row is None or row["revoked_at"] is not None:
        return None
    if not hmac.compare_digest(str(row["token_hash"]), digest):
        return None
    return row


def public(row: Row) -> dict[str, Any]:
    """A row as shown outside: never a token's hash, times in ISO 8601 (Flask would write the HTTP date format)."""
    return {key: (value.isoformat() if hasattr(value, "isoformat") else value) for key, value in row.items()
            if key != "token_hash"}


def is_bootstrap(token: str, bootstrap: str | None) -> bool:
    """Whether token is the deployment's COMFYQ_API_TOKEN (compared in constant time)."""
    return is_bootstrap_hash(hash_token(token), bootstrap)


def is_bootstrap_hash(digest: str, bootstrap: str | None) -> bool:
    """is_bootstrap() for a token known by its hash (the web console's session)."""
    return bool(bootstrap) and hmac.compare_digest(digest, hash_token(bootstrap or ""))


class CallerCache(Generic[T]):
    """Bearer token -> the caller it resolved to (None: an unknown token), for a number of seconds, keyed by the
    token's hash: a revoked token stops working within that time. One per process, shared by the API's threads
    and the events process's loop (hence the lock)."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, T | None]] = {}
        self._lock = threading.Lock()

    def get(self, token: str) -> tuple[bool, T | None]:
        """(known, caller): known is False when the token was never resolved or its entry expired."""
        return self.get_by_hash(hash_token(token))

    def get_by_hash(self, digest: str) -> tuple[bool, T | None]:
        """get() for a token known by its hash only (the web console's session holds no token)."""
        with self._lock:
            hit = self._entries.get(digest)
        if hit is not None and hit[0] > time.monotonic():
            return True, hit[1]
        return False, None

    def put(self, token: str, caller: T | None, seconds: float) -> None:
        self.put_by_hash(hash_token(token), caller, seconds)

    def put_by_hash(self, digest: str, caller: T | None, seconds: float) -> None:
        if seconds <= 0:
            return
        with self._lock:
            if len(self._entries) > CALLER_CACHE_MAX:
                self._entries.clear()
            self._entries[digest] = (time.monotonic() + seconds, caller)
