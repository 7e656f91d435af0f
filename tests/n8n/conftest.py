"""The n8n tests' fixtures: one real n8n per session (the pinned version in n8n/node_modules, its own user folder
and free ports), with the credentials and settings made from the environment and the committed workflows imported
as `make n8n` does, running with $env blocked and without comfyq's variables, against a database, an API, a Slack
Web API stand-in and an SMTP server of the session's own; its events_url is a free port on which a test that needs
the events process starts one. The monitor's schedule is every 2 s instead of every minute (its copy is patched
before import). Everything started here is stopped by PID in teardown."""

from __future__ import annotations

import email
import email.message
import email.policy
import json
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import requests
from aiosmtpd.controller import Controller

from comfyq import tokens
from comfyq.db import Database, connect_once
from comfyq.processes import ManagedProcess
from comfyq.stack import start_api
from n8n import n8nctl
from tests.conftest import SQL_DIR, scratch_database
from tests.e2e_support import free_port
from tests.http_servers import ThreadedServer

TENANT = "n8n"
MONITOR_CRON = "*/2 * * * * *"  # every 2 s instead of every minute, so alert tests stay short
SLACK_CHANNEL = "#comfyq-alerts"


class SlackStandIn:
    """Slack's Web API as far as the workflows use it: POST /api/chat.postMessage with a bot token answers
    {"ok": true} and is recorded; `refuse` makes it answer {"ok": false} (as Slack does for a bad channel or token),
    `down` makes it answer 503 (as an outage)."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.tokens: list[str] = []
        self.refuse = False
        self.down = False
        slack = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if slack.down:
                    answer, status = b"down", 503
                elif slack.refuse:
                    answer, status = b'{"ok": false, "error": "channel_not_found"}', 200
                else:
                    slack.posts.append(json.loads(body))
                    slack.tokens.append(self.headers.get("Authorization", ""))
                    answer, status = b'{"ok": true}', 200
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadedServer(Handler)
        self.url = f"http://{self.server.address}/api"

    def close(self) -> None:
        self.server.close()


class Mailbox:
    """An aiosmtpd handler that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        assert isinstance(message, email.message.EmailMessage)
        with self.lock:
            self.messages.append(message)
        return "250 OK"

    def received(self) -> list[email.message.EmailMessage]:
        with self.lock:
            return list(self.messages)

    def clear(self) -> None:
        with self.lock:
            self.messages.clear()


@dataclass
class N8n:
    """The session's n8n and what it talks to."""

    base_url: str
    env: dict[str, str]  # what n8n runs with: no COMFYQ_* variable
    config: dict[str, str]  # what the credentials and the settings workflow were made from
    db_url: str
    api_url: str
    events_url: str  # the settings' events_url: a port kept free for a test to start `comfyq events` on
    submitter_token: str
    webhook_key: str
    storage_dir: Path
    log_dir: Path
    slack: SlackStandIn
    mailbox: Mailbox
    process: ManagedProcess
    thresholds: dict[str, float | None] = field(default_factory=dict)
    started: list[ManagedProcess] = field(default_factory=list)  # every process to stop at the end

    def restart(self) -> None:
        """Stop n8n and start it again on the same user folder and port, as an operator's restart would."""
        self.process.stop(timeout=20)
        self.process = _start_n8n(self.env, self.log_dir, self.base_url)
        self.started.append(self.process)

    def webhook(self, path: str) -> str:
        return f"{self.base_url}/webhook/{path}"

    def execute(self, workflow_id: str) -> dict[str, Any]:
        """Run a workflow once now (`n8n execute`, beside the server), as its schedule would."""
        return n8nctl.execute(self.env, workflow_id)

    def slack_texts(self) -> list[str]:
        return [str(post["text"]) for post in list(self.slack.posts)]


def _clean_base_env(compile_cache: Path) -> dict[str, str]:
    """The test's environment without anything that configures n8n or the workflows from the developer's shell, and
    with the run's Node code cache."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("N8N_", "DB_", "COMFYQ_", "WEBHOOK_URL", "DATABASE_URL"))}
    env["NODE_COMPILE_CACHE"] = str(compile_cache)
    return env


@pytest.fixture(scope="session")
def node_compile_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Node's code cache (NODE_COMPILE_CACHE) for every n8n process of the run: each n8n CLI command boots n8n and
    compiles the same modules again, and a prepare is about a dozen of them; cached, a prepare takes a fifth less.
    Node checks each entry against its source, so n8n runs the same code."""
    return tmp_path_factory.mktemp("node-compile-cache")


@pytest.fixture(scope="session")
def n8n_db_url(server_url: str, template_db: str) -> Iterator[str]:
    """A migrated database for the whole n8n session (n8n's credential points at it for the session's life)."""
    with scratch_database(server_url, template_db) as url:
        yield url


@pytest.fixture(scope="session")
def n8n(tmp_path_factory: pytest.TempPathFactory, n8n_db_url: str, node_compile_cache: Path) -> Iterator[N8n]:
    assert n8nctl.is_installed(), "n8n/node_modules is not at the locked version: run `make n8n-install`"
    root = tmp_path_factory.mktemp("n8n")
    log_dir, storage_dir = root / "logs", root / "outputs"
    processes: list[ManagedProcess] = []
    slack = SlackStandIn()
    mailbox = Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        db = Database(n8n_db_url, SQL_DIR)
        try:
            submitter = tokens.create(db, TENANT, "submitter", "n8n tests").token
            admin = tokens.create(db, TENANT, "operator", "n8n tests").token  # cleanup: every tenant
            thresholds = {row["name"]: row["value"] for row in db.fetch_all("monitor_thresholds")}
        finally:
            db.close()
        api_proc, api_url = start_api(log_dir, {"DATABASE_URL": n8n_db_url, "COMFYQ_STORAGE_DIR": str(storage_dir)},
                                      workers=1)
        processes.append(api_proc)

        port = free_port()
        events_url = f"http://127.0.0.1:{free_port()}"
        webhook_key = secrets.token_urlsafe(24)
        env = n8nctl.n8n_env(root / "user", port=port, broker_port=free_port(),
                             base=_clean_base_env(node_compile_cache), extra={
            **n8nctl.postgres_env(n8n_db_url),
            "N8N_ENCRYPTION_KEY": secrets.token_hex(24),
            "COMFYQ_API_URL": api_url,
            "COMFYQ_EVENTS_URL": events_url,
            "COMFYQ_N8N_API_TOKEN": submitter,
            "COMFYQ_N8N_ADMIN_TOKEN": admin,
            "COMFYQ_N8N_WEBHOOK_KEY": webhook_key,
            "COMFYQ_SLACK_API_URL": slack.url,
            "COMFYQ_SLACK_BOT_TOKEN": "xoxb-test-" + secrets.token_hex(8),
            "COMFYQ_SLACK_CHANNEL": SLACK_CHANNEL,
            "COMFYQ_INSTALLATION_NAME": "comfyq-test",
            "COMFYQ_GRAFANA_URL": "http://grafana.test:3000",
            "COMFYQ_RUNBOOK_URL": "https://docs.test/n8n.md",
            "COMFYQ_N8N_OWNER_EMAIL": "owner@example.test",
            "COMFYQ_N8N_OWNER_PASSWORD": "owner-" + secrets.token_hex(8),
            "COMFYQ_SMTP_HOST": "127.0.0.1",
            "COMFYQ_SMTP_PORT": str(smtp.port),
            "COMFYQ_SMTP_SECURE": "false",
            "COMFYQ_SMTP_STARTTLS": "false",
            "COMFYQ_ALERT_EMAIL_FROM": "comfyq@example.test",
            "COMFYQ_ALERT_EMAIL_TO": "ops@example.test",
        })
        n8nctl.prepare(env, workflows_dir=_fast_monitor_copy(root / "workflows"))
        run_env = n8nctl.runtime_env(env)
        run_env.update(n8nctl.owner_env(env))
        assert run_env["N8N_BLOCK_ENV_ACCESS_IN_NODE"] == "true" and not any(k.startswith("COMFYQ_") for k in run_env)
        base_url = f"http://127.0.0.1:{port}"
        processes.append(_start_n8n(run_env, log_dir, base_url))
        yield N8n(base_url=base_url, env=run_env, config=env, db_url=n8n_db_url, api_url=api_url,
                  events_url=events_url, submitter_token=submitter, webhook_key=webhook_key,
                  storage_dir=storage_dir, log_dir=log_dir, slack=slack, mailbox=mailbox, process=processes[-1],
                  thresholds=thresholds, started=processes)
    finally:
        for process in reversed(processes):
            process.stop(timeout=20)
        smtp.stop()
        slack.close()


@dataclass
class Prepared:
    """A user folder that `n8nctl.prepare` made from the committed workflows, as `make n8n` makes one, once per
    session: a prepare is about a dozen n8n CLI runs (each one boots n8n), so the tests that need a freshly prepared
    instance of their own get a copy of this one instead, in the same state."""

    folder: Path
    extra: dict[str, str]  # the configuration it was prepared with (n8nctl.n8n_env's `extra`)
    compile_cache: Path

    def copy(self, folder: Path) -> dict[str, str]:
        """The prepared user folder copied to `folder`, and its configuration with ports of its own."""
        shutil.copytree(self.folder, folder)
        return n8nctl.n8n_env(folder, port=free_port(), broker_port=free_port(),
                              base=_clean_base_env(self.compile_cache), extra=self.extra)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory, server_url: str, template_db: str,
             node_compile_cache: Path) -> Iterator[Prepared]:
    """Against a migrated database of its own; the owner comes from the environment as in `make n8n`, and whatever
    a published workflow of a copy started as a server would send goes to a port where nothing listens."""
    assert n8nctl.is_installed(), "n8n/node_modules is not at the locked version: run `make n8n-install`"
    folder = tmp_path_factory.mktemp("n8n-prepared") / "user"
    nowhere = free_port()
    with scratch_database(server_url, template_db) as db_url:
        extra = {
            **n8nctl.postgres_env(db_url),
            "N8N_ENCRYPTION_KEY": secrets.token_hex(24),
            "COMFYQ_API_URL": f"http://127.0.0.1:{nowhere}",
            "COMFYQ_SLACK_API_URL": f"http://127.0.0.1:{nowhere}/api",
            "COMFYQ_SMTP_HOST": "127.0.0.1",
            "COMFYQ_SMTP_PORT": str(nowhere),
            "COMFYQ_N8N_OWNER_EMAIL": "owner@example.test",
            "COMFYQ_N8N_OWNER_PASSWORD": "owner-" + secrets.token_hex(8),
        }
        n8nctl.prepare(n8nctl.n8n_env(folder, port=free_port(), broker_port=free_port(),
                                      base=_clean_base_env(node_compile_cache), extra=extra))
        yield Prepared(folder, extra, node_compile_cache)


def _fast_monitor_copy(folder: Path) -> Path:
    """The committed workflows, the monitor's schedule set to MONITOR_CRON: the only change the tests make."""
    folder.mkdir()
    for path in n8nctl.WORKFLOWS_DIR.glob("*.json"):
        workflow = json.loads(path.read_text(encoding="utf-8"))
        for node in workflow["nodes"]:
            if workflow["id"] == "comfyqMonitor001" and node["type"] == "n8n-nodes-base.scheduleTrigger":
                node["parameters"]["rule"]["interval"][0]["expression"] = MONITOR_CRON
        (folder / path.name).write_text(json.dumps(workflow), encoding="utf-8")
    return folder


def _start_n8n(env: dict[str, str], log_dir: Path, base_url: str) -> ManagedProcess:
    proc = ManagedProcess("n8n", [str(n8nctl.N8N_BIN), "start"], env=env, log_path=log_dir / "n8n.log")
    try:
        proc.start(n8nctl.READY_LINE, timeout=120)
        n8nctl.wait_ready(base_url, timeout=60, alive=proc.running)
    except BaseException:
        proc.stop(timeout=20)
        raise
    return proc


@pytest.fixture
def fresh(n8n: N8n) -> Iterator[N8n]:
    """The session's n8n with an empty queue, the seeded thresholds, no active alert and nothing received."""
    _reset(n8n)
    try:
        yield n8n
    finally:
        _reset(n8n)


def _reset(n8n: N8n) -> None:
    conn = connect_once(n8n.db_url)
    try:
        with conn.cursor() as cur:
            cur.execute("DELETE FROM job_queue")
            cur.execute("DELETE FROM submissions")
            cur.execute("DELETE FROM workers")
            for name, value in n8n.thresholds.items():
                cur.execute("UPDATE monitor_thresholds SET value = %s WHERE name = %s", (value, name))
            cur.execute("UPDATE monitor_alert_state SET active = false, active_since = NULL, notifications = 0")
            cur.execute("DELETE FROM monitor_notifications")
        conn.commit()
    finally:
        conn.close()
    n8n.slack.posts.clear()
    n8n.slack.refuse = n8n.slack.down = False
    n8n.mailbox.clear()


def api_session(n8n: N8n) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {n8n.submitter_token}"
    return session
