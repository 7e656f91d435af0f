"""`comfyq watch` and `comfyq submit --wait` against a real events process, API, worker and ComfyUI stand-in:
transitions printed in order with the job's exit code (succeeded, failed, expired), a watch that outlives a
kill -9 of the events process (it reconnects with Last-Event-ID and misses no transition), and a `submit --wait`
with no events process that says where it looked and leaves its jobs submitted once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from comfyq.db import Database
from comfyq.jobs import JobQueue, NewJob
from comfyq.processes import ManagedProcess
from comfyq.settings import PROJECT_ROOT
from comfyq.stack import start_api
from comfyq.workflows import load_workflows
from tests.e2e_support import Stack, free_port, wait_until
from tests.support.events_client import EVENTS_READY

pytestmark = pytest.mark.slow
TOKEN = "watch-test-token-0123456789abcdefghijklmnop"


class Cli:
    """`comfyq ...` as a child with its stdout and stderr in files; killed in close() if still running."""

    def __init__(self, tmp_path: Path, name: str, env: dict[str, str], *args: str) -> None:
        self.out, self.err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "comfyq.cli", *args], env=env, stdout=out, stderr=err)

    def lines(self) -> list[str]:
        return self.out.read_text().splitlines()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Events:
    """The events process on one fixed port, so a restart comes back at the same URL."""

    def __init__(self, tmp_path: Path, db_url: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {"DATABASE_URL": db_url, "COMFYQ_API_TOKEN": TOKEN, "COMFYQ_EVENTS_POLL_SECONDS": "0.2",
                    "COMFYQ_EVENTS_HEARTBEAT_SECONDS": "1", "COMFYQ_STORAGE_DIR": str(tmp_path / "outputs")}
        self.log_dir = tmp_path / "logs"
        self.proc: ManagedProcess | None = None

    def start(self) -> None:
        self.proc = ManagedProcess("comfyq-events", [sys.executable, "-m", "comfyq.cli", "events", "--bind",
                                                     f"127.0.0.1:{self.port}"],
                                   env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                                   log_path=self.log_dir / "comfyq-events.log")
        assert self.proc.start(EVENTS_READY, timeout=30) is not None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=10)


@pytest.fixture
def events(tmp_path: Path, db_url: str) -> Iterator[Events]:
    process = Events(tmp_path, db_url)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def clis() -> Iterator[list[Cli]]:
    started: list[Cli] = []
    try:
        yield started
    finally:
        for cli in started:
            cli.close()


def _cli_env(stack: Stack, events_url: str, api_url: str = "http://127.0.0.1:9") -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "COMFYQ_API_URL": api_url, "COMFYQ_API_TOKEN": TOKEN,
            "COMFYQ_EVENTS_URL": events_url, "DATABASE_URL": stack.db_url}


def _enqueue(queue: JobQueue, steps: int = 4, deadline: datetime | None = None) -> int:
    workflow = load_workflows(PROJECT_ROOT / "workflows")["txt2img"]
    params = workflow.resolve_params({"prompt": "a lighthouse", "steps": steps, "width": 64, "height": 64})
    return int(queue.enqueue(NewJob(graph=workflow.render(params), workflow="txt2img", params=params,
                                    deadline=deadline))["id"])


def _logged(db: Database, job_id: int) -> list[tuple[int, str]]:
    return [(int(r["id"]), str(r["event"])) for r in db.fetch_all(
        "events_between", {"tenant": "default", "after": 0, "upto": 2**62, "job_id": job_id, "limit": 1000})]


def _transitions(events: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(int(e["id"]), str(e["event"])) for e in events if e["event"] not in ("snapshot", "progress")]


def test_watch_prints_each_transition_in_order_and_exits_0_on_success(
        stack: Stack, db: Database, queue: JobQueue, events: Events, tmp_path: Path, clis: list[Cli]) -> None:
    stack.standin("--sampler-step-seconds", "0.1")
    job_id = _enqueue(queue, steps=6)
    env = _cli_env(stack, events.url)
    raw = Cli(tmp_path, "watch-json", env, "watch", str(job_id), "--json")
    people = Cli(tmp_path, "watch", env, "watch", str(job_id))
    clis += [raw, people]
    wait_until(lambda: raw.lines() and people.lines(), 20, "both snapshots")
    stack.worker("w1")
    assert raw.wait(60) == 0 and people.wait(10) == 0
    logged = _logged(db, job_id)
    streamed = raw.events()
    assert streamed[0]["event"] == "snapshot" and streamed[0]["job"]["status"] == "queued"
    assert _transitions(streamed) == [row for row in logged if row[1] != "queued"]
    assert any(e["event"] == "progress" for e in streamed)
    lines = people.lines()
    assert "snapshot  queued" in lines[0]
    claimed = next(line for line in lines if "  claimed  " in line)
    assert "running" in claimed and "attempt 1" in claimed and "  worker " in claimed
    assert any("%" in line and "progress  running" in line for line in lines)
    assert "  succeeded  succeeded" in lines[-1]


def test_watch_of_a_failed_job_exits_with_the_failed_code(
        stack: Stack, queue: JobQueue, events: Events, tmp_path: Path, clis: list[Cli]) -> None:
    stack.standin("--fail", "execution_error")
    job_id = _enqueue(queue)
    watch = Cli(tmp_path, "watch", _cli_env(stack, events.url), "watch", str(job_id))
    clis.append(watch)
    wait_until(lambda: watch.lines(), 20, "the snapshot")
    stack.worker("w1")
    assert watch.wait(60) == 5
    assert "  failed  failed" in watch.lines()[-1] and "error " in watch.lines()[-1]
    missing = Cli(tmp_path, "missing", _cli_env(stack, events.url), "watch", "999999")
    clis.append(missing)
    assert missing.wait(30) == 4


def test_watch_of_a_job_whose_deadline_passed_exits_with_the_expired_code(
        stack: Stack, db: Database, queue: JobQueue, events: Events, tmp_path: Path, clis: list[Cli]) -> None:
    """Nothing expires a job but a worker's maintenance tick, and a claim skips a job past its deadline: the job
    stays queued while no worker runs, and the first worker to start expires it instead of running it."""
    stack.standin()
    deadline = datetime.now(UTC) + timedelta(seconds=2)
    job_id = _enqueue(queue, deadline=deadline)
    env = _cli_env(stack, events.url)
    raw = Cli(tmp_path, "watch-json", env, "watch", str(job_id), "--json")
    people = Cli(tmp_path, "watch", env, "watch", str(job_id))
    clis += [raw, people]
    wait_until(lambda: raw.lines() and people.lines(), 20, "both snapshots")
    wait_until(lambda: datetime.now(UTC) > deadline + timedelta(seconds=0.5), 10, "the deadline")
    time.sleep(1)  # a few of the events process's polls: nothing happens to the job without a worker
    assert (queue.get(job_id, "default") or {}).get("status") == "queued"
    assert raw.proc.poll() is None and people.proc.poll() is None
    stack.worker("w1")
    assert raw.wait(30) == 7, raw.err.read_text()
    assert people.wait(10) == 7, people.err.read_text()
    job = queue.get(job_id, "default") or {}
    assert job["status"] == "expired" and job["error"]["type"] == "deadline_exceeded" and job["attempts"] == 0
    logged = _logged(db, job_id)
    assert [event for _, event in logged] == ["queued", "expired"]  # never claimed
    assert _transitions(raw.events()) == logged[1:]
    lines = people.lines()
    assert "snapshot  queued" in lines[0] and "  expired  expired" in lines[-1] and len(lines) == 2
    assert "error deadline_exceeded: deadline" in lines[-1], "the stream carries why the job expired"


def test_watch_resumes_after_the_events_process_is_killed_and_misses_nothing(
        stack: Stack, db: Database, queue: JobQueue, events: Events, tmp_path: Path, clis: list[Cli]) -> None:
    """The events process dies (SIGKILL) right after the snapshot; the job is claimed and finishes while it is
    down; a new one on the same port replays the missed transitions from Last-Event-ID."""
    stack.standin()
    job_id = _enqueue(queue)
    watch = Cli(tmp_path, "watch", _cli_env(stack, events.url), "watch", str(job_id), "--json",
                "--give-up-after", "60")
    clis.append(watch)
    wait_until(lambda: watch.lines(), 20, "the snapshot")
    assert events.proc is not None
    events.proc.kill()
    stack.worker("w1")
    wait_until(lambda: (queue.get(job_id, "default") or {}).get("status") == "succeeded", 60, "the job's end")
    wait_until(lambda: "reconnecting" in watch.err.read_text(), 20, "a failed reconnect")
    assert watch.proc.poll() is None, "the watch waits for the events process"
    events.start()
    assert watch.wait(60) == 0, watch.err.read_text()
    streamed = watch.events()
    assert [e["event"] for e in streamed].count("snapshot") == 1
    assert _transitions(streamed) == [row for row in _logged(db, job_id) if row[1] != "queued"]


def test_watch_gives_up_after_the_configured_time_without_contact(
        stack: Stack, queue: JobQueue, tmp_path: Path, clis: list[Cli]) -> None:
    job_id = _enqueue(queue)
    watch = Cli(tmp_path, "watch", _cli_env(stack, f"http://127.0.0.1:{free_port()}"), "watch", str(job_id),
                "--give-up-after", "2")
    clis.append(watch)
    assert watch.wait(30) == 8
    assert "no contact with the events process" in watch.err.read_text()


def test_submit_wait_follows_the_stream_until_the_job_ends(
        stack: Stack, events: Events, tmp_path: Path, clis: list[Cli]) -> None:
    stack.standin()
    proc, api = start_api(stack.log_dir, {"DATABASE_URL": stack.db_url, "COMFYQ_API_TOKEN": TOKEN}, workers=1)
    stack.processes.append(proc)
    stack.worker("w1")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\n")
    env = _cli_env(stack, events.url, api)
    one = Cli(tmp_path, "submit-one", env, "submit", str(prompts), "--param", "steps=3", "--wait", "60", "--json")
    clis.append(one)
    assert one.wait(90) == 0, one.err.read_text()
    [job] = json.loads(one.out.read_text())
    assert job["status"] == "succeeded" and job["outputs"]
    prompts.write_text("a red fox\na lighthouse\n")
    two = Cli(tmp_path, "submit-two", env, "submit", str(prompts), "--param", "steps=3", "--wait")
    clis.append(two)
    assert two.wait(90) == 0, two.err.read_text()
    err = two.err.read_text()
    assert err.count("  succeeded  succeeded") + err.count("  snapshot  succeeded") == 2  # live, or over already
    assert "2/2 done, 0 failed" in err and "succeeded" in two.out.read_text()
    no_events = Cli(tmp_path, "no-events", {**env, "COMFYQ_EVENTS_URL": ""}, "watch", str(job["id"]))
    clis.append(no_events)
    assert no_events.wait(30) == 3  # the API alone has no stream routes: said so, with what to set
    assert "is the events process there? set COMFYQ_EVENTS_URL" in no_events.err.read_text()


def test_submit_wait_without_an_events_process_names_the_url_and_keeps_the_jobs_submitted(
        stack: Stack, sql: Any, tmp_path: Path, clis: list[Cli]) -> None:
    """A real API and no events process, two ways: COMFYQ_EVENTS_URL where nothing listens (given up after
    --give-up-after), and unset, so the streams are asked of the API, which has no such routes (at once). Both
    exit 8 having said which URL was tried and how to set it, and print the ids of the jobs, which are queued,
    each once: the command must not invite a second submission."""
    proc, api = start_api(stack.log_dir, {"DATABASE_URL": stack.db_url, "COMFYQ_API_TOKEN": TOKEN}, workers=1)
    stack.processes.append(proc)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\na lighthouse\n")
    nowhere = f"http://127.0.0.1:{free_port()}"
    lost = Cli(tmp_path, "lost", _cli_env(stack, nowhere, api), "submit", str(prompts), "--param", "steps=3",
               "--wait", "--give-up-after", "2", "--json")
    clis.append(lost)
    assert lost.wait(60) == 8, lost.err.read_text()
    err = lost.err.read_text()
    ids = [job["id"] for job in json.loads(lost.out.read_text())]
    assert len(ids) == 2 and ids[1] == ids[0] + 1
    assert f"submitted 2 jobs: ids {ids[0]}-{ids[1]}" in err
    assert "no contact with the events process" in err
    assert f"looked for at {nowhere} (COMFYQ_EVENTS_URL)" in err and "pass --events-url" in err
    assert "were submitted and run without this wait; do not submit them again" in err

    prompts.write_text("a red fox\n")
    no_events = Cli(tmp_path, "no-events", _cli_env(stack, "", api), "submit", str(prompts),
                    "--param", "steps=3", "--wait")
    clis.append(no_events)
    assert no_events.wait(30) == 8, no_events.err.read_text()
    err = no_events.err.read_text()
    assert f"no job stream at {api}/jobs/" in err
    assert f"looked for at {api} (the API's URL)" in err and "set COMFYQ_EVENTS_URL or pass --events-url" in err
    [line] = no_events.lines()
    assert line.startswith("submitted 1 jobs: ids ")
    third = int(line.rsplit(" ", 1)[1])
    sql.execute("SELECT id, status FROM job_queue ORDER BY id")
    assert sql.fetchall() == [(i, "queued") for i in [*ids, third]]
