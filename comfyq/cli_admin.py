"""Admin commands through the HTTP API (workers [forget], token create|list|revoke, tenant set|list, tenant
callback-secret create|list|retire, retention): the same way in as status and jobs, with a token whose role allows
it (admin for a tenant's own tokens, callback secrets and retention, operator for workers, tenants and anything
across tenants). Only the bootstrap (the first token, token import, migrate) talks to the database, in cli.py. A
refused or unreachable call reaches cli.main, which reports it (cli_api.api_failed) and exits 3, or 4 for a 404."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from comfyq.cli_api import EXIT_OK, api_options, client, emit, render_table
from comfyq.tokens import ROLES

EXIT_CODES = ("Exit codes: 0 done, 2 bad arguments, 3 the API refused (the token's role, another tenant) or "
              "could not be reached, 4 not found.")
TOKEN_COLUMNS = ["id", "tenant", "role", "token_prefix", "description", "created_at", "last_used_at", "revoked_at"]
SECRET_COLUMNS = ["id", "tenant", "secret_prefix", "source", "created_at", "retired_at"]
TENANT_COLUMNS = ["name", "allow_raw_graphs", "max_queued_jobs", "rate_per_second", "rate_burst", "active_tokens",
                  "created_at"]


def _when(value: Any) -> str:
    """An ISO time as people read it in a table: to the second, no time zone (the API answers UTC)."""
    return "" if value is None else str(value)[:19].replace("T", " ")


def _for_people(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: _when(value) if key.endswith("_at") else ",".join(value) if isinstance(value, list) else value
             for key, value in row.items()} for row in rows]


def cmd_workers(args: argparse.Namespace) -> int:
    rows = client(args).workers(include_stopped=args.all)
    people = [{**row, "heartbeat_age": f"{row['heartbeat_age_seconds']:.1f}s"} for row in _for_people(rows)]
    emit(args, rows, render_table(people, ["id", "status", "host", "comfyui_url", "current_job_id", "jobs_done",
                                           "dependencies_down", "heartbeat_age"]) if rows else "no workers")
    return EXIT_OK


def cmd_workers_forget(args: argparse.Namespace) -> int:
    row = client(args).forget_worker(args.id)
    emit(args, row, f"forgot worker {row['id']} ({row['status']}, host {row['host']}, last heartbeat "
                    f"{row['heartbeat_age_seconds']:.0f}s ago)")
    return EXIT_OK


def report_created(args: argparse.Namespace, row: dict[str, Any], secret: str) -> None:
    """The secret alone on stdout (so `TOKEN=$(comfyq token create ...)` works), or the whole row with --json;
    what it is on stderr."""
    emit(args, {**row, "token": secret}, secret)
    sys.stderr.write(f"token {row['id']} ({row['token_prefix']}...) for tenant {row['tenant']}, role {row['role']}: "
                     "store it now, it is not shown again\n")


def cmd_token_create(args: argparse.Namespace) -> int:
    created = client(args).create_token(args.tenant, args.role, args.description)
    secret = created.pop("token")
    report_created(args, created, secret)
    return EXIT_OK


def cmd_token_list(args: argparse.Namespace) -> int:
    rows = client(args).tokens(args.tenant)
    emit(args, rows, render_table(_for_people(rows), TOKEN_COLUMNS) if rows else "no tokens")
    return EXIT_OK


def cmd_token_revoke(args: argparse.Namespace) -> int:
    row = client(args).revoke_token(args.ref)
    emit(args, row, f"revoked token {row['id']} ({row['token_prefix']}...) of tenant {row['tenant']}, role "
                    f"{row['role']}")
    return EXIT_OK


def cmd_tenant_set(args: argparse.Namespace) -> int:
    settings = {"allow_raw_graphs": args.allow_raw_graphs, "max_queued_jobs": args.max_queued_jobs,
                "rate_per_second": args.rate_per_second, "rate_burst": args.rate_burst}
    row = client(args).set_tenant(args.name, settings)
    emit(args, row, render_table(_for_people([row]), TENANT_COLUMNS))
    return EXIT_OK


def cmd_tenant_list(args: argparse.Namespace) -> int:
    rows = client(args).tenants()
    emit(args, rows, render_table(_for_people(rows), TENANT_COLUMNS))
    return EXIT_OK


def cmd_callback_secret_create(args: argparse.Namespace) -> int:
    """The secret alone on stdout (`SECRET=$(comfyq tenant callback-secret create acme)`), what it is on stderr."""
    created = client(args).create_callback_secret(args.tenant)
    emit(args, created, created["secret"])
    sys.stderr.write(f"callback secret {created['id']} ({created['secret_prefix']}...) of tenant {created['tenant']}: "
                     "give it to the tenant's receiver now, it is not shown again. It signs the tenant's callbacks "
                     "from the next one on, next to the active ones; once the receiver verifies with it, retire the "
                     f"old ones (comfyq tenant callback-secret retire {created['tenant']} ID)\n")
    return EXIT_OK


def cmd_callback_secret_list(args: argparse.Namespace) -> int:
    rows = client(args).callback_secrets(args.tenant)
    emit(args, rows, render_table(_for_people(rows), SECRET_COLUMNS) if rows else
         f"tenant {args.tenant} has no callback secrets: its callbacks wait until it has one")
    return EXIT_OK


def cmd_callback_secret_retire(args: argparse.Namespace) -> int:
    row = client(args).retire_callback_secret(args.tenant, args.id)
    emit(args, row, f"retired callback secret {row['id']} ({row['secret_prefix']}...) of tenant {row['tenant']}")
    return EXIT_OK


def cmd_retention(args: argparse.Namespace) -> int:
    removed = client(args).retention(args.older_than_days, args.tenant)
    emit(args, removed, f"deleted {removed['jobs_deleted']} jobs, {removed['logs_deleted']} log rows and "
                        f"{removed['objects_deleted']} stored objects of {removed['scope']}, of jobs finished "
                        f"more than {removed['older_than_days']:g} days ago")
    return EXIT_OK


def add_token_create_options(create: argparse.ArgumentParser) -> None:
    create.add_argument("--tenant", help="tenant the token belongs to, created if missing (default: the tenant of "
                                         "your own token; required with --database)")
    create.add_argument("--role", choices=ROLES, default="submitter",
                        help="submitter: its tenant's jobs; admin: also its tenant's tokens and retention; "
                             "operator: the whole deployment (workers, tenants, every tenant). A token creates "
                             "tokens of its own role or lower (default submitter)")
    create.add_argument("--description", default="", help="a note shown in `comfyq token list`")


def add_token_commands(token: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    common = api_options()
    listing = token.add_parser("list", parents=[common], description=EXIT_CODES,
                               help="list tokens, never their secrets (admin: its tenant's; operator: all)")
    listing.add_argument("--tenant", help="only this tenant's tokens (an admin token may name only its own)")
    listing.set_defaults(func=cmd_token_list)
    revoke = token.add_parser("revoke", parents=[common], description=EXIT_CODES,
                              help="revoke a token by id or prefix (effective within COMFYQ_TOKEN_CACHE_SECONDS)")
    revoke.add_argument("ref", metavar="ID_OR_PREFIX", help="the token's id or the prefix shown in `comfyq token list`")
    revoke.set_defaults(func=cmd_token_revoke)


def add_callback_secret_commands(tenant: argparse._SubParsersAction,  # type: ignore[type-arg]
                                 common: argparse.ArgumentParser) -> None:
    secret = tenant.add_parser("callback-secret", help="a tenant's callback signing secrets (admin: its own "
                                                        "tenant's; operator: any)")
    secret_actions = secret.add_subparsers(dest="secret_action", required=True)
    actions = {}
    for action, what, func in (
            ("create", "a new secret, printed once on stdout; it signs next to the active ones",
             cmd_callback_secret_create),
            ("list", "the tenant's secrets by id and prefix, never the secrets", cmd_callback_secret_list),
            ("retire", "stop signing with a secret (from the next callback on)", cmd_callback_secret_retire)):
        actions[action] = secret_actions.add_parser(action, parents=[common], description=EXIT_CODES, help=what)
        actions[action].add_argument("tenant", help="the tenant whose callbacks the secrets sign")
        actions[action].set_defaults(func=func)
    actions["retire"].add_argument("id", type=int, help="the secret's id, as `list` shows it")

def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    common = api_options()
    tenant = sub.add_parser("tenant", help="create or change tenants and their limits (operator token), and their "
                                           "callback signing secrets").add_subparsers(dest="action", required=True)
    tenant_set = tenant.add_parser("set", parents=[common], description=EXIT_CODES,
                                   help="create a tenant or replace all its settings")
    tenant_set.add_argument("name", help="the tenant's name (a-z, 0-9, '_', '.', '-')")
    tenant_set.add_argument("--allow-raw-graphs", action="store_true",
                            help="let its tokens submit API-format graphs, not only templates")
    tenant_set.add_argument("--max-queued-jobs", type=int, help="quota of queued jobs (unset: the default)")
    tenant_set.add_argument("--rate-per-second", type=float,
                            help="sustained requests per second (unset: the default)")
    tenant_set.add_argument("--rate-burst", type=int, help="requests allowed at once above the rate")
    tenant_set.set_defaults(func=cmd_tenant_set)
    tenant.add_parser("list", parents=[common], description=EXIT_CODES,
                      help="list tenants with their settings").set_defaults(func=cmd_tenant_list)
    add_callback_secret_commands(tenant, common)

    retention = sub.add_parser("retention", aliases=["cleanup"], parents=[common], description=EXIT_CODES,
                               help="delete finished jobs older than N days with their logs and outputs (admin: "
                                    "its own tenant's; operator: every tenant's, or --tenant's)")
    retention.add_argument("--older-than-days", type=float, required=True, help="age of the jobs to delete, in days")
    retention.add_argument("--tenant", help="only this tenant's jobs (an admin token may name only its own)")
    retention.set_defaults(func=cmd_retention)

    workers = sub.add_parser("workers", parents=[common], description=EXIT_CODES,
                             help="workers with status (running, draining, dead, stopped), heartbeat age, current "
                                  "job, ComfyUI URL and what they see down (operator token)")
    workers.add_argument("--all", action="store_true", help="include stopped workers")
    workers.set_defaults(func=cmd_workers)
    forget = workers.add_subparsers(dest="action").add_parser(
        "forget", parents=[api_options(inherited=True)],
        description=EXIT_CODES + " A worker that may still be alive is refused (3).",
        help="delete a dead or stopped worker from the list (its jobs are rescued by their leases either way)")
    forget.add_argument("id", help="the worker's id, as `comfyq workers` shows it")
    forget.set_defaults(func=cmd_workers_forget)
