"""What every benchmark needs: a database of its own (a scratch database on DATABASE_URL's server, or the
embedded server), migrated, and removed afterwards."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from comfyq import embedded
from comfyq.db import Database, connect_once
from comfyq.migrate import migrate
from comfyq.settings import PROJECT_ROOT, get_settings


@contextlib.contextmanager
def scratch_database(work: Path) -> Iterator[tuple[str, Database]]:
    """Yields (url, Database) of a new migrated database; never touches an existing one."""
    server = get_settings().database_url
    started_embedded = server is None
    if server is None:
        server = embedded.start(work / "pg")
    name = f"comfyq_bench_{uuid.uuid4().hex[:8]}"
    admin = connect_once(server)
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(server)
    url = urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
    db = Database(url, PROJECT_ROOT / "sql", max_size=8)
    try:
        migrate(db, PROJECT_ROOT / "sql" / "migrations")
        yield url, db
    finally:
        db.close()
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
        if started_embedded:
            embedded.stop(work / "pg")
