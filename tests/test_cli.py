"""The operator CLI against a running stack (API under gunicorn, a worker, the stand-in)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from comfyq.stack import start_api
from tests.e2e_support import Stack
from tests.support.events_client import start_events

pytestmark = pytest.mark.slow

TOKEN = "cli-test-token-0123456789abcdefghijklmnop"


def run_cli(stack: Stack, api: str, *args: str, events: str = "") -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "COMFYQ_API_URL": api, "COMFYQ_API_TOKEN": TOKEN, "DATABASE_URL": stack.db_url,
           "COMFYQ_EVENTS_URL": events}
    return subprocess.run([sys.executable, "-m", "comfyq.cli", *args], env=env, capture_output=True, text=True,
                          timeout=180)


def test_submit_a_file_and_wait_for_every_job(stack: Stack, tmp_path: Path) -> None:
    stack.standin()
    proc, api = start_api(stack.log_dir, {"DATABASE_URL": stack.db_url, "COMFYQ_API_TOKEN": TOKEN}, workers=1)
    stack.processes.append(proc)
    stack.worker("w1")
    events_proc, events = start_events(stack.log_dir, {"DATABASE_URL": stack.db_url, "COMFYQ_API_TOKEN": TOKEN})
    stack.processes.append(events_proc)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# a comment\na red fox\n\na lighthouse at dawn\n"
                       '{"workflow": "txt2img", "params": {"prompt": "jsonl job", "steps": 3}, "priority": 9}\n')
    result = run_cli(stack, api, "submit", str(prompts), "--param", "steps=4", "--param", "width=64",
                     "--param", "height=64", "--wait", "--json", events=events)
    assert result.returncode == 0, result.stderr
    jobs = json.loads(result.stdout)
    assert [job["status"] for job in jobs] == ["succeeded"] * 3
    assert jobs[0]["params"]["steps"] == 4 and jobs[2]["priority"] == 9

    table = run_cli(stack, api, "submit", str(prompts), "--param", "steps=2", "--wait", events=events)
    assert table.returncode == 0 and "succeeded" in table.stdout and "done, 0 failed" in table.stderr

    status = run_cli(stack, api, "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["workers"]["alive"] == 1
    listed = run_cli(stack, api, "jobs", "--status", "succeeded", "--json")
    assert listed.returncode == 0 and len(json.loads(listed.stdout)) == 6
    one = run_cli(stack, api, "jobs", str(jobs[0]["id"]), "--json")
    assert json.loads(one.stdout)["id"] == jobs[0]["id"]
    described = run_cli(stack, api, "jobs", str(jobs[0]["id"]))  # for people: fields, then the outputs table
    assert described.returncode == 0 and not described.stdout.lstrip().startswith("{")
    assert "status        succeeded" in described.stdout and f"/jobs/{jobs[0]['id']}/outputs/0" in described.stdout
    workers = run_cli(stack, api, "workers", "--json")
    assert workers.returncode == 0 and json.loads(workers.stdout)[0]["jobs_done"] == 6

    assert run_cli(stack, api, "cancel", "999999").returncode == 4
    assert run_cli(stack, api, "retry", str(jobs[0]["id"])).returncode == 3  # succeeded: not retryable
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"workflow": "txt2img", "params": {"prompt": "x", "steps": 0}}\n')
    refused = run_cli(stack, api, "submit", str(bad))
    assert refused.returncode == 3 and "invalid_batch_items" in refused.stderr
    assert run_cli(stack, api, "submit", str(tmp_path / "missing.txt")).returncode == 2
    unreachable = subprocess.run([sys.executable, "-m", "comfyq.cli", "status", "--api-url", "http://127.0.0.1:9"],
                                 env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=60)
    assert unreachable.returncode == 3 and "cannot reach the API" in unreachable.stderr


def test_every_option_has_help_text() -> None:
    from comfyq.cli import build_parser  # noqa: PLC0415

    missing = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "comfyq")
    assert missing == []


def test_workers_without_an_api_says_so_and_starts_no_database(tmp_path: Path) -> None:
    """The issue: in a shell without DATABASE_URL, `comfyq workers` started an embedded Postgres and printed 'no
    workers'. It goes through the API like `comfyq status`; with none reachable it says which one it tried."""
    env = {"PATH": "/usr/bin:/bin", "COMFYQ_DATA_DIR": str(tmp_path / "var"), "COMFYQ_API_URL": "http://127.0.0.1:9"}
    for args in (("workers",), ("workers", "--json"), ("token", "list"), ("tenant", "list")):
        done = subprocess.run([sys.executable, "-m", "comfyq.cli", *args], env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 3 and done.stdout == "", args
        assert done.stderr.splitlines() == [
            "api: http://127.0.0.1:9 (COMFYQ_API_URL)",
            f"comfyq {' '.join(a for a in args if a != '--json')}: cannot reach the API at http://127.0.0.1:9: "
            "ConnectionError (is the API running there? set COMFYQ_API_URL or pass --api-url)"], done.stderr
    assert not (tmp_path / "var").exists()
