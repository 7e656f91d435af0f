"""Forward-only migration runner: applies sql/migrations/NNNN_*.sql in order, records each with its checksum,
refuses a file edited after it was applied, and holds an advisory lock so concurrent runners are safe."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from comfyq.db import Database, Session
from comfyq.errors import DatabaseError, MigrationError

log = logging.getLogger(__name__)

_FILE_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    version: str
    path: Path
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def discover(migrations_dir: Path) -> list[Migration]:
    """The migration files in version order; a badly named or duplicated version is refused."""
    migrations: list[Migration] = []
    seen: set[str] = set()
    for path in sorted(migrations_dir.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_description.sql")
        number = match.group(1)
        if number in seen:
            raise MigrationError(f"{path.name}: version {number} appears twice")
        seen.add(number)
        migrations.append(Migration(path.stem, path, path.read_text(encoding="utf-8")))
    return migrations


def pending(db: Session, migrations: list[Migration]) -> list[Migration]:
    """Checks applied files against their recorded checksums and returns those not yet applied."""
    applied = {row["version"]: row["checksum"] for row in db.fetch_all("migrations_applied")}
    known = {m.version for m in migrations}
    missing = sorted(set(applied) - known)
    if missing:
        raise MigrationError(f"applied migrations missing from disk: {', '.join(missing)}")
    for migration in migrations:
        recorded = applied.get(migration.version)
        if recorded is not None and recorded != migration.checksum:
            raise MigrationError(
                f"{migration.path.name} was edited after it was applied (checksum {recorded[:12]} recorded, "
                f"{migration.checksum[:12]} on disk); add a new migration instead")
    return [m for m in migrations if m.version not in applied]


def migrate(db: Database, migrations_dir: Path) -> list[str]:
    """Apply every pending migration, each in one transaction with its record, under an advisory lock. Without
    the database's io_timeout: DDL on a big table, or waiting for another runner's lock, is rightly silent."""
    migrations = discover(migrations_dir)
    with db.session(wait_forever=True) as session:
        session.execute("migrations_lock")
        try:
            session.execute("migrations_create_table")
            applied_now: list[str] = []
            for migration in pending(session, migrations):
                log.info("applying migration %s", migration.version, extra={"action": "migrate"})
                try:
                    with session.transaction():
                        session.execute_file(migration.sql)
                        session.execute("migrations_record",
                                        {"version": migration.version, "checksum": migration.checksum})
                except DatabaseError as exc:
                    raise MigrationError(f"{migration.path.name} failed: {exc}") from exc
                applied_now.append(migration.version)
            return applied_now
        finally:
            session.execute("migrations_unlock")
