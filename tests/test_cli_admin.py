"""The admin commands end to end: the first token written straight into the database (`token create
--database`), then workers, token, tenant (and its callback secrets) and retention through a real API under
gunicorn, from a shell that has no DATABASE_URL at all. Each command names the API it talks to on stderr, prints a
table for people and JSON with --json, and a tenant's admin is refused what belongs to other tenants or to
operators."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from comfyq.db import Database
from comfyq.stack import start_api
from tests.e2e_support import Stack
from tests.test_admin_api import finished_job, job_ids

pytestmark = pytest.mark.slow


def comfyq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "comfyq.cli", *args], env={"PATH": "/usr/bin:/bin", **env},
                          capture_output=True, text=True, timeout=120)
    if "--database" not in args:
        assert [line for line in done.stderr.splitlines() if line.startswith("api: ")] == [
            f"api: {env['COMFYQ_API_URL']} (COMFYQ_API_URL)"], done.stderr  # one line naming the API
    return done


def ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, done.stderr
    return done


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(done).stdout)


def test_bootstrap_then_every_admin_command_through_the_api(stack: Stack, db: Database, sql: Any) -> None:
    proc, api = start_api(stack.log_dir, {"DATABASE_URL": stack.db_url, "COMFYQ_TOKEN_CACHE_SECONDS": "0",
                                          "COMFYQ_STORAGE_DIR": str(stack.storage_dir)}, workers=1)
    stack.processes.append(proc)

    first = ok(comfyq({"DATABASE_URL": stack.db_url}, "token", "create", "--database", "--tenant", "ops",
                      "--role", "operator", "--description", "first"))
    assert first.stderr.startswith("database: postgresql://") and "role operator" in first.stderr
    operator = {"COMFYQ_API_URL": api, "COMFYQ_API_TOKEN": first.stdout.strip()}  # no DATABASE_URL from here on

    acme = as_json(comfyq(operator, "tenant", "set", "acme", "--max-queued-jobs", "100", "--rate-per-second", "5",
                          "--json"))
    assert (acme["name"], acme["max_queued_jobs"], acme["rate_per_second"], acme["rate_burst"]) == (
        "acme", 100, 5.0, None)
    table = ok(comfyq(operator, "tenant", "set", "acme", "--allow-raw-graphs")).stdout
    assert table.split()[:2] == ["name", "allow_raw_graphs"] and "acme" in table and "True" in table
    assert {t["name"] for t in as_json(comfyq(operator, "tenant", "list", "--json"))} >= {"acme", "ops", "default"}

    acme_admin_secret = ok(comfyq(operator, "token", "create", "--tenant", "acme", "--role", "admin")).stdout.strip()
    assert acme_admin_secret.startswith("cq_")
    made = as_json(comfyq(operator, "token", "create", "--tenant", "other", "--json"))
    assert (made["tenant"], made["role"]) == ("other", "submitter") and made["token"].startswith(made["token_prefix"])
    acme_admin = {"COMFYQ_API_URL": api, "COMFYQ_API_TOKEN": acme_admin_secret}

    mine = as_json(comfyq(acme_admin, "token", "list", "--json"))
    assert [(t["tenant"], t["role"]) for t in mine] == [("acme", "admin")]
    listing = ok(comfyq(operator, "token", "list")).stdout
    assert listing.split()[:4] == ["id", "tenant", "role", "token_prefix"] and made["token_prefix"] in listing
    assert acme_admin_secret not in listing
    for args in (("token", "list", "--tenant", "other"), ("token", "create", "--role", "operator"),
                 ("token", "revoke", made["token_prefix"]), ("tenant", "list"), ("workers",),
                 ("retention", "--older-than-days", "30", "--tenant", "other")):
        refused = comfyq(acme_admin, *args)
        assert refused.returncode in (3, 4) and ("403 forbidden" in refused.stderr or "404 not_found" in
                                                 refused.stderr), (args, refused.stderr)

    db.execute("register_worker", {"id": "gpu-1", "host": "gpu-host", "pid": 7, "comfyui_url": "http://gpu:8188"})
    [worker] = as_json(comfyq(operator, "workers", "--json"))
    assert (worker["id"], worker["comfyui_url"], worker["dependencies_down"]) == ("gpu-1", "http://gpu:8188", [])
    workers = ok(comfyq(operator, "workers")).stdout
    assert workers.split()[0] == "id" and "heartbeat_age" in workers and "gpu-host" in workers

    acme_old, other_old = finished_job(db, "acme", sql), finished_job(db, "other", sql)
    removed = as_json(comfyq(acme_admin, "retention", "--older-than-days", "30", "--json"))
    assert (removed["jobs_deleted"], removed["scope"]) == (1, "acme") and job_ids(sql) == {other_old}
    said = ok(comfyq(operator, "cleanup", "--older-than-days", "30", "--tenant", "other")).stdout
    assert said.startswith("deleted 1 jobs") and "of other" in said and job_ids(sql) == set()
    assert acme_old not in job_ids(sql)

    revoked = ok(comfyq(operator, "token", "revoke", made["token_prefix"])).stdout
    assert revoked.startswith(f"revoked token {made['id']} ")
    again = comfyq(operator, "token", "revoke", made["token_prefix"])
    assert again.returncode == 4 and "404 not_found" in again.stderr
    unauthorized = comfyq({"COMFYQ_API_URL": api, "COMFYQ_API_TOKEN": made["token"]}, "status")
    assert unauthorized.returncode == 3 and "set COMFYQ_API_TOKEN or pass --token" in unauthorized.stderr


def test_callback_secrets_through_the_api(stack: Stack) -> None:
    proc, api = start_api(stack.log_dir, {"DATABASE_URL": stack.db_url, "COMFYQ_TOKEN_CACHE_SECONDS": "0"}, workers=1)
    stack.processes.append(proc)
    first = ok(comfyq({"DATABASE_URL": stack.db_url}, "token", "create", "--database", "--tenant", "ops",
                      "--role", "operator"))
    operator = {"COMFYQ_API_URL": api, "COMFYQ_API_TOKEN": first.stdout.strip()}
    ok(comfyq(operator, "tenant", "set", "acme"))
    acme_admin = {"COMFYQ_API_URL": api, "COMFYQ_API_TOKEN": ok(comfyq(
        operator, "token", "create", "--tenant", "acme", "--role", "admin")).stdout.strip()}

    assert "has no callback secrets" in ok(comfyq(acme_admin, "tenant", "callback-secret", "list", "acme")).stdout
    made = ok(comfyq(acme_admin, "tenant", "callback-secret", "create", "acme"))
    secret = made.stdout.strip()
    assert secret.startswith("whsec_") and "not shown again" in made.stderr and secret not in made.stderr
    newer = as_json(comfyq(operator, "tenant", "callback-secret", "create", "acme", "--json"))
    listing = ok(comfyq(acme_admin, "tenant", "callback-secret", "list", "acme")).stdout
    assert listing.split()[:4] == ["id", "tenant", "secret_prefix", "source"] and secret[:14] in listing
    assert secret not in listing and newer["secret"] not in listing
    [older] = [row for row in as_json(comfyq(acme_admin, "tenant", "callback-secret", "list", "acme", "--json"))
               if row["id"] != newer["id"]]
    retired = ok(comfyq(acme_admin, "tenant", "callback-secret", "retire", "acme", str(older["id"]))).stdout
    assert retired.startswith(f"retired callback secret {older['id']} ")
    again = comfyq(acme_admin, "tenant", "callback-secret", "retire", "acme", str(older["id"]))
    assert again.returncode == 4 and "404 not_found" in again.stderr
    for args in (("list", "ops"), ("create", "ops"), ("retire", "ops", str(newer["id"]))):
        refused = comfyq(acme_admin, "tenant", "callback-secret", *args)
        assert refused.returncode == 3 and "403 forbidden" in refused.stderr, (args, refused.stderr)
