"""The silent_workers alert of the `monitor-alerts` workflow in a real n8n, through a worker's death: a worker
SIGKILLed mid-job fires it on Slack and by email, naming the worker; another worker declares it dead and runs its
rescued job, and the alert resolves by itself, with nobody touching the workers table."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from comfyq.db import Database
from comfyq.jobs import JobQueue, NewJob
from comfyq.processes import ManagedProcess
from comfyq.stack import start_standin, start_worker
from tests.conftest import SQL_DIR
from tests.e2e_support import TINY_GRAPH, wait_until
from tests.n8n.conftest import N8n

pytestmark = [pytest.mark.n8n, pytest.mark.slow]


@pytest.fixture
def fleet(fresh: N8n) -> Iterator[tuple[Database, list[ManagedProcess], str]]:
    """A database handle, the list the test's processes go in (stopped afterwards) and the stand-in's URL."""
    db = Database(fresh.db_url, SQL_DIR)
    processes: list[ManagedProcess] = []
    try:
        standin, comfy_url = start_standin(fresh.log_dir, fresh.storage_dir.parent / "comfyui-output",
                                           args=("--node-seconds", "3"), name="standin-death")
        processes.append(standin)
        yield db, processes, comfy_url
    finally:
        for proc in reversed(processes):
            proc.stop(timeout=15)
        db.close()


def test_a_killed_worker_fires_the_alert_which_resolves_once_another_took_over(
        fresh: N8n, fleet: tuple[Database, list[ManagedProcess], str]) -> None:
    db, processes, comfy_url = fleet
    assert db.fetch_one("monitor_threshold_set", {"name": "heartbeat_silence_seconds", "value": 1}) is not None

    def worker(name: str) -> ManagedProcess:
        proc = start_worker(fresh.log_dir, {
            "DATABASE_URL": fresh.db_url, "COMFYUI_URL": comfy_url, "COMFYQ_STORAGE_DIR": str(fresh.storage_dir),
            "COMFYQ_POLL_INTERVAL_SECONDS": "1", "COMFYQ_HEARTBEAT_SECONDS": "0.5",
            "COMFYQ_RESCUE_INTERVAL_SECONDS": "0.5", "COMFYQ_LEASE_SECONDS": "6",
            "COMFYQ_WORKER_DEAD_AFTER_SECONDS": "3", "PYTHONUNBUFFERED": "1"}, name=name)
        processes.append(proc)
        return proc

    queue = JobQueue(db)
    job_id = queue.enqueue(NewJob(graph=TINY_GRAPH))["id"]
    doomed = worker("worker-doomed")
    wait_until(lambda: (queue.get(job_id, "default") or {}).get("prompt_id"), 30, "the job to reach ComfyUI")
    doomed_id = (queue.get(job_id, "default") or {})["worker_id"]
    worker("worker-survivor")
    assert fresh.slack_texts() == []

    doomed.kill()
    wait_until(lambda: fresh.slack_texts(), 30, "the alert on Slack")
    [fired] = fresh.slack_texts()
    assert fired.startswith("[comfyq-test] FIRING silent_workers") and doomed_id in fired

    wait_until(lambda: len(fresh.slack_texts()) == 2 and len(fresh.mailbox.received()) == 2, 60,
               "the resolved message on Slack and by email")
    resolved = fresh.slack_texts()[1]
    assert resolved.startswith("[comfyq-test] RESOLVED silent_workers after ")
    assert [mail["Subject"].split(" ")[1] for mail in fresh.mailbox.received()] == ["FIRING", "RESOLVED"]
    assert {w["id"]: w["status"] for w in db.fetch_all("list_workers", {"include_stopped": False})}[doomed_id] == "dead"
    wait_until(lambda: (queue.get(job_id, "default") or {}).get("status") == "succeeded", 30, "the rescued job")
    row = queue.get(job_id, "default")
    assert row is not None and row["worker_id"] != doomed_id and row["attempts"] == 2  # rescued, run by the other
