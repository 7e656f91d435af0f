"""`comfyq`: the operator's command line. Everyday commands (status, jobs, submit, workers, token, tenant,
retention) go through the API with a token (cli_api.py, cli_admin.py); only the bootstrap talks to the database
(migrate, token import, token create --database), and run, demo and the embedded server's helpers are here."""

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


def cmd_events(args: argparse.Namespace) -> int:
    """Run the events process: live job streams (SSE, WebSocket) and bounded waits (docs/events.md)."""
    from comfyq.events.main import serve  # noqa: PLC0415

    settings = get_settings()
    return serve(settings, args.bind or settings.events_bind)


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
    """The database a bootstrap command works on, named on stderr. Without DATABASE_URL only commands that
    write (migrate, token import, token create --database) start the embedded server of the documented local
    default, and they say so; a read-only one refuses rather than show an empty new database."""
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


def cmd_token_create(args: argparse.Namespace) -> int:
    """Through the API, or with --database straight into DATABASE_URL: the first token, before any API runs."""
    from comfyq import cli_admin  # noqa: PLC0415

    if not args.database:
        return cli_admin.cmd_token_create(args)
    if not args.tenant or args.api_url or args.token:
        sys.stderr.write("comfyq token create: --database needs --tenant, and talks to DATABASE_URL, not to an "
                         "API (drop --api-url and --token)\n")
        return 2
    from comfyq import tokens  # noqa: PLC0415

    db = _db(may_start_embedded=True)
    try:
        created = tokens.create(db, args.tenant, args.role, args.description)
    finally:
        db.close()
    cli_admin.report_created(args, tokens.public(created.row), created.token)
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
        row, created = tokens.import_token(db, secret, args.tenant, args.role, args.description,
                                           update_role=args.update_role)
    except ValueError as exc:
        sys.stderr.write(f"comfyq: {args.from_env}: {exc}\n")
        return 2
    finally:
        db.close()
    outcome = "stored" if created else "role changed" if row.get("role_changed") else "already stored"
    sys.stderr.write(f"token {row['token_prefix']}... for tenant {row['tenant']}, role {row['role']}: {outcome}\n")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from comfyq.envfile import main as init_main  # noqa: PLC0415

    return init_main(["--env-file", str(args.env_file), "--example", str(args.example)])


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
    events = sub.add_parser("events", help="run the events process (live job streams and waits)")
    events.add_argument("--bind", default=None, help="host:port to listen on (default COMFYQ_EVENTS_BIND, "
                                                    "127.0.0.1:8001)")
    events.set_defaults(func=cmd_events)
    sub.add_parser("db-url", help="print the database URL (starts the embedded server if needed)").set_defaults(
        func=cmd_db_url)
    sub.add_parser("db-stop", help="stop the embedded server").set_defaults(func=cmd_db_stop)
    from comfyq import cli_admin, cli_api  # noqa: PLC0415
    from comfyq.tokens import ROLES  # noqa: PLC0415

    token = sub.add_parser("token", help="create, list, revoke and import API tokens").add_subparsers(
        dest="action", required=True)
    create = token.add_parser("create", parents=[cli_api.api_options()], description=cli_admin.EXIT_CODES,
                              help="create a token through the API, or with --database the first one (the secret "
                                   "is printed once on stdout)")
    cli_admin.add_token_create_options(create)
    create.add_argument("--database", action="store_true",
                        help="bootstrap: write it straight into DATABASE_URL instead of asking the API (needs "
                             "--tenant; without DATABASE_URL, the embedded server of `comfyq db-url`)")
    create.set_defaults(func=cmd_token_create)
    imported = token.add_parser("import", help="bootstrap: store a token generated elsewhere (comfyq init) "
                                               "straight into DATABASE_URL, once")
    imported.add_argument("--from-env", required=True, metavar="VAR",
                          help="environment variable holding the secret (kept off the command line)")
    imported.add_argument("--tenant", required=True, help="tenant the token belongs to (created if missing)")
    imported.add_argument("--role", choices=ROLES, default="submitter", help="what it may do (default submitter)")
    imported.add_argument("--description", default="", help="a note shown in `comfyq token list`")
    imported.add_argument("--update-role", action="store_true",
                          help="if the secret is stored already for this tenant with another role, give it this "
                               "role (an upgrade that changes what a deployment's own token is for)")
    imported.set_defaults(func=cmd_token_import)
    cli_admin.add_token_commands(token)
    cli_admin.add_commands(sub)
    cli_api.add_commands(sub)
    demo = sub.add_parser("demo", help="run the end-to-end demo on the embedded defaults")
    demo.add_argument("--jobs", type=int, default=20, help="prompts to submit (default 20)")
    demo.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from comfyq.cli_api import api_failed  # noqa: PLC0415
    from comfyq.client import ApiCallFailed  # noqa: PLC0415

    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except ConfigurationError as exc:  # before logging is configured: a bad setting may be the log format
        sys.stderr.write(f"comfyq: {exc}\n")
        return 2
    configure(settings.log_level, settings.log_format)
    try:
        return int(args.func(args))
    except ApiCallFailed as exc:
        return api_failed(" ".join(str(part) for part in (args.command, getattr(args, "action", None)) if part), exc)
    except ComfyqError as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
