"""Shared fixtures: a real PostgreSQL (TEST_DATABASE_URL / DATABASE_URL, else the embedded server), a
migrated template database built once per run, and a fresh copy of it per test."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from comfyq import embedded
from comfyq.db import Database, connect_once
from comfyq.jobs import JobQueue
from comfyq.migrate import migrate
from comfyq.settings import PROJECT_ROOT

SQL_DIR = PROJECT_ROOT / "sql"


def _with_database(url: str, name: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An admin URL of a real server; the embedded one is started (and stopped) only when none is given."""
    url = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    # Not under pytest's own temp folder: started as root, the server runs as its own user, which the package lets
    # through by opening the parent folders (o+rx); any pytest that starts meanwhile closes pytest-of-root (0700)
    # again, and the running server then loses its data folder.
    data_dir = Path(tempfile.mkdtemp(prefix="comfyq-test-pg-"))
    url = embedded.start(data_dir)
    try:
        yield url
    finally:
        embedded.stop(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(server_url: str) -> Iterator[str]:
    """A migrated database that every test copies (CREATE DATABASE ... TEMPLATE is much faster than
    migrating each time). Yields its name."""
    with scratch_database(server_url) as url:
        db = Database(url, SQL_DIR)
        migrate(db, SQL_DIR / "migrations")
        db.close()
        yield urlsplit(url).path.lstrip("/")


def _create_database(server_url: str, template: str | None = None) -> str:
    """A new database (a copy of template when given); its name."""
    name = f"comfyq_t_{uuid.uuid4().hex[:10]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    server = connect_once(server_url)
    try:
        with server.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"{clause}')
    finally:
        server.close()
    return name


def _drop_database(server_url: str, name: str) -> None:
    server = connect_once(server_url)
    try:
        with server.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        server.close()


@contextlib.contextmanager
def scratch_database(server_url: str, template: str | None = None) -> Iterator[str]:
    """A database of one test's own (a copy of template when given), dropped afterwards."""
    name = _create_database(server_url, template)
    try:
        yield _with_database(server_url, name)
    finally:
        _drop_database(server_url, name)


class TemplateCopies:
    """Copies of the migrated template, each made while the test before runs: CREATE DATABASE ... TEMPLATE takes the
    server 0.1 to 0.3 s (it writes the copy's 9 MB to the WAL), about as long as a short test itself, and several
    hundred tests take a copy. Each copy is still a test's own, made for it alone and dropped after it."""

    def __init__(self, server_url: str, template: str) -> None:
        self.server_url = server_url
        self.template = template
        self._maker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="template-copies")
        self._next: Future[str] | None = None

    def _make_next(self) -> None:
        self._next = self._maker.submit(_create_database, self.server_url, self.template)

    @contextlib.contextmanager
    def copy(self) -> Iterator[str]:
        """The copy made ahead (or one made now), while the next one is being made."""
        if self._next is None:
            self._make_next()
        assert self._next is not None
        made, self._next = self._next, None
        name = made.result()
        self._make_next()
        try:
            yield _with_database(self.server_url, name)
        finally:
            _drop_database(self.server_url, name)

    def close(self) -> None:
        """Drop the copy made for a test that never came."""
        spare, self._next = self._next, None
        self._maker.shutdown(wait=True)
        if spare is not None and spare.exception() is None:
            _drop_database(self.server_url, spare.result())


@pytest.fixture
def fresh_database(server_url: str) -> Iterator[str]:
    """An empty database (no migrations) for migration tests."""
    with scratch_database(server_url) as url:
        yield url


@pytest.fixture(scope="session")
def template_copies(server_url: str, template_db: str) -> Iterator[TemplateCopies]:
    copies = TemplateCopies(server_url, template_db)
    try:
        yield copies
    finally:
        copies.close()


@pytest.fixture
def db_url(template_copies: TemplateCopies) -> Iterator[str]:
    """A migrated database of this test's own."""
    with template_copies.copy() as url:
        yield url


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url, SQL_DIR, max_size=8)
    try:
        yield database
    finally:
        database.close()


@pytest.fixture
def queue(db: Database) -> JobQueue:
    return JobQueue(db, lease_seconds=30)


@pytest.fixture
def sql(db_url: str) -> Iterator[object]:
    """A raw cursor for assertions about the stored state (tests may read tables directly)."""
    conn = connect_once(db_url)
    cur = conn.cursor()
    try:
        yield cur
    finally:
        cur.close()
        conn.close()


def project_path(*parts: str) -> Path:
    return PROJECT_ROOT.joinpath(*parts)


FIGURES_KEY = pytest.StashKey[list[tuple[str, str]]]()


@pytest.fixture
def record_figure(request: pytest.FixtureRequest) -> Any:
    """Report a measured figure in the run's summary (figures are reported, never asserted on)."""
    figures = request.config.stash.setdefault(FIGURES_KEY, [])
    return lambda name, value: figures.append((name, value))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    figures = config.stash.get(FIGURES_KEY, [])
    if figures:
        terminalreporter.section("measured figures")
        for name, value in figures:
            terminalreporter.write_line(f"{name}: {value}")


from tests.e2e_support import stack  # noqa: E402,F401 - fixture shared by the multi-process tests
from tests.http_servers import image_host, receiver  # noqa: E402,F401 - fixtures shared by several modules
from tests.redis_support import backend, redis_backend, redis_conn, redis_url  # noqa: E402,F401 - transport tests
from tests.s3_server import s3_server, s3_storage  # noqa: E402,F401 - a real S3 API (moto) for storage tests
from tests.support.db_conns import admin, locker  # noqa: E402,F401 - fixtures of the lost-write tests
from tests.support.wheel_venv import installed, wheel  # noqa: E402,F401 - the wheel in a new virtualenv
