"""Outages are not job failures: real worker processes against a real stand-in and a real Postgres while ComfyUI
is killed and restarted, hangs or goes silent, and while the worker is told to stop during an outage. Each test
counts jobs lost, failed, stuck, run twice and attempts spent, and reports them as figures."""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from comfyq.jobs import JobQueue, NewJob
from tests.e2e_support import Stack, wait_until
from tests.tmpfs import mounted_tmpfs

pytestmark = pytest.mark.slow


def tiny(color: int) -> dict[str, Any]:
    """A graph whose output differs per job, so ComfyUI's cache never replays one."""
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1,
                                                          "color": color}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}}}


def counts(sql: Any) -> dict[str, int]:
    """The outcome of a run, from the database: every figure the fault tests assert on."""
    sql.execute("SELECT status, count(*) FROM job_queue GROUP BY status")
    by_status = dict(sql.fetchall())
    sql.execute("SELECT coalesce(sum(attempts - 1), 0) FROM job_queue WHERE status = 'succeeded'")
    extra_attempts = int(sql.fetchone()[0])
    sql.execute("SELECT count(*) FROM (SELECT job_id FROM job_logs WHERE event = 'succeeded' "
                "GROUP BY job_id HAVING count(*) > 1) twice")
    recorded_twice = int(sql.fetchone()[0])
    sql.execute("SELECT count(*) FROM job_queue WHERE status = 'succeeded' AND jsonb_array_length(outputs) <> 1")
    wrong_outputs = int(sql.fetchone()[0])
    sql.execute("SELECT count(*) FROM job_logs WHERE event = 'resubmitted'")
    resubmitted = int(sql.fetchone()[0])
    return {"succeeded": by_status.get("succeeded", 0), "failed": by_status.get("failed", 0),
            "queued": by_status.get("queued", 0), "running": by_status.get("running", 0),
            "attempts_spent_on_outages": extra_attempts, "recorded_twice": recorded_twice,
            "succeeded_without_one_output": wrong_outputs, "resubmitted": resubmitted}


def succeeded(sql: Any) -> int:
    sql.execute("SELECT count(*) FROM job_queue WHERE status = 'succeeded'")
    return int(sql.fetchone()[0])


def test_comfyui_killed_five_times_loses_nothing_and_spends_no_attempt(stack: Stack, queue: JobQueue, sql: Any,
                                                                     record_figure: Any) -> None:
    """kill -9 of ComfyUI five times during a 1,000-job run with 2 workers, default outage settings. The port
    refuses while the new one starts, as the real ComfyUI loading its nodes: 6-13 s after the last kill (a real
    ComfyUI's restart, which the workers' backoff of 1, 2, 4, 8 s has to outlast), 1-2 s after the others."""
    total = 1000
    proc, url = stack.standin("--node-seconds", "0.01")
    port = int(url.rsplit(":", 1)[1])
    queue.enqueue_many([NewJob(graph=tiny(i % 256), max_attempts=1) for i in range(total)])
    workers = [stack.worker(f"w{n}") for n in (1, 2)]
    started = time.monotonic()
    for kill in range(5):
        wait_until(lambda k=kill: succeeded(sql) >= (k + 1) * total // 7, 180, f"progress before kill {kill + 1}")
        proc.kill()
        stack.processes.remove(proc)
        proc, _ = stack.standin("--node-seconds", "0.01", "--startup-delay", "6-13" if kill == 4 else "1-2",
                                port=port, name=f"comfyui-standin-{kill + 2}")
    wait_until(lambda: succeeded(sql) == total, 300, "every job to succeed")
    elapsed = time.monotonic() - started
    assert all(w.running() for w in workers), "a worker exited during the outages"
    result = counts(sql)
    record_figure("comfyui killed 5x, 1000 jobs, 2 workers", f"{result} in {elapsed:.0f}s")
    assert result["failed"] == 0 and result["queued"] == 0 and result["running"] == 0
    assert result["attempts_spent_on_outages"] == 0
    assert result["recorded_twice"] == 0 and result["succeeded_without_one_output"] == 0
    assert [w.stop(timeout=15) for w in workers] == [0, 0]


def test_silent_websocket_every_job_finishes_through_history(stack: Stack, queue: JobQueue, sql: Any) -> None:
    """The socket stays open but carries no event: every prompt's end is still found through /history (looked up
    after COMFYQ_HISTORY_POLL_SECONDS without an event: 0.5 s here instead of 2, so that 20 jobs take seconds)."""
    stack.standin("--ws-silent")
    queue.enqueue_many([NewJob(graph=tiny(i)) for i in range(20)])
    assert stack.worker("w1", "--burst", history_poll_seconds="0.5").wait(120) == 0
    result = counts(sql)
    assert result["succeeded"] == 20 and result["attempts_spent_on_outages"] == 0


def test_hung_comfyui_is_an_outage_not_a_failure(stack: Stack, queue: JobQueue, sql: Any,
                                                 record_figure: Any) -> None:
    """SIGSTOP of ComfyUI for 10 s mid-run: detected within the dependency timeout, no attempt spent, and the
    run finishes once it resumes."""
    proc, _ = stack.standin("--node-seconds", "0.05")
    queue.enqueue_many([NewJob(graph=tiny(i), max_attempts=1) for i in range(60)])
    worker = stack.worker("w1", dependency_timeout_seconds="1", outage_backoff_max_seconds="2")
    wait_until(lambda: succeeded(sql) >= 10, 60, "jobs before the hang")
    mark = len(worker.output())
    proc.signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        worker.wait_for(r"comfyui unavailable", timeout=10, since=mark)
        detected = time.monotonic() - frozen_at
        time.sleep(max(0.0, 10 - detected))
    finally:
        proc.signal(signal.SIGCONT)
    wait_until(lambda: succeeded(sql) == 60, 120, "every job to succeed after the hang")
    result = counts(sql)
    record_figure("comfyui SIGSTOP 10 s: detected after", f"{detected:.1f}s (dependency timeout 1 s)")
    assert detected < 5
    assert result["failed"] == 0 and result["attempts_spent_on_outages"] == 0 and result["recorded_twice"] == 0
    assert worker.running()


def test_double_sigterm_while_comfyui_is_down_exits_within_5s_and_hands_jobs_back(
        stack: Stack, queue: JobQueue, sql: Any, record_figure: Any) -> None:
    proc, _ = stack.standin("--node-seconds", "5")
    ids = [row["id"] for row in queue.enqueue_many([NewJob(graph=tiny(i)) for i in range(3)])]
    worker = stack.worker("w1")
    wait_until(lambda: sum(1 for i in ids if (queue.get(i, "default") or {}).get("status") == "running") == 2, 30,
               "two jobs claimed (one running, one prefetched)")
    proc.kill()
    stack.processes.remove(proc)
    worker.wait_for(r"comfyui unavailable", timeout=15)
    worker.signal(signal.SIGTERM)
    time.sleep(0.3)
    worker.signal(signal.SIGTERM)
    second = time.monotonic()
    code = worker.wait(10)
    took = time.monotonic() - second
    record_figure("double SIGTERM with ComfyUI down: exit after", f"{took:.2f}s (code {code})")
    assert code == 0 and took < 5
    rows = [queue.get(i, "default") for i in ids]
    assert [r["status"] for r in rows if r] == ["queued"] * 3
    assert all(r is not None and r["attempts"] == 0 for r in rows)  # handed back, no attempt spent


def test_storage_read_only_then_full_fails_no_job(stack: Stack, queue: JobQueue, sql: Any, tmp_path: Path,
                                                 record_figure: Any) -> None:
    """Output storage read-only for 15 s, then full for 10 s, during an 800-job run: the outputs wait in ComfyUI,
    storing is retried, and no job fails or succeeds without its file. Each outage outlasts two 5 s leases and the
    backoff's 5 s ceiling, so storing is tried again at the ceiling while the leases are kept."""
    total = 800
    with mounted_tmpfs(tmp_path / "storage", size="32m") as disk:
        stack.storage_dir = disk.path
        stack.standin("--node-seconds", "0.01")
        queue.enqueue_many([NewJob(graph=tiny(i % 256), max_attempts=1) for i in range(total)])
        worker = stack.worker("w1", outage_backoff_max_seconds="5")
        wait_until(lambda: succeeded(sql) >= 100, 120, "jobs before the outage")
        disk.read_only()
        try:
            worker.wait_for(r"storage unavailable", timeout=20)
            time.sleep(15)
        finally:
            disk.writable()
        filler = disk.path / "filler"
        with filler.open("wb") as handle:  # fill the disk to the last byte: every write now fails with ENOSPC
            with contextlib.suppress(OSError):
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
        during_full = succeeded(sql)
        time.sleep(10)
        assert succeeded(sql) == during_full  # nothing could be stored meanwhile
        filler.unlink()
        wait_until(lambda: succeeded(sql) == total, 240, "every job after the storage outage")
        result = counts(sql)
        sql.execute("SELECT outputs FROM job_queue WHERE status = 'succeeded'")
        missing = sum(1 for (outputs,) in sql.fetchall() for o in outputs
                      if not (disk.path / o["key"]).is_file() or (disk.path / o["key"]).stat().st_size != o["size"])
        sql.execute("SELECT count(*) FROM job_logs WHERE event = 'outage' AND details ->> 'dependency' = 'storage'")
        outage_events = int(sql.fetchone()[0])
        assert worker.stop(timeout=15) == 0
    record_figure("storage read-only 15 s then full 10 s, 800 jobs",
                  f"{result}; outputs missing: {missing}; outage events: {outage_events}")
    assert result["failed"] == 0 and result["succeeded"] == total and result["attempts_spent_on_outages"] == 0
    assert missing == 0 and outage_events >= 1


def test_a_claim_whose_answer_was_lost_is_handed_back_without_spending_an_attempt(
        stack: Stack, queue: JobQueue) -> None:
    """The database holds a claim of this worker that the worker never heard of (the connection dropped while the
    claim committed, or an earlier run with the same fixed id crashed): the worker hands it back at once, then runs
    it, instead of leaving it to a lease expiry and a rescue that spends an attempt."""
    stack.standin()
    job_id = queue.enqueue(NewJob(graph=tiny(5)))["id"]
    orphan = queue.claim("w-fixed")  # committed, but no worker process knows about it
    assert orphan is not None and orphan.id == job_id
    stack.worker("w1", worker_id="w-fixed", lease_seconds="60")
    wait_until(lambda: (queue.get(job_id, "default") or {}).get("status") == "succeeded", 30, "the job to run")
    row = queue.get(job_id, "default")
    assert row is not None and row["attempts"] == 1
    assert [r["event"] for r in queue.logs(job_id)] == ["queued", "claimed", "released", "claimed", "succeeded"]
