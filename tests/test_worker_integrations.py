"""The worker's outer edges as a real process: input images by URL, signed completion callbacks, the
healthcheck, the metrics endpoint and JSON logs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from standardwebhooks import Webhook

from comfyq.jobs import JobQueue, NewJob
from comfyq.settings import PROJECT_ROOT
from tests.e2e_support import TINY_GRAPH, Stack, free_port, wait_until
from tests.http_servers import RED, Receiver

pytestmark = pytest.mark.slow

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def load_and_save(url: str) -> dict[str, Any]:
    return {"1": {"class_type": "LoadImage", "inputs": {"image": url}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "in"}}}


def test_input_image_url_is_downloaded_and_used(stack: Stack, queue: JobQueue,
                                                 image_host: tuple[str, Counter[str]]) -> None:
    base, _ = image_host
    stack.standin()
    job_id = queue.enqueue(NewJob(graph=load_and_save(f"{base}/red/cat.png")))["id"]
    assert stack.worker("w1", "--burst", url_allowlist="127.0.0.1").wait(60) == 0
    row = queue.get(job_id, "default")
    assert row is not None and row["status"] == "succeeded", row["error"] if row else None
    assert (stack.tmp_path / "input" / "cat.png").read_bytes() == RED


def test_loopback_input_url_without_allowlist_fails_permanently(stack: Stack, queue: JobQueue,
                                                                image_host: tuple[str, Counter[str]]) -> None:
    base, _ = image_host
    stack.standin()
    job_id = queue.enqueue(NewJob(graph=load_and_save(f"{base}/red/cat.png"), max_attempts=3))["id"]
    assert stack.worker("w1", "--burst").wait(60) == 0
    row = queue.get(job_id, "default")
    assert row is not None and row["status"] == "failed" and row["attempts"] == 1
    assert row["error"]["type"] in {"unsafe_url", "input_image_rejected"} and row["error"]["retryable"] is False
    assert "loopback" in row["error"]["message"]


def test_completion_callback_is_signed_and_survives_two_failures(
        stack: Stack, queue: JobQueue, receiver: Callable[..., Receiver]) -> None:
    hook = receiver([500, 503])
    stack.standin()
    job_id = queue.enqueue(NewJob(graph=TINY_GRAPH, callback_url=hook.url))["id"]
    stack.worker("w1", url_allowlist="127.0.0.1", callback_secret=SECRET)
    wait_until(lambda: any(r["event"] == "callback_delivered" for r in queue.logs(job_id)), 60,
               "the callback to be delivered")
    assert len(hook.requests) == 3 and len({h["webhook-id"] for h, _ in hook.requests}) == 1
    headers, body = hook.requests[-1]
    event = Webhook(SECRET).verify(body, headers)  # COMFYQ_CALLBACK_SECRET, stored as tenant default's secret
    assert event["type"] == "job.succeeded" and event["data"]["id"] == job_id
    assert event["data"]["tenant"] == "default"
    delivered = next(r for r in queue.logs(job_id) if r["event"] == "callback_delivered")
    assert delivered["details"]["tries"] == 3


def test_healthcheck_needs_postgres_and_comfyui(stack: Stack) -> None:
    _, url = stack.standin()
    script = str(PROJECT_ROOT / "worker" / "worker.py")

    def health(comfy: str, db: str) -> int:
        env = {**stack.worker_env(), "COMFYUI_URL": comfy, "DATABASE_URL": db}
        return subprocess.run([sys.executable, script, "healthcheck"], env=env, capture_output=True,
                              timeout=60).returncode

    assert health(url, stack.db_url) == 0
    assert health(f"http://127.0.0.1:{free_port()}", stack.db_url) == 1
    assert health(url, f"postgresql://nobody@127.0.0.1:{free_port()}/none") == 1


def test_metrics_and_json_logs(stack: Stack, queue: JobQueue) -> None:
    stack.standin()
    worker = stack.worker("w1", metrics_port="0", log_format="json")
    port = int(worker.wait_for(r'"metrics on http://[^:]+:(\d+)/metrics"|metrics on http://[^:]+:(\d+)', 20)
               .group(0).rsplit(":", 1)[1].split("/")[0])
    job_id = queue.enqueue(NewJob(graph=TINY_GRAPH))["id"]
    wait_until(lambda: (queue.get(job_id, "default") or {}).get("status") == "succeeded", 30, "the job")
    # The counter moves just after the row is committed: look until it has.
    counted = r'^comfyq_worker_jobs_total\{status="succeeded"\} 1\.0$'
    text = wait_until(lambda: (lambda t: t if re.search(counted, t, re.MULTILINE) else None)(
        requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text), 10, "the succeeded counter")
    assert "comfyq_worker_comfyui_execution_seconds_count 1.0" in text
    assert re.search(r"^comfyq_worker_gpu_busy_ratio \d", text, re.MULTILINE)
    assert re.search(r"^comfyq_worker_storage_bytes_total [1-9]", text, re.MULTILINE)
    lines = [json.loads(line) for line in worker.output() if line.startswith("{")]
    assert lines and all({"asctime", "level", "logger", "message"} <= set(line) for line in lines)
    job_lines = [line for line in lines if line.get("job_id") == job_id]
    assert {line["message"].split(" ")[2] for line in job_lines} >= {"claimed", "succeeded"}
    assert all(line.get("attempt") == 1 for line in job_lines)
    # A prompt id exists from the hand-over to ComfyUI on (a claim comes first): every line after it names it.
    succeeded = [line for line in job_lines if line["message"].split(" ")[2] == "succeeded"]
    assert succeeded and all(line.get("prompt_id") for line in succeeded)


def test_callback_of_a_job_canceled_in_the_queue_is_sent_by_a_worker(
        stack: Stack, queue: JobQueue, receiver: Callable[..., Receiver]) -> None:
    hook = receiver()
    stack.standin()
    stack.worker("w1", url_allowlist="127.0.0.1", callback_secret=SECRET)
    job_id = queue.enqueue(NewJob(graph=TINY_GRAPH, callback_url=hook.url,
                                  run_at=datetime.now(UTC) + timedelta(hours=1)))["id"]
    assert queue.cancel(job_id, "default") == {"id": job_id, "status": "canceled"}
    wait_until(lambda: hook.requests, 30, "the canceled job's callback")
    headers, body = hook.requests[0]
    assert Webhook(SECRET).verify(body, headers)["type"] == "job.canceled"
    wait_until(lambda: (queue.get(job_id, "default") or {}).get("callback_state") == "delivered", 10, "delivered")


def test_a_delivery_cut_short_by_a_crash_is_sent_again_with_the_same_id(
        stack: Stack, queue: JobQueue, receiver: Callable[..., Receiver], sql: Any) -> None:
    hook = receiver()
    job_id = queue.enqueue(NewJob(graph=TINY_GRAPH, callback_url=hook.url))["id"]
    claimed = queue.claim("gone")
    assert claimed is not None and queue.complete(claimed.lease, [])
    # The worker that claimed the callback died: its claim is older than the reclaim timeout.
    sql.execute("UPDATE job_queue SET callback_state = 'sending', callback_claimed_at = now() - interval '1 hour' "
                "WHERE id = %s", (job_id,))
    stack.standin()
    stack.worker("w1", url_allowlist="127.0.0.1", callback_secret=SECRET)
    wait_until(lambda: hook.requests, 30, "the redelivery")
    row = queue.get(job_id, "default")
    assert row is not None
    headers, _ = hook.requests[0]
    assert headers["webhook-id"] == f"msg_job{job_id}_succeeded_{int(row['finished_at'].timestamp() * 1000)}"
