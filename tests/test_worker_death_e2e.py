"""A worker's death with real processes: the stand-in, workers, the API under gunicorn and the CLI. A SIGKILLed
worker is declared dead by another within the bound, its job is rescued and run by that other worker, the API and
`comfyq workers` show it dead, the silent_workers measure fires and then clears with the fleet healthy again, and
`comfyq workers forget` removes it (never a live worker). A SIGSTOPped worker declared dead is alive again after
SIGCONT: it keeps a job whose lease it still held, and one whose lease was rescued meanwhile is not recorded twice."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from comfyq import tokens
from comfyq.db import Database, Row
from comfyq.jobs import JobQueue, NewJob
from comfyq.processes import ManagedProcess
from comfyq.stack import start_api
from tests.e2e_support import TINY_GRAPH, Stack, wait_until
from tests.test_cli_admin import as_json, comfyq, ok

pytestmark = pytest.mark.slow

DEAD_AFTER = 3.0  # COMFYQ_WORKER_DEAD_AFTER_SECONDS here: 6 heartbeats of 0.5 s
# A worker's death is seen within the bound plus one rescue tick (0.5 s) and the heartbeat it missed (0.5 s); the
# rest is slack for a loaded machine.
DECLARED_WITHIN = DEAD_AFTER + 4.0


def worker_row(db: Database, worker_id: str) -> Row | None:
    return next((row for row in db.fetch_all("list_workers", {"include_stopped": True}) if row["id"] == worker_id),
                None)


def status_of_worker(db: Database, worker_id: str) -> str | None:
    row = worker_row(db, worker_id)
    return None if row is None else str(row["status"])


def job(queue: JobQueue, job_id: int) -> dict[str, Any]:
    row = queue.get(job_id, "default")
    assert row is not None
    return row


def running_on(queue: JobQueue, job_id: int) -> str:
    """Wait until the job reached ComfyUI; the id of the worker that runs it."""
    wait_until(lambda: job(queue, job_id).get("prompt_id"), 30, "the job to reach ComfyUI")
    return str(job(queue, job_id)["worker_id"])


def only_worker_id(db: Database, *, besides: set[str]) -> str:
    [row] = [row for row in db.fetch_all("list_workers", {"include_stopped": False}) if row["id"] not in besides]
    return str(row["id"])


def succeeded_events(queue: JobQueue, job_id: int) -> int:
    return sum(1 for row in queue.logs(job_id) if row["event"] == "succeeded")


@pytest.fixture
def api(stack: Stack, db: Database) -> Iterator[tuple[str, dict[str, str]]]:
    """The API under gunicorn with the tests' bound, and the environment of an operator's `comfyq`."""
    proc, url = start_api(stack.log_dir, {"DATABASE_URL": stack.db_url, "COMFYQ_TOKEN_CACHE_SECONDS": "0",
                                          "COMFYQ_STORAGE_DIR": str(stack.storage_dir),
                                          "COMFYQ_HEARTBEAT_SECONDS": "0.5",
                                          "COMFYQ_WORKER_DEAD_AFTER_SECONDS": str(DEAD_AFTER)}, workers=1)
    stack.processes.append(proc)
    yield url, {"COMFYQ_API_URL": url, "COMFYQ_API_TOKEN": tokens.create(db, "ops", "operator").token}


def test_a_sigkilled_worker_is_declared_dead_its_job_runs_elsewhere_and_it_can_be_forgotten(
        stack: Stack, db: Database, queue: JobQueue, api: tuple[str, dict[str, str]]) -> None:
    url, operator = api
    assert db.fetch_one("monitor_threshold_set", {"name": "heartbeat_silence_seconds", "value": 1}) is not None
    stack.standin("--node-seconds", "2")
    job_id = queue.enqueue(NewJob(graph=TINY_GRAPH))["id"]
    doomed = stack.worker("doomed", lease_seconds="6", worker_dead_after_seconds=str(DEAD_AFTER))
    doomed_id = running_on(queue, job_id)
    rescuer = stack.worker("rescuer", lease_seconds="6", worker_dead_after_seconds=str(DEAD_AFTER))
    rescuer_id = only_worker_id(db, besides={doomed_id})

    doomed.kill()
    killed_at = time.monotonic()
    # Silent first (the n8n alert would fire now) ...
    silent = wait_until(lambda: (s := db.fetch_one("monitoring_snapshot")) and s["silent_workers"] == 1 and s,
                        10, "the killed worker to count as silent")
    assert silent["silent_worker_ids"] == [doomed_id]
    # ... then dead, declared by the other worker within the bound, not before it.
    wait_until(lambda: status_of_worker(db, doomed_id) == "dead", DECLARED_WITHIN, "the worker to be declared dead")
    assert time.monotonic() - killed_at < DECLARED_WITHIN
    line = rescuer.wait_for(rf"worker {re.escape(doomed_id)} \(.*\) declared dead: no heartbeat for ([0-9.]+) s",
                            timeout=5)
    assert float(line.group(1)) >= DEAD_AFTER and "action=worker_declared_dead" in line.string

    # Its job is rescued when its lease expires and runs on the other worker, once.
    wait_until(lambda: job(queue, job_id)["status"] == "succeeded", 60, "the rescued job to succeed")
    finished = job(queue, job_id)
    assert (finished["attempts"], finished["worker_id"]) == (2, rescuer_id)
    assert [r["event"] for r in queue.logs(job_id)].count("rescued") == 1 and succeeded_events(queue, job_id) == 1

    # The fleet is healthy again: the alert's measure is clear, the dead worker is still shown as dead.
    healthy = wait_until(lambda: (s := db.fetch_one("monitoring_snapshot")) and s["silent_workers"] == 0 and s,
                         10, "the silent_workers measure to clear")
    assert (healthy["dead_workers"], healthy["live_workers"]) == (1, 1)
    listed = requests.get(f"{url}/admin/workers", timeout=10,
                          headers={"Authorization": f"Bearer {operator['COMFYQ_API_TOKEN']}"}).json()["workers"]
    assert {w["id"]: w["status"] for w in listed} == {doomed_id: "dead", rescuer_id: "running"}
    table = ok(comfyq(operator, "workers")).stdout
    [doomed_line] = [line for line in table.splitlines() if line.startswith(doomed_id)]
    assert doomed_line.split()[1] == "dead"
    assert {w["id"]: w["status"] for w in as_json(comfyq(operator, "workers", "--json"))}[doomed_id] == "dead"
    assert ok(comfyq(operator, "status")).stdout.rstrip().endswith("scope: all tenants")

    # Forgetting: never a live worker; the dead one goes for good.
    refused = comfyq(operator, "workers", "forget", rescuer_id)
    assert refused.returncode == 3 and "409 worker_alive" in refused.stderr
    forgotten = ok(comfyq(operator, "workers", "forget", doomed_id)).stdout
    assert forgotten.startswith(f"forgot worker {doomed_id} (dead, host ")
    assert [w["id"] for w in as_json(comfyq(operator, "workers", "--all", "--json"))] == [rescuer_id]
    again = comfyq(operator, "workers", "forget", doomed_id)
    assert again.returncode == 4 and "404 not_found" in again.stderr


@dataclass
class Frozen:
    """A job running on a worker that was frozen (SIGSTOP) and then declared dead by the other worker."""

    job_id: int
    sleeper: ManagedProcess
    sleeper_id: str
    other: ManagedProcess
    other_id: str


@pytest.fixture
def frozen(stack: Stack, db: Database, queue: JobQueue) -> Iterator[Callable[[str], Frozen]]:
    """Freeze a worker mid-job under a lease of that many seconds, wait until it is declared dead (bound 2 s); it
    gets SIGCONT in teardown whatever happened, so it can be stopped."""
    made: list[Frozen] = []

    def freeze(lease_seconds: str) -> Frozen:
        stack.standin("--node-seconds", "1")
        job_id = queue.enqueue(NewJob(graph=TINY_GRAPH))["id"]
        sleeper = stack.worker("sleeper", lease_seconds=lease_seconds, worker_dead_after_seconds="2")
        sleeper_id = running_on(queue, job_id)
        other = stack.worker("other", lease_seconds=lease_seconds, worker_dead_after_seconds="2")
        made.append(Frozen(job_id, sleeper, sleeper_id, other, only_worker_id(db, besides={sleeper_id})))
        sleeper.signal(signal.SIGSTOP)
        wait_until(lambda: status_of_worker(db, sleeper_id) == "dead", 10, "the frozen worker to be declared dead")
        other.wait_for(rf"worker {re.escape(sleeper_id)} .*declared dead", timeout=5)
        return made[-1]

    yield freeze
    for case in made:
        case.sleeper.signal(signal.SIGCONT)


def test_a_frozen_worker_whose_job_was_rescued_comes_back_alive_without_recording_it_twice(
        db: Database, queue: JobQueue, frozen: Callable[[str], Frozen]) -> None:
    case = frozen("4")
    job_id = case.job_id
    wait_until(lambda: job(queue, job_id)["status"] == "succeeded", 60, "the other worker to run the rescued job")
    assert (job(queue, job_id)["attempts"], job(queue, job_id)["worker_id"]) == (2, case.other_id)

    case.sleeper.signal(signal.SIGCONT)
    case.sleeper.wait_for(r"was declared dead and heartbeats again", timeout=15)
    wait_until(lambda: status_of_worker(db, case.sleeper_id) == "running", 10, "the worker to be running again")
    case.sleeper.wait_for(rf"job {job_id}(:| attempt 1) .*lease (was )?lost", timeout=15)
    time.sleep(2)  # whatever the woken worker still does with attempt 1 happens now
    row = job(queue, job_id)
    assert (row["status"], row["attempts"], row["worker_id"]) == ("succeeded", 2, case.other_id)
    assert row["outputs"][0]["key"].split("/")[1:3] == [str(job_id), "2"]
    assert succeeded_events(queue, job_id) == 1 and case.sleeper.running()
    heartbeat = worker_row(db, case.sleeper_id)
    assert heartbeat is not None and heartbeat["heartbeat_age_seconds"] < 2


def test_a_frozen_worker_declared_dead_keeps_the_job_whose_lease_it_still_holds(
        db: Database, queue: JobQueue, frozen: Callable[[str], Frozen]) -> None:
    case = frozen("10")
    case.sleeper.signal(signal.SIGCONT)  # well within its 10 s lease
    wait_until(lambda: job(queue, case.job_id)["status"] == "succeeded", 30, "the woken worker to finish its job")
    row = job(queue, case.job_id)
    assert (row["attempts"], row["worker_id"]) == (1, case.sleeper_id)
    assert "rescued" not in [r["event"] for r in queue.logs(case.job_id)] and succeeded_events(queue, case.job_id) == 1
    assert status_of_worker(db, case.sleeper_id) == "running"
