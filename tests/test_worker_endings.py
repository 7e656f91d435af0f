"""Every way an attempt can end, driven through the stand-in: restart, partial acceptance, timeout, cancel of
prefetched jobs, warm shutdown with prefetch, and the GPU busy ratio with prefetch on."""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest
import requests

from comfyq.db import Database
from comfyq.jobs import JobQueue, NewJob
from comfyq.settings import Settings
from comfyq.storage import LocalStorage, StoredObject
from comfyq.worker.loop import Worker
from tests.conftest import SQL_DIR
from tests.e2e_support import TINY_GRAPH, Stack, wait_until

pytestmark = pytest.mark.slow


def row_of(queue: JobQueue, job_id: int) -> dict[str, Any]:
    row = queue.get(job_id, "default")
    assert row is not None
    return row


def events(queue: JobQueue, job_id: int) -> list[str]:
    return [r["event"] for r in queue.logs(job_id)]


def graph(color: int) -> dict[str, Any]:
    """A tiny graph whose output differs by color, so ComfyUI's cache never replays it."""
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": color}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}


def test_comfyui_restart_mid_job_resubmits_without_spending_an_attempt(stack: Stack, queue: JobQueue) -> None:
    proc, url = stack.standin("--node-seconds", "1.5")
    port = int(url.rsplit(":", 1)[1])
    job_id = queue.enqueue(NewJob(graph=TINY_GRAPH, max_attempts=3))["id"]
    stack.worker("w1", retry_base_seconds="0.2")
    wait_until(lambda: row_of(queue, job_id)["prompt_id"], 20, "the prompt to be submitted")
    first_prompt = row_of(queue, job_id)["prompt_id"]
    time.sleep(0.3)  # inside the first node
    proc.kill()
    stack.processes.remove(proc)
    stack.standin("--node-seconds", "0.1", port=port, name="comfyui-standin-2")
    wait_until(lambda: row_of(queue, job_id)["status"] == "succeeded", 60, "the resubmitted job to succeed")
    row = row_of(queue, job_id)
    assert row["attempts"] == 1 and row["prompt_id"] != first_prompt  # the outage spent no attempt
    assert events(queue, job_id) == ["queued", "claimed", "resubmitted", "succeeded"]
    resubmitted = next(r for r in queue.logs(job_id) if r["event"] == "resubmitted")
    assert resubmitted["details"] == {"dependency": "comfyui", "lost_prompt_id": first_prompt}
    stored = sorted(p.relative_to(stack.storage_dir).as_posix() for p in stack.storage_dir.rglob("*.png"))
    assert stored == [o["key"] for o in row["outputs"]] and stored[0].split("/")[1:3] == [str(job_id), "1"]


def test_partial_acceptance_fails_the_job_permanently(stack: Stack, queue: JobQueue) -> None:
    stack.standin()
    # Two outputs, one of them invalid (a missing input): ComfyUI answers 200 with node_errors for it.
    partial = {**graph(1), "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}}
    job_id = queue.enqueue(NewJob(graph=partial, max_attempts=3))["id"]
    assert stack.worker("w1", "--burst").wait(60) == 0
    row = row_of(queue, job_id)
    assert row["status"] == "failed" and row["attempts"] == 1
    assert row["error"]["type"] == "validation_error" and "3" in row["error"]["details"]["node_errors"]
    assert row["prompt_id"]  # ComfyUI accepted (part of) it under this id before it was taken back


def chain(length: int) -> dict[str, Any]:
    """EmptyImage, `length` ImageInverts, SaveImage: a graph with many node boundaries to interrupt at."""
    nodes: dict[str, Any] = {"1": {"class_type": "EmptyImage",
                                   "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 3}}}
    for n in range(2, length + 2):
        nodes[str(n)] = {"class_type": "ImageInvert", "inputs": {"image": [str(n - 1), 0]}}
    nodes[str(length + 2)] = {"class_type": "SaveImage", "inputs": {"images": [str(length + 1), 0],
                                                                    "filename_prefix": "c"}}
    return nodes


def test_timeout_interrupts_then_retries_then_fails(stack: Stack, queue: JobQueue) -> None:
    stack.standin("--node-seconds", "0.5")
    job_id = queue.enqueue(NewJob(graph=chain(8), timeout_seconds=1, max_attempts=2))["id"]
    stack.worker("w1", retry_base_seconds="0.2")
    wait_until(lambda: row_of(queue, job_id)["status"] == "failed", 60, "the job to time out twice")
    row = row_of(queue, job_id)
    assert row["attempts"] == 2 and row["error"]["type"] == "timeout"
    assert events(queue, job_id) == ["queued", "claimed", "retry_scheduled", "claimed", "failed"]


def test_cancel_of_a_prefetched_job_removes_it_from_comfyui(stack: Stack, queue: JobQueue,
                                                            record_figure: Any) -> None:
    """The cancel reaches the worker through NOTIFY (the heartbeat here is far slower than the answer), and the
    prefetched prompt is deleted from ComfyUI's queue before it ever runs."""
    stack.standin("--node-seconds", "1.5")
    first = queue.enqueue(NewJob(graph=graph(1), priority=5))["id"]
    second = queue.enqueue(NewJob(graph=graph(2)))["id"]
    stack.worker("w1", prefetch_depth="1", heartbeat_seconds="30", lease_seconds="120")
    wait_until(lambda: row_of(queue, second)["prompt_id"], 20, "the second job to be prefetched")
    assert row_of(queue, first)["status"] == "running" and row_of(queue, second)["status"] == "running"
    asked = time.monotonic()
    queue.cancel(second, "default")
    wait_until(lambda: row_of(queue, second)["status"] == "canceled", 5, "the prefetched job to be canceled", 0.02)
    prefetched_latency = time.monotonic() - asked
    asked = time.monotonic()
    queue.cancel(first, "default")
    wait_until(lambda: row_of(queue, first)["status"] == "canceled", 5, "the running job to be canceled", 0.02)
    running_latency = time.monotonic() - asked
    record_figure("cancel latency (prefetched / running, heartbeat 30 s)",
                  f"{prefetched_latency:.2f}s / {running_latency:.2f}s")
    assert prefetched_latency < 1.0
    assert running_latency < 3.0  # an interrupt takes effect between nodes (1.5 s each here)
    produced = list((stack.tmp_path / "comfyui-output").rglob("*.png"))
    assert produced == []  # ComfyUI never finished either, and never started the prefetched one
    prompt = row_of(queue, second)["prompt_id"]
    history = requests.get(f"{stack.comfy_url}/history/{prompt}", timeout=5).json()
    assert history == {}


def test_warm_shutdown_returns_prefetched_jobs_at_once(stack: Stack, queue: JobQueue) -> None:
    stack.standin("--node-seconds", "1.5")
    first = queue.enqueue(NewJob(graph=graph(1), priority=5))["id"]
    second = queue.enqueue(NewJob(graph=graph(2)))["id"]
    worker = stack.worker("w1", prefetch_depth="1")
    wait_until(lambda: row_of(queue, second)["prompt_id"], 20, "the second job to be prefetched")
    worker.signal(signal.SIGTERM)
    wait_until(lambda: row_of(queue, second)["status"] == "queued", 5, "the prefetched job to be released")
    assert row_of(queue, first)["status"] == "running"
    assert worker.wait(30) == 0
    assert row_of(queue, first)["status"] == "succeeded"
    released = row_of(queue, second)
    assert released["attempts"] == 0 and events(queue, second)[-1] == "released"


def test_progress_reaches_the_job_row(stack: Stack, queue: JobQueue) -> None:
    stack.standin("--node-seconds", "0.4")
    job_id = queue.enqueue(NewJob(graph=chain(2)))["id"]
    stack.worker("w1", progress_min_interval_seconds="0.1")
    seen = wait_until(lambda: (lambda r: r if 0 < r["progress"] < 1 and r["current_node"] else None)(
        row_of(queue, job_id)), 20, "a progress write while running")
    assert seen["status"] == "running"
    wait_until(lambda: row_of(queue, job_id)["status"] == "succeeded", 20, "the job to finish")
    assert row_of(queue, job_id)["progress"] == 1.0


@pytest.mark.parametrize("prefetch", [0, 1])
def test_gpu_busy_ratio_is_reported(stack: Stack, queue: JobQueue, prefetch: int, record_figure: Any) -> None:
    """50 jobs of a fixed 200 ms in the stand-in; the ratio is reported, not asserted (see bench/)."""
    _, url = stack.standin("--node-seconds", "0.1")  # two executed nodes: 200 ms per job
    queue.enqueue_many([NewJob(graph=graph(i)) for i in range(50)])
    requests.delete(f"{url}/standin/stats", timeout=5)
    assert stack.worker("w1", "--burst", prefetch_depth=str(prefetch)).wait(120) == 0
    stats = requests.get(f"{url}/standin/stats", timeout=5).json()
    assert stats["prompts"] == 50
    ratio = stats["busy_seconds"] / (stats["last_end"] - stats["first_start"])
    record_figure(f"GPU busy ratio, 50 x 200 ms jobs, prefetch {prefetch}", f"{ratio:.4f}")


class SlowDisk(LocalStorage):
    """Local storage on a disk slower than the GPU: every write takes 0.15 s."""

    def put(self, key: str, data: bytes, content_type: str) -> StoredObject:
        time.sleep(0.15)
        return super().put(key, data, content_type)


def test_a_finisher_slower_than_comfyui_holds_back_new_claims(stack: Stack, queue: JobQueue, db: Database) -> None:
    """ComfyUI finishes prompts faster than outputs can be stored: the worker stops claiming while more than
    `depth` finished attempts wait for the finisher, instead of piling them up (memory, held leases, jobs to
    run again after a crash). Run in process, against the real stand-in and the real database."""
    stack.standin("--node-seconds", "0")
    ids = [row["id"] for row in queue.enqueue_many([NewJob(graph=graph(200 + i)) for i in range(12)])]
    settings = Settings(database_url=stack.db_url, comfyui_url=stack.comfy_url, storage_dir=stack.storage_dir,
                        prefetch_depth=1, log_level="WARNING")
    worker = Worker(settings, Database(stack.db_url, SQL_DIR))
    worker.finisher.storage = SlowDisk(stack.storage_dir)
    backlog: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            backlog.append(worker.finisher.pending)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        assert worker.run(burst=True) == 12
    finally:
        done.set()
        sampler.join(5)
        worker.db.close()
    assert all(row_of(queue, job_id)["status"] == "succeeded" for job_id in ids)
    depth = 1 + settings.prefetch_depth
    assert max(backlog) <= depth + 1  # the one being written plus at most `depth` waiting
    assert max(backlog) >= 2  # the finisher did fall behind: the test exercised the limit
