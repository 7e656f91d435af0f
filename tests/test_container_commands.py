"""Each comfyq container's command, as docker-compose.yml and the Dockerfiles state it, runs from the wheel.

No Docker engine runs here, so this plays the containers out on the host: a virtualenv holding the wheel (what the
Dockerfiles' `pip install .` puts in the image), a folder laid out as the Dockerfile's COPY lines lay out /app,
the Dockerfile's WORKDIR, the service's environment from docker-compose.yml interpolated with a .env that
`comfyq init` wrote, and each service's command and health check exactly as written there. Only what names other
containers changes: the database URL (a scratch database), the S3 endpoint (a real S3 API server), ComfyUI (the
stand-in) and the ports. So the chain init -> migrate (schema + token import) -> API -> worker is proven end to
end: a job submitted with the n8n token that init generated is run by the worker and stored in S3."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from comfyq import envfile
from comfyq.processes import ManagedProcess
from comfyq.settings import PROJECT_ROOT
from comfyq.stack import WORKER_READY, start_standin
from tests.conftest import scratch_database
from tests.e2e_support import free_port, wait_until
from tests.s3_server import S3Server, unique_bucket

pytestmark = pytest.mark.slow

VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${X}, ${X:-default} and ${X:?error} against the .env values, failing as compose would."""
    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if env.get(name):
            return env[name]
        if op == ":?":
            raise AssertionError(f"compose would refuse to start: {name}: {arg}")
        return arg if op == ":-" else ""
    return VARIABLE.sub(one, value)


@dataclass
class Image:
    """What a Dockerfile makes of the wheel: its WORKDIR, CMD and HEALTHCHECK, and the folders it copies."""

    workdir: str
    cmd: list[str]
    healthcheck: list[str]
    copies: list[tuple[str, str]]

    @classmethod
    def read(cls, dockerfile: Path) -> Image:
        text = dockerfile.read_text().replace("\\\n", " ")  # continuation lines make one instruction
        workdir = re.findall(r"^WORKDIR (\S+)$", text, re.MULTILINE)[-1]
        cmd = json.loads(re.findall(r"^CMD (\[.*\])$", text, re.MULTILINE)[-1])
        health = re.search(r"^HEALTHCHECK .*?CMD (.*)$", text, re.MULTILINE)
        assert health is not None, f"{dockerfile} has no HEALTHCHECK"
        check = health.group(1).strip()
        healthcheck = json.loads(check) if check.startswith("[") else ["sh", "-c", check]
        copies = re.findall(r"^COPY (\S+) (\S+)$", text, re.MULTILINE)
        return cls(workdir, cmd, healthcheck, copies)


class Container:
    """One service played out on the host: its /app folder, environment and commands."""

    def __init__(self, compose: dict[str, Any], name: str, dotenv: dict[str, str], bin_dir: Path, root: Path,
                 overrides: dict[str, str]) -> None:
        self.name = name
        self.service = compose["services"][name]
        self.image = Image.read(PROJECT_ROOT / self.service["build"]["dockerfile"])
        self.app = root / name / "app"
        for source, dest in self.image.copies:  # the image's /app, minus what pip installs from the wheel
            if (PROJECT_ROOT / source).is_dir() and source not in ("comfyq", "sql", "workflows"):
                shutil.copytree(PROJECT_ROOT / source, self.app / dest, dirs_exist_ok=True)
        self.app.mkdir(parents=True, exist_ok=True)
        self.cwd = self.app / Path(self.image.workdir).relative_to("/app")
        self.cwd.mkdir(parents=True, exist_ok=True)
        declared = {key: interpolate(str(value), dotenv) for key, value in self.service["environment"].items()}
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("COMFYQ_") and k not in (
            "PYTHONPATH", "DATABASE_URL", "VIRTUAL_ENV")}, **declared, **overrides,
            "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
        self.declared = declared

    @property
    def command(self) -> list[str]:
        return [str(part) for part in self.service.get("command", self.image.cmd)]

    @property
    def healthcheck(self) -> list[str]:
        test = self.service.get("healthcheck", {}).get("test")
        if test is None:
            return self.image.healthcheck
        return ["sh", "-c", test[1]] if test[0] == "CMD-SHELL" else list(test[1:])

    def run(self, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=timeout)

    def start(self, argv: list[str], ready: str) -> ManagedProcess:
        proc = ManagedProcess(self.name, argv, env=self.env, log_path=self.cwd.parent / f"{self.name}.log",
                              cwd=self.cwd)
        proc.start(ready, timeout=60)
        return proc


@pytest.fixture
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text()))


@pytest.fixture
def dotenv(tmp_path: Path) -> dict[str, str]:
    """The .env that `comfyq init` writes from .env.example (fresh secrets), as compose reads it."""
    target = tmp_path / ".env"
    assert envfile.main(["--example", str(PROJECT_ROOT / ".env.example"), "--env-file", str(target)]) == 0
    return envfile.read_env(target)


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    server = S3Server(tmp_path / "moto").start()
    try:
        yield server
    finally:
        server.stop()


def test_every_comfyq_container_command_runs_from_the_wheel(
        compose: dict[str, Any], dotenv: dict[str, str], installed: Path, s3: S3Server, tmp_path: Path,
        server_url: str) -> None:
    comfyq_services = [name for name, service in compose["services"].items()
                       if str(service.get("image", "")).startswith("comfyq-")]
    assert sorted(comfyq_services) == ["events", "migrate", "webhook-api", "worker"]
    standin, comfyui_url = start_standin(tmp_path, tmp_path / "comfyui-out")
    processes: list[ManagedProcess] = [standin]
    try:
        with scratch_database(server_url) as database_url:
            bucket = unique_bucket()
            hosts = {"DATABASE_URL": database_url, "COMFYQ_S3_ENDPOINT": s3.endpoint, "COMFYQ_S3_BUCKET": bucket,
                     "COMFYQ_S3_ACCESS_KEY": s3.access_key, "COMFYQ_S3_SECRET_KEY": s3.secret_key}

            def container(name: str, **extra: str) -> Container:
                return Container(compose, name, dotenv, installed, tmp_path, {**hosts, **extra})

            # migrate: the schema and the n8n tokens from .env; a restarted stack runs it again harmlessly.
            migrate = container("migrate")
            for _ in range(2):
                done = migrate.run(migrate.command)
                assert done.returncode == 0, done.stderr

            # webhook-api: its CMD and its health check, on a free port instead of 8000.
            port = free_port()
            api = container("webhook-api")
            argv = [part.replace("0.0.0.0:8000", f"127.0.0.1:{port}") for part in api.command]
            processes.append(api.start(argv, r"Listening at: http://"))
            check = [part.replace(":8000", f":{port}") for part in api.healthcheck]
            wait_until(lambda: api.run(check, timeout=30).returncode == 0, 30, "the API's health check to pass")
            submitted = requests.post(f"http://127.0.0.1:{port}/jobs", timeout=10,
                                      headers={"Authorization": f"Bearer {dotenv['COMFYQ_N8N_API_TOKEN']}"},
                                      json={"workflow": "txt2img", "params": {"prompt": "a lighthouse"}})
            assert submitted.status_code == 202, submitted.text
            job_id = submitted.json()["id"]

            # events: its command and health check on a free port; it will answer a wait for the job below.
            events_port = free_port()
            events = container("events")
            argv = [part.replace("0.0.0.0:8001", f"127.0.0.1:{events_port}") for part in events.command]
            processes.append(events.start(argv, r"comfyq events listening on http://"))
            check = [part.replace(":8001", f":{events_port}") for part in events.healthcheck]
            assert events.run(check, timeout=30).returncode == 0

            # worker: `python worker.py` in /app/worker, its health check, then the job, stored in S3.
            worker = container("worker", COMFYUI_URL=comfyui_url, COMFYQ_METRICS_PORT=str(free_port()))
            assert worker.command == ["python", "worker.py"] and (worker.cwd / "worker.py").is_file()
            health = worker.run(worker.healthcheck, timeout=60)
            assert health.returncode == 0, health.stderr
            worker_proc = worker.start(worker.command, WORKER_READY)
            processes.append(worker_proc)

            def job() -> dict[str, Any]:
                answer = requests.get(f"http://127.0.0.1:{port}/jobs/{job_id}", timeout=10,
                                      headers={"Authorization": f"Bearer {dotenv['COMFYQ_API_TOKEN']}"})
                assert answer.status_code == 200, answer.text
                return dict(answer.json())

            waited = requests.get(f"http://127.0.0.1:{events_port}/jobs/{job_id}?wait=60", timeout=90,
                                  headers={"Authorization": f"Bearer {dotenv['COMFYQ_API_TOKEN']}"})
            assert waited.status_code == 200 and waited.json()["status"] == "succeeded", waited.text
            final = wait_until(lambda: (j := job())["status"] in ("succeeded", "failed") and j, 60, "the job")
            assert final["status"] == "succeeded", final
            assert {k: v for k, v in waited.json().items() if k != "outputs"} == {
                k: v for k, v in final.items() if k != "outputs"}, "the wait answers the API's JSON"
            assert final["outputs"] and all(o["location"].startswith(f"s3://{bucket}/") for o in final["outputs"])
            worker_proc.signal(signal.SIGTERM)  # `docker compose stop`: SIGTERM (STOPSIGNAL), a clean exit
            assert worker_proc.wait(30) == 0
    finally:
        for proc in reversed(processes):
            proc.stop(timeout=15)
