"""The compose stack starts from the example with one command: `python3 -m comfyq.envfile` writes .env with
random secrets (standard library only), every variable docker-compose.yml requires is then set, and the n8n
tokens it generated are stored by the one-shot `comfyq token import`, idempotently."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from comfyq import tokens
from comfyq.db import Database
from comfyq.envfile import GENERATED, read_env
from comfyq.settings import PROJECT_ROOT, Settings

EXAMPLE = PROJECT_ROOT / ".env.example"
COMPOSE = PROJECT_ROOT / "docker-compose.yml"
REFERENCE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def run_init(env_file: Path) -> str:
    """As an operator runs it in a fresh checkout: -S keeps site-packages away, so only the standard library."""
    done = subprocess.run([sys.executable, "-S", "-m", "comfyq.envfile", "--env-file", str(env_file),
                           "--example", str(EXAMPLE)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def missing_required(env: dict[str, str]) -> list[str]:
    """Variables docker-compose.yml requires (${VAR:?...}) that the environment leaves empty."""
    return sorted({m["name"] for m in REFERENCE.finditer(COMPOSE.read_text())
                   if m["op"] in (":?", "?") and not env.get(m["name"])})


def test_init_writes_every_secret_compose_requires(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    assert missing_required(read_env(EXAMPLE)), "the example alone must not start the stack (placeholders)"
    out = run_init(env_file)
    env = read_env(env_file)
    assert missing_required(env) == []
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    for key in GENERATED:
        assert env[key] and not env[key].startswith("change-me") and env[key] not in out  # never printed
    assert env["COMFYQ_N8N_API_TOKEN"].startswith("cq_") and env["COMFYQ_CALLBACK_SECRET"].startswith("whsec_")
    assert Settings(metrics_token=env["COMFYQ_METRICS_TOKEN"]).metrics_token == env["COMFYQ_METRICS_TOKEN"]
    assert len({env[key] for key in GENERATED}) == len(GENERATED)  # each secret its own
    assert env["COMFYUI_URL"] == read_env(EXAMPLE)["COMFYUI_URL"]  # settings keep the example's value


def test_init_makes_a_readable_env_private_before_it_writes_secrets(tmp_path: Path) -> None:
    """`cp .env.example .env` then `comfyq init` wrote every generated secret into a file anyone could read."""
    env_file = tmp_path / ".env"
    env_file.write_text(EXAMPLE.read_text())
    env_file.chmod(0o644)
    run_init(env_file)
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600


def test_init_keeps_what_is_set_and_adds_what_is_new(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("POSTGRES_PASSWORD=mine\nMY_OWN=1\n")
    run_init(env_file)
    first = read_env(env_file)
    assert first["POSTGRES_PASSWORD"] == "mine" and first["MY_OWN"] == "1"
    run_init(env_file)
    assert read_env(env_file) == first  # a second run changes nothing


def test_generated_n8n_tokens_are_imported_once_and_then_accepted(db: Database, tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    run_init(env_file)
    env = read_env(env_file)
    secret = env["COMFYQ_N8N_API_TOKEN"]
    row, created = tokens.import_token(db, secret, "default", "submitter", "n8n")
    assert created and tokens.lookup(db, secret) is not None
    again, created_again = tokens.import_token(db, secret, "default", "submitter", "n8n")
    assert not created_again and again["id"] == row["id"]
    with pytest.raises(tokens.TokenConflict):
        tokens.import_token(db, secret, "default", "admin")  # the same secret cannot change its role
    with pytest.raises(ValueError):
        tokens.import_token(db, "short", "default", "submitter")


def test_the_cli_imports_from_an_environment_variable(db_url: str, tmp_path: Path) -> None:
    secret = tokens.generate()
    base = {k: v for k, v in os.environ.items() if not k.startswith("COMFYQ_")}

    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "comfyq.cli", "token", "import", *args], cwd=tmp_path,
                              env={**base, "DATABASE_URL": db_url, **env}, capture_output=True, text=True,
                              timeout=60)

    first = run("--from-env", "N8N_TOKEN", "--tenant", "default", "--role", "admin", N8N_TOKEN=secret)
    assert first.returncode == 0 and "stored" in first.stderr and secret not in first.stderr + first.stdout
    second = run("--from-env", "N8N_TOKEN", "--tenant", "default", "--role", "admin", N8N_TOKEN=secret)
    assert second.returncode == 0 and "already stored" in second.stderr
    assert run("--from-env", "N8N_TOKEN", "--tenant", "default", N8N_TOKEN="").returncode == 2
    assert run("--from-env", "N8N_TOKEN", "--tenant", "default", "--role", "submitter",
               N8N_TOKEN=secret).returncode == 2
    moved = run("--from-env", "N8N_TOKEN", "--tenant", "default", "--role", "operator", "--update-role",
                N8N_TOKEN=secret)  # the compose stack's cleanup token, stored as admin before operators existed
    assert moved.returncode == 0 and "role operator: role changed" in moved.stderr
    assert "role operator: already stored" in run("--from-env", "N8N_TOKEN", "--tenant", "default", "--role",
                                                  "operator", "--update-role", N8N_TOKEN=secret).stderr


def test_compose_imports_the_tokens_it_hands_to_n8n() -> None:
    text = COMPOSE.read_text()
    migrate = text[text.index("  migrate:"):text.index("  webhook-api:")]
    assert "comfyq migrate" in migrate
    for name in ("COMFYQ_N8N_API_TOKEN", "COMFYQ_N8N_ADMIN_TOKEN"):
        assert f"comfyq token import --from-env {name}" in migrate and f"{name}: ${{{name}:?" in migrate
