"""Retention removes every object of a job, fenced attempts included, and nothing of another installation
sharing the folder or bucket; against the real database, a real S3 API (moto) and a real folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from comfyq.admin import apply_retention
from comfyq.db import Database
from comfyq.errors import StorageUnavailable
from comfyq.jobs import JobQueue, NewJob
from comfyq.migrate import migrate
from comfyq.storage import LocalStorage, S3Storage, Storage, object_key, storage_namespace
from tests.conftest import SQL_DIR, scratch_database
from tests.e2e_support import TINY_GRAPH
from tests.s3_server import S3Server
from tests.tmpfs import SmallDisk, small_disk  # noqa: F401 - fixture

THIRTY_DAYS = 30 * 86400


@pytest.fixture
def other_db(server_url: str) -> Iterator[Database]:
    """A second installation: a database of its own, migrated from scratch (so with an id of its own)."""
    with scratch_database(server_url) as url:
        database = Database(url, SQL_DIR, max_size=2)
        try:
            migrate(database, SQL_DIR / "migrations")
            yield database
        finally:
            database.close()


@pytest.fixture(params=["local", "s3"])
def shared_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """One folder or one bucket that both installations write to."""
    if request.param == "local":
        return LocalStorage(tmp_path / "shared")
    server: S3Server = request.getfixturevalue("s3_server")
    return server.storage()


def stored_keys(storage: Storage) -> set[str]:
    if isinstance(storage, LocalStorage):
        return {str(p.relative_to(storage.root)) for p in storage.root.rglob("*") if p.is_file()}
    assert isinstance(storage, S3Storage)
    return {str(o.object_name) for o in storage.client.list_objects(storage.bucket, recursive=True)}


def age(db: Database, job_id: int) -> None:
    """Make a finished job old enough for retention (tests may write tables directly)."""
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute("UPDATE job_queue SET finished_at = now() - interval '40 days' WHERE id = %s", (job_id,))


def job_with_a_fenced_attempt(db: Database, storage: Storage) -> tuple[int, str, str]:
    """Attempt 1 stores an output, loses its lease and is fenced; attempt 2 stores and completes. Returns the
    job id and the keys of both attempts (only the second is in the row)."""
    queue = JobQueue(db, lease_seconds=30)
    namespace = storage_namespace(db)
    job_id = int(queue.enqueue(NewJob(graph=TINY_GRAPH))["id"])
    first = queue.claim("w1")
    assert first is not None and first.attempt == 1
    late = storage.put(object_key(namespace, job_id, 1, "out.png"), b"late", "image/png")
    with db.connection() as conn, conn.cursor() as cur:  # the worker of attempt 1 stops renewing
        cur.execute("UPDATE job_queue SET lease_expires_at = now() - interval '1 second' WHERE id = %s", (job_id,))
    assert [row["status"] for row in queue.rescue_expired()] == ["queued"]
    second = queue.claim("w2")
    assert second is not None and second.id == job_id and second.attempt == 2
    kept = storage.put(object_key(namespace, job_id, 2, "out.png"), b"kept", "image/png")
    assert queue.complete(second.lease, [kept.to_record()])
    assert not queue.complete(first.lease, [late.to_record()])  # fenced: its result is discarded
    row = queue.get(job_id, "default")
    assert row is not None and [o["key"] for o in row["outputs"]] == [kept.key]
    return job_id, late.key, kept.key


def test_retention_removes_fenced_attempts_and_spares_another_installation(
        db: Database, other_db: Database, shared_storage: Storage) -> None:
    mine, theirs = storage_namespace(db), storage_namespace(other_db)
    assert mine != theirs and len(mine) == 32
    job_id, late_key, kept_key = job_with_a_fenced_attempt(db, shared_storage)
    other_job, other_late, other_kept = job_with_a_fenced_attempt(other_db, shared_storage)
    assert other_job == job_id  # both installations number their jobs from 1: same job id, other keys
    assert {late_key, kept_key}.isdisjoint({other_late, other_kept})
    age(db, job_id)
    age(other_db, other_job)

    removed = apply_retention(db, shared_storage, THIRTY_DAYS, tenant=None)

    assert removed["jobs_deleted"] == 1 and removed["objects_deleted"] == 2
    assert stored_keys(shared_storage) == {other_late, other_kept}
    assert JobQueue(db).get(job_id, "default") is None
    assert JobQueue(other_db).get(other_job, "default") is not None


def test_retention_deletes_the_listed_keys_of_rows_stored_before_installation_ids(
        db: Database, shared_storage: Storage) -> None:
    """Rows written before migration 0010 list <job>/<attempt>/<file> keys: those go, one by one; other
    objects under a bare <job>/ prefix may be another installation's and stay."""
    queue = JobQueue(db)
    job_id = int(queue.enqueue(NewJob(graph=TINY_GRAPH))["id"])
    claimed = queue.claim("w")
    assert claimed is not None
    old = shared_storage.put(f"{job_id}/1/old.png", b"old", "image/png")
    neighbour = shared_storage.put(f"{job_id}/2/theirs.png", b"theirs", "image/png")
    assert queue.complete(claimed.lease, [old.to_record()])
    age(db, job_id)

    removed = apply_retention(db, shared_storage, THIRTY_DAYS, tenant=None)

    assert removed["jobs_deleted"] == 1 and removed["objects_deleted"] == 1
    assert stored_keys(shared_storage) == {neighbour.key}


def test_a_read_only_disk_keeps_the_rows_and_a_retry_removes_the_rest(
        db: Database, small_disk: SmallDisk, sql: Any) -> None:  # noqa: F811
    """Objects go first: storage failing (a real EROFS) leaves the rows, and the retry once it is writable
    removes objects and rows."""
    storage = LocalStorage(small_disk.path)
    job_id, late_key, kept_key = job_with_a_fenced_attempt(db, storage)
    age(db, job_id)
    small_disk.read_only()
    with pytest.raises(StorageUnavailable, match="Read-only file system"):
        apply_retention(db, storage, THIRTY_DAYS, tenant=None)
    sql.execute("SELECT count(*) FROM job_queue WHERE id = %s", (job_id,))
    assert sql.fetchone()[0] == 1
    assert stored_keys(storage) == {late_key, kept_key}

    small_disk.writable()
    removed = apply_retention(db, storage, THIRTY_DAYS, tenant=None)

    assert removed["jobs_deleted"] == 1 and removed["objects_deleted"] == 2
    assert stored_keys(storage) == set()
