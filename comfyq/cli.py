"""`comfyq`: the operator's command line (migrate, run a worker, run the API, the demo, the embedded DB)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from comfyq.errors import ComfyqError, ConfigurationError
from comfyq.logs import configure
from comfyq.resources import gunicorn_config
from comfyq.settings import get_settings

log = logging.getLogger("comfyq")


def cmd_migrate(_args: argparse.Namespace) -> int:
    from comfyq.migrate import migrate  # noqa: PLC0415

    settings = get_settings()
    db = _db(may_start_embedded=True)
    try:
        applied = migrate(db, settings.sql_dir / "migrations")
    finally:
        db.close()
    log.info("migrations applied: %s", ", ".join(applied) if applied else "none (up to date)",
             extra={"action": "migrate"})
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from comfyq.worker.main import main as worker_main  # noqa: PLC0415

    argv = ["run"] + (["--burst"] if args.burst else []) + (
        ["--max-jobs", str(args.max_jobs)] if args.max_jobs is not None else [])
    return worker_main(argv)


def cmd_api(args: argparse.Namespace) -> int:
    """Run the API under gunicorn with the project's config (exec, so signals reach gunicorn directly)."""
    argv = [sys.executable, "-m", "gunicorn", "-c", str(gunicorn_config()),
            "--bind", args.bind, "comfyq.api.app:create_app()"]
    os.execv(argv[0], argv)


def cmd_db_url(_args: argparse.Namespace) -> int:
    """Print the database URL, starting the embedded server when DATABASE_URL is unset."""
    from comfyq.connect import database_url  # noqa: PLC0415

    sys.stdout.write(database_url(get_settings()) + "\n")
    return 0


def cmd_db_stop(_args: argparse.Namespace) -> int:
    from comfyq import embedded  # noqa: PLC0415

    embedded.stop(get_settings().data_dir / "pg")
    return 0


def _db(*, may_start_embedded: bool = False):  # type: ignore[no-untyped-def]
    """The database an operator command works on, named on stderr. Without DATABASE_URL only commands that
    write (migrate, token, tenant set, retention) start the embedded server, and they say so; a read-only one
    (workers, lists) refuses rather than show an empty new database."""
    from comfyq import embedded  # noqa: PLC0415
    from comfyq.connect import open_database  # noqa: PLC0415

    settings = get_settings()
    if settings.database_url:
        sys.stderr.write(f"database: {redact_url(settings.database_url)}\n")
    else:
        folder = settings.data_dir / "pg"
        running = embedded.is_running(folder)
        if not running and not may_start_embedded:
            raise ConfigurationError(f"DATABASE_URL is not set and no embedded server runs in {folder}: set "
                                     "DATABASE_URL to your database (or start the embedded one: comfyq db-url)")
        sys.stderr.write(f"database: the embedded server in {folder}"
                         f"{'' if running else ' (starting it: DATABASE_URL is not set)'}\n")
    return open_database(settings, application_name="comfyq-cli")


def redact_url(url: str) -> str:
    """A database URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _print_json(value: object) -> None:
    import json  # noqa: PLC0415

    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def cmd_token_create(args: argparse.Namespace) -> int:
    from comfyq import tokens  # noqa: PLC0415

    db = _db(may_start_embedded=True)
    try:
        created = tokens.create(db, args.tenant, args.role, args.description)
    finally:
        db.close()
    sys.stdout.write(f"{created.token}\n")
    sys.stderr.write(f"token {created.row['id']} ({created.row['token_prefix']}...) for tenant "
                     f"{created.row['tenant']}, role {created.row['role']}: store it now, it is not shown again\n")
    return 0


def cmd_token_import(args: argparse.Namespace) -> int:
    """Store the secret held in an environment variable (never on the command line, where `ps` shows it)."""
    from comfyq import tokens  # noqa: PLC0415

    secret = os.environ.get(args.from_env, "")
    if not secret:
        sys.stderr.write(f"comfyq: {args.from_env} is empty or unset\n")
        return 2
    db = _db(may_start_embedded=True)
    try:
        row, created = tokens.import_token(db, secret, args.tenant, args.role, args.description)
    except ValueError as exc:
        sys.stderr.write(f"comfyq: {args.from_env}: {exc}\n")
        return 2
    finally:
        db.close()
    sys.stderr.write(f"token {row['token_prefix']}... for tenant {row['tenant']}, role {row['role']}: "
                     f"{'stored' if created else 'already stored'}\n")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from comfyq.envfile import main as init_main  # noqa: PLC0415

    return init_main(["--env-file", str(args.env_file), "--example", str(args.example)])


def cmd_token_list(args: argparse.Namespace) -> int:
    from comfyq import tokens  # noqa: PLC0415

    db = _db()
    try:
        _print_json([tokens.public(row) for row in tokens.list_tokens(db, args.tenant)])
    finally:
        db.close()
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    from comfyq import tokens  # noqa: PLC0415

    db = _db()
    try:
        row = tokens.revoke(db, args.token)
    finally:
        db.close()
    if row is None:
        log.error("no active token with id or prefix %r", args.token)
        return 1
    log.info("revoked token %s (%s...) of tenant %s", row["id"], row["token_prefix"], row["tenant"])
    return 0


def cmd_tenant_set(args: argparse.Namespace) -> int:
    db = _db(may_start_embedded=True)
    try:
        row = db.fetch_one("tenant_upsert", {"name": args.name, "allow_raw_graphs": args.allow_raw_graphs,
                                             "max_queued_jobs": args.max_queued_jobs,
                                             "rate_per_second": args.rate_per_second, "rate_burst": args.rate_burst})
    finally:
        db.close()
    _print_json(row)
    return 0


def cmd_tenant_list(_args: argparse.Namespace) -> int:
    db = _db()
    try:
        _print_json(db.fetch_all("tenant_list"))
    finally:
        db.close()
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    from comfyq.admin import apply_retention  # noqa: PLC0415
    from comfyq.storage import build_storage  # noqa: PLC0415

    db = _db(may_start_embedded=True)
    try:
        _print_json(apply_retention(db, build_storage(get_settings()), int(args.older_than_days * 86400)))
    finally:
        db.close()
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    from comfyq.cli_api import emit, render_table  # noqa: PLC0415

    db = _db()
    try:
        rows = db.fetch_all("list_workers", {"include_stopped": args.all})
    finally:
        db.close()
    emit(args, rows, render_table(rows, ["id", "status", "host", "comfyui_url", "current_job_id", "jobs_done",
                                         "dependencies_down", "heartbeat_age_s"]) if rows else "no workers")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from comfyq.demo import run_demo  # noqa: PLC0415

    return run_demo(jobs=args.jobs, workers=args.workers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comfyq", description="Batch job queue for ComfyUI")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply pending SQL migrations").set_defaults(func=cmd_migrate)
    worker = sub.add_parser("worker", help="run a worker against COMFYUI_URL")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs")
    worker.set_defaults(func=cmd_worker)
    init = sub.add_parser("init", help="write the compose stack's .env with fresh random secrets")
    init.add_argument("--env-file", type=Path, default=Path(".env"), help="the file to write (default: ./.env)")
    init.add_argument("--example", type=Path, default=Path(".env.example"), help="the template (./.env.example)")
    init.set_defaults(func=cmd_init)
    api = sub.add_parser("api", help="run the HTTP API under gunicorn")
    api.add_argument("--bind", default="127.0.0.1:8000", help="host:port to listen on (default 127.0.0.1:8000)")
    api.set_defaults(func=cmd_api)
    sub.add_parser("db-url", help="print the database URL (starts the embedded server if needed)").set_defaults(
        func=cmd_db_url)
    sub.add_parser("db-stop", help="stop the embedded server").set_defaults(func=cmd_db_stop)
    token = sub.add_parser("token", help="create, list and revoke API tokens").add_subparsers(dest="action",
                                                                                             required=True)
    create = token.add_parser("create", help="create a token (printed once on stdout)")
    create.add_argument("--tenant", required=True, help="tenant the token belongs to (created if missing)")
    create.add_argument("--role", choices=["submitter", "admin"], default="submitter",
                        help="submitter: jobs only; admin: also retention and every tenant's stats")
    create.add_argument("--description", default="", help="a note shown in `comfyq token list`")
    create.set_defaults(func=cmd_token_create)
    imported = token.add_parser("import", help="store a token generated elsewhere (comfyq init), once")
    imported.add_argument("--from-env", required=True, metavar="VAR",
                          help="environment variable holding the secret (kept off the command line)")
    imported.add_argument("--tenant", required=True, help="tenant the token belongs to (created if missing)")
    imported.add_argument("--role", choices=["submitter", "admin"], default="submitter", help="what it may do")
    imported.add_argument("--description", default="", help="a note shown in `comfyq token list`")
    imported.set_defaults(func=cmd_token_import)
    listing = token.add_parser("list", help="list tokens (never their secrets)")
    listing.add_argument("--tenant", help="only this tenant's tokens")
    listing.set_defaults(func=cmd_token_list)
    revoke = token.add_parser("revoke", help="revoke a token by id or prefix")
    revoke.add_argument("token", help="the token's id or the prefix shown in `comfyq token list`")
    revoke.set_defaults(func=cmd_token_revoke)
    tenant = sub.add_parser("tenant", help="create or change tenants and their limits").add_subparsers(
        dest="action", required=True)
    tenant_set = tenant.add_parser("set", help="create a tenant or replace its settings")
    tenant_set.add_argument("name", help="the tenant's name")
    tenant_set.add_argument("--allow-raw-graphs", action="store_true",
                            help="let its tokens submit API-format graphs, not only templates")
    tenant_set.add_argument("--max-queued-jobs", type=int, help="quota of queued jobs (unset: the default)")
    tenant_set.add_argument("--rate-per-second", type=float, help="sustained requests per second (unset: the default)")
    tenant_set.add_argument("--rate-burst", type=int, help="requests allowed at once above the rate")
    tenant_set.set_defaults(func=cmd_tenant_set)
    tenant.add_parser("list", help="list tenants").set_defaults(func=cmd_tenant_list)
    retention = sub.add_parser("retention", aliases=["cleanup"],
                               help="delete finished jobs older than N days with their logs and outputs")
    retention.add_argument("--older-than-days", type=float, required=True, help="age of the jobs to delete, in days")
    retention.set_defaults(func=cmd_retention)
    workers = sub.add_parser("workers", help="workers with heartbeat age, current job and ComfyUI URL")
    workers.add_argument("--all", action="store_true", help="include stopped workers")
    workers.add_argument("--json", action="store_true", help="print JSON instead of a table")
    workers.set_defaults(func=cmd_workers)
    from comfyq.cli_api import add_commands  # noqa: PLC0415

    add_commands(sub)
    demo = sub.add_parser("demo", help="run the end-to-end demo on the embedded defaults")
    demo.add_argument("--jobs", type=int, default=20, help="prompts to submit (default 20)")
    demo.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(get_settings().log_level, get_settings().log_format)
    try:
        return int(args.func(args))
    except ComfyqError as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
