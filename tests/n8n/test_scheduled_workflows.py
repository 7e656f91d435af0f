"""The scheduled workflows, each run once now through `n8n execute` (as their schedule would) in the session's
n8n: `cleanup` removes old jobs with their logs and stored files through the API's retention endpoint, keeps
recent ones and reports to Slack; the scheduled-batch example submits its stored batch."""

from __future__ import annotations

from typing import Any

import pytest

from comfyq.db import Database, connect_once
from comfyq.jobs import JobQueue, NewJob
from comfyq.storage import LocalStorage
from n8n import n8nctl
from tests.conftest import SQL_DIR
from tests.e2e_support import TINY_GRAPH
from tests.n8n.conftest import N8n

pytestmark = [pytest.mark.n8n, pytest.mark.slow]


def rows(n8n: N8n, query: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = connect_once(n8n.db_url)
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            return list(cur.fetchall())
    finally:
        conn.close()


def finished_jobs_with_files(n8n: N8n, count: int) -> list[int]:
    """Jobs that ran to success, each with one stored output in the API's storage."""
    db = Database(n8n.db_url, SQL_DIR)
    try:
        queue = JobQueue(db)
        storage = LocalStorage(n8n.storage_dir)
        ids = [row["id"] for row in queue.enqueue_many([NewJob(graph=TINY_GRAPH, tenant="n8n")] * count)]
        for _ in ids:
            claimed = queue.claim("n8n-test-worker")
            assert claimed is not None
            stored = storage.put(f"{claimed.id}/1/out.png", b"\x89PNG fake", "image/png")
            queue.complete(claimed.lease, [stored.to_record()])
        return ids
    finally:
        db.close()


def test_cleanup_removes_old_jobs_logs_and_files_and_keeps_recent_ones(fresh: N8n) -> None:
    old_a, old_b, recent = finished_jobs_with_files(fresh, 3)
    rows(fresh, "UPDATE job_queue SET finished_at = now() - interval '40 days' WHERE id = ANY(%s) RETURNING id",
         [old_a, old_b])
    logs_before = dict(rows(fresh, "SELECT job_id, count(*) FROM job_logs GROUP BY job_id"))
    assert all(logs_before[i] >= 2 for i in (old_a, old_b, recent))

    run = fresh.execute("comfyqCleanup001")

    [removed] = n8nctl.node_output(run, "Apply retention")
    assert removed == {"jobs_deleted": 2, "logs_deleted": logs_before[old_a] + logs_before[old_b],
                       "objects_deleted": 2, "older_than_days": 30, "scope": "all tenants"}
    assert [r[0] for r in rows(fresh, "SELECT id FROM job_queue ORDER BY id")] == [recent]
    assert {r[0] for r in rows(fresh, "SELECT DISTINCT job_id FROM job_logs")} == {recent}
    assert not (fresh.storage_dir / f"{old_a}/1/out.png").exists()
    assert not (fresh.storage_dir / f"{old_b}/1/out.png").exists()
    assert (fresh.storage_dir / f"{recent}/1/out.png").exists()
    [report] = fresh.slack_texts()
    assert report.startswith("[comfyq-test] cleanup: removed 2 jobs,") and "2 stored files" in report
    assert "more than 30 days ago" in report


def test_the_scheduled_batch_example_submits_its_stored_batch(fresh: N8n) -> None:
    run = fresh.execute("comfyqSchedBatch")
    [stored] = n8nctl.node_output(run, "Stored batch")
    [answer] = n8nctl.node_output(run, "Submit the batch")
    assert answer["count"] == len(stored["jobs"]) == 3
    submitted = rows(fresh, "SELECT id, tenant, status, params->>'prompt' FROM job_queue ORDER BY id")
    assert [r[0] for r in submitted] == [j["id"] for j in answer["jobs"]]
    assert {(r[1], r[2]) for r in submitted} == {("n8n", "queued")}
    assert [r[3] for r in submitted] == [j["params"]["prompt"] for j in stored["jobs"]]
    [(key,)] = rows(fresh, "SELECT idempotency_key FROM submissions")
    assert key.startswith("scheduled-batch-comfyqSchedBatch-")
