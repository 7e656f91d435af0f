"""The worker as a real process against the ComfyUI stand-in and a real Postgres."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
import requests

from comfyq.jobs import JobQueue, Lease, NewJob
from comfyq.settings import PROJECT_ROOT
from comfyq.workflows import load_workflows
from tests.e2e_support import TINY_GRAPH, Stack, free_port, wait_until

pytestmark = pytest.mark.slow


def status_of(queue: JobQueue, job_id: int) -> str:
    row = queue.get(job_id, "default")
    assert row is not None
    return str(row["status"])


def txt2img(prompt: str, **params: Any) -> NewJob:
    workflow = load_workflows(PROJECT_ROOT / "workflows")["txt2img"]
    resolved = workflow.resolve_params({"prompt": prompt, "steps": 4, "width": 64, "height": 64, **params})
    return NewJob(graph=workflow.render(resolved), workflow="txt2img", params=resolved)


def test_a_job_runs_end_to_end(stack: Stack, queue: JobQueue, sql: Any) -> None:
    stack.standin()
    job_id = queue.enqueue(txt2img("a lighthouse", seed=7))["id"]
    worker = stack.worker("w1", "--burst")
    assert worker.wait(60) == 0
    row = queue.get(job_id, "default")
    assert row is not None and row["status"] == "succeeded", row
    assert row["attempts"] == 1 and row["progress"] == 1.0 and row["prompt_id"]
    [output] = row["outputs"]
    assert output["key"].split("/")[1:3] == [str(job_id), "1"] and output["content_type"] == "image/png"
    data = (stack.storage_dir / output["key"]).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) == output["size"]
    assert [r["event"] for r in queue.logs(job_id)] == ["queued", "claimed", "succeeded"]
    sql.execute("SELECT status, jobs_done, current_job_id, comfyui_url FROM workers")
    assert sql.fetchall() == [("stopped", 1, None, stack.comfy_url)]


def test_different_seeds_give_different_images(stack: Stack, queue: JobQueue) -> None:
    stack.standin()
    ids = [queue.enqueue(txt2img("same prompt", seed=s))["id"] for s in (1, 2)]
    assert stack.worker("w1", "--burst").wait(60) == 0
    blobs = []
    for job_id in ids:
        row = queue.get(job_id, "default")
        assert row is not None and row["status"] == "succeeded"
        blobs.append((stack.storage_dir / row["outputs"][0]["key"]).read_bytes())
    assert blobs[0] != blobs[1]


def test_comfyui_down_at_start_claims_nothing_and_spends_no_attempt(stack: Stack, queue: JobQueue) -> None:
    port = free_port()
    stack.comfy_url = f"http://127.0.0.1:{port}"  # nothing listens there yet
    job_id = queue.enqueue(NewJob(graph=TINY_GRAPH, max_attempts=1))["id"]
    worker = stack.worker("w1", outage_backoff_min_seconds="0.2", outage_backoff_max_seconds="1")
    worker.wait_for(r"comfyui unavailable", timeout=20)
    time.sleep(2)
    row = queue.get(job_id, "default")
    assert row is not None and row["status"] == "queued" and row["attempts"] == 0  # an outage claims nothing
    stack.standin(port=port)
    wait_until(lambda: status_of(queue, job_id) == "succeeded", 60, "the job to succeed once ComfyUI is up")
    row = queue.get(job_id, "default")
    assert row is not None and row["attempts"] == 1 and row["error"] is None
    assert [r["event"] for r in queue.logs(job_id)] == ["queued", "claimed", "succeeded"]
    assert worker.running()


def test_validation_errors_fail_at_once_with_node_errors(stack: Stack, queue: JobQueue) -> None:
    stack.standin()
    bad = {"1": {"class_type": "EmptyImage", "inputs": {"width": 99999, "height": 8, "batch_size": 1, "color": 0}},
           "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    job_id = queue.enqueue(NewJob(graph=bad, max_attempts=5))["id"]
    assert stack.worker("w1", "--burst").wait(60) == 0
    row = queue.get(job_id, "default")
    assert row is not None and row["status"] == "failed" and row["attempts"] == 1
    error = row["error"]
    assert error["type"] == "validation_error" and error["retryable"] is False
    [node_error] = error["details"]["node_errors"]["1"]["errors"]
    assert node_error["type"] == "value_bigger_than_max"


def test_two_workers_run_500_jobs_exactly_once(stack: Stack, queue: JobQueue, sql: Any) -> None:
    stack.standin("--node-seconds", "0")
    queue.enqueue_many([NewJob(graph=TINY_GRAPH, priority=i % 5) for i in range(500)])
    workers = [stack.worker(f"w{n}", "--burst") for n in (1, 2)]
    assert [w.wait(240) for w in workers] == [0, 0]
    sql.execute("SELECT status, count(*), min(attempts), max(attempts) FROM job_queue GROUP BY status")
    assert sql.fetchall() == [("succeeded", 500, 1, 1)]
    sql.execute("SELECT job_id, count(*) FROM job_logs WHERE event = 'claimed' GROUP BY job_id HAVING count(*) <> 1")
    assert sql.fetchall() == []
    sql.execute("SELECT count(DISTINCT worker_id) FROM job_queue")
    assert sql.fetchone()[0] == 2
    stored = list(stack.storage_dir.rglob("*.png"))
    assert len(stored) == 500
    assert len(list((stack.tmp_path / "comfyui-output").rglob("*.png"))) == 500  # ComfyUI ran each once


def test_sigkilled_worker_loses_its_lease_and_another_finishes(stack: Stack, queue: JobQueue) -> None:
    stack.standin("--node-seconds", "1.5")
    job_id = queue.enqueue(NewJob(graph=TINY_GRAPH))["id"]
    doomed = stack.worker("doomed", lease_seconds="2")
    wait_until(lambda: (queue.get(job_id, "default") or {}).get("prompt_id"), 20, "the job to reach ComfyUI")
    old = queue.get(job_id, "default")
    assert old is not None and old["status"] == "running"
    old_lease = Lease(job_id, old["attempts"], old["worker_id"])
    doomed.kill()
    stack.worker("rescuer", lease_seconds="2")
    wait_until(lambda: status_of(queue, job_id) == "succeeded", 60, "the rescuer to finish the job")
    row = queue.get(job_id, "default")
    assert row is not None and row["attempts"] == 2 and row["worker_id"] != old_lease.worker_id
    assert not queue.complete(old_lease, [{"key": "late"}])  # the old attempt can no longer finish it
    assert queue.get(job_id, "default")["outputs"][0]["key"].split("/")[1:3] == [str(job_id), "2"]  # type: ignore[index]
    assert "rescued" in [r["event"] for r in queue.logs(job_id)]


def test_sigterm_finishes_the_current_job(stack: Stack, queue: JobQueue) -> None:
    stack.standin("--node-seconds", "1")
    job_id = queue.enqueue(NewJob(graph=TINY_GRAPH))["id"]
    worker = stack.worker("w1")
    wait_until(lambda: (queue.get(job_id, "default") or {}).get("prompt_id"), 20, "the job to start")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert status_of(queue, job_id) == "succeeded"


def test_second_sigterm_releases_the_job(stack: Stack, queue: JobQueue) -> None:
    stack.standin("--node-seconds", "2")
    job_id = queue.enqueue(NewJob(graph=TINY_GRAPH))["id"]
    worker = stack.worker("w1")
    wait_until(lambda: (queue.get(job_id, "default") or {}).get("prompt_id"), 20, "the job to start")
    worker.signal(signal.SIGTERM)
    worker.wait_for(r"finishing the current job", 10)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    row = queue.get(job_id, "default")
    assert row is not None and row["status"] == "queued" and row["attempts"] == 0
    assert [r["event"] for r in queue.logs(job_id)][-1] == "released"


def test_idle_worker_wakes_on_notify_not_on_poll(stack: Stack, queue: JobQueue) -> None:
    stack.standin()
    stack.worker("w1", poll_interval_seconds="120")
    job_id = queue.enqueue(NewJob(graph=TINY_GRAPH))["id"]
    wait_until(lambda: status_of(queue, job_id) == "succeeded", 60, "the job to be picked up by LISTEN")


def test_canceling_a_running_job_interrupts_it(stack: Stack, queue: JobQueue) -> None:
    stack.standin("--node-seconds", "3")
    job_id = queue.enqueue(NewJob(graph=TINY_GRAPH))["id"]
    stack.worker("w1")
    wait_until(lambda: (queue.get(job_id, "default") or {}).get("prompt_id"), 20, "the job to start")
    assert queue.cancel(job_id, "default") == {"id": job_id, "status": "running"}
    wait_until(lambda: status_of(queue, job_id) == "canceled", 20, "the worker to stop the prompt")
    assert [r["event"] for r in queue.logs(job_id)][-2:] == ["cancel_requested", "canceled"]


def test_a_forged_cancel_notification_stops_nothing(stack: Stack, queue: JobQueue, sql: Any) -> None:
    """NOTIFY needs no privilege: any role that can connect (a dashboard's read-only one) can send
    `NOTIFY comfyq_cancel, '<id>'`. The worker treats it as a hint and asks the database, which holds no cancel."""
    stack.standin("--node-seconds", "2")
    job_id = queue.enqueue(NewJob(graph=TINY_GRAPH))["id"]
    worker = stack.worker("w1")
    wait_until(lambda: (queue.get(job_id, "default") or {}).get("prompt_id"), 20, "the job to start")
    sql.execute("SELECT pg_notify('comfyq_cancel', %s)", (str(job_id),))
    worker.wait_for(r"cancel notification the database does not confirm", timeout=10)
    wait_until(lambda: status_of(queue, job_id) == "succeeded", 30, "the job to finish anyway")
    assert "canceled" not in [r["event"] for r in queue.logs(job_id)]


def test_websocket_drop_falls_back_to_history(stack: Stack, queue: JobQueue) -> None:
    stack.standin("--fail", "drop", "--node-seconds", "0.2")
    job_id = queue.enqueue(NewJob(graph=TINY_GRAPH))["id"]
    assert stack.worker("w1", "--burst").wait(60) == 0
    row = queue.get(job_id, "default")
    assert row is not None and row["status"] == "succeeded" and row["attempts"] == 1 and row["outputs"]
    assert [r["event"] for r in queue.logs(job_id)] == ["queued", "claimed", "succeeded"]


def test_execution_error_fails_with_the_node_and_truncated_inputs(stack: Stack, queue: JobQueue) -> None:
    stack.standin("--fail", "execution_error")
    job_id = queue.enqueue(txt2img("doomed"))["id"]
    assert stack.worker("w1", "--burst").wait(60) == 0
    row = queue.get(job_id, "default")
    assert row is not None and row["status"] == "failed" and row["attempts"] == 1
    error = row["error"]
    assert error["type"] == "execution_error" and error["node"] == "3"
    assert error["details"]["node_type"] == "KSampler" and len(error["details"]["current_inputs"]) <= 2100
    assert [r["event"] for r in queue.logs(job_id)] == ["queued", "claimed", "failed"]


def test_out_of_memory_is_retried(stack: Stack, queue: JobQueue) -> None:
    _, url = stack.standin("--fail", "oom")
    job_id = queue.enqueue(txt2img("big", width=64, height=64))["id"]
    stack.worker("w1", retry_base_seconds="1")
    wait_until(lambda: any(r["event"] == "retry_scheduled" for r in queue.logs(job_id)), 30, "an OOM retry")
    requests.post(f"{url}/standin/control", json={"fail": "none"}, timeout=5).raise_for_status()
    wait_until(lambda: status_of(queue, job_id) == "succeeded", 60, "the retry to succeed")
    retry = next(r for r in queue.logs(job_id) if r["event"] == "retry_scheduled")
    assert retry["details"]["error_type"] == "out_of_memory"
    assert [r["event"] for r in queue.logs(job_id)][-2:] == ["claimed", "succeeded"]
