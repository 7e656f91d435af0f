"""Operator commands that go through the HTTP API (submit, status, jobs, cancel, retry; the admin ones are in
cli_admin.py): they work from any machine that can reach the API with a token, without database access, and
each names the API it talks to on stderr."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from comfyq import cli_watch
from comfyq.client import ApiCallFailed, ApiClient
from comfyq.settings import get_settings

EXIT_OK, EXIT_JOBS_FAILED, EXIT_USAGE, EXIT_API, EXIT_NOT_FOUND = 0, 1, 2, 3, 4
TERMINAL = {"succeeded", "failed", "canceled", "expired"}


def client(args: argparse.Namespace) -> ApiClient:
    """The API client for a command, after one stderr line naming the API and where its URL came from."""
    settings = get_settings()
    source = "--api-url" if args.api_url else "COMFYQ_API_URL" if "api_url" in settings.model_fields_set \
        else "default"
    url = args.api_url or settings.api_url
    sys.stderr.write(f"api: {url} ({source})\n")
    return ApiClient(url, args.token or settings.api_token)


def api_failed(command: str, exc: ApiCallFailed) -> int:
    """Report a refused or unreachable call on stderr, with what to set when the cause is the URL or the
    token; the exit code says which (EXIT_NOT_FOUND for a 404, else EXIT_API)."""
    hint = {0: " (is the API running there? set COMFYQ_API_URL or pass --api-url)",
            401: " (set COMFYQ_API_TOKEN or pass --token)"}.get(exc.status, "")
    sys.stderr.write(f"comfyq {command}: {exc}{hint}\n")
    if exc.details:
        sys.stderr.write(json.dumps(exc.details, indent=2) + "\n")
    return EXIT_NOT_FOUND if exc.status == 404 else EXIT_API


def api_options(*, inherited: bool = False) -> argparse.ArgumentParser:
    """--api-url, --token and --json, shared by every command that goes through the API. inherited: for a
    subcommand of a command that takes them too, without defaults of its own, so `comfyq workers --token T forget X`
    keeps the token given before the subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    unset: Any = argparse.SUPPRESS if inherited else None
    common.add_argument("--api-url", default=unset, help="the API (default COMFYQ_API_URL, http://127.0.0.1:8000)")
    common.add_argument("--token", default=unset, help="bearer token (default COMFYQ_API_TOKEN)")
    common.add_argument("--json", action="store_true", default=unset if inherited else False,
                        help="print JSON instead of a table")
    return common


def emit(args: argparse.Namespace, value: Any, table: str) -> None:
    sys.stdout.write((json.dumps(value, indent=2, default=str) if args.json else table) + "\n")


def render_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[str(row.get(col, "") if row.get(col) is not None else "") for col in columns] for row in rows]
    widths = [max([len(col)] + [len(line[i]) for line in cells]) for i, col in enumerate(columns)]
    lines = ["  ".join(col.ljust(w) for col, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in cells]
    return "\n".join(lines)


def parse_param(text: str) -> tuple[str, Any]:
    """key=value; the value is JSON when it parses as JSON (numbers, booleans), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--param wants key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def read_jobs(path: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One prompt per line (for --workflow, with --param extras), or JSONL lines that are whole job objects."""
    extra = dict(parse_param(p) for p in args.param)
    jobs = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            try:
                job = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not valid JSON: {exc}") from exc
            if not isinstance(job, dict):
                raise ValueError(f"{path}:{number}: a JSONL line must be a job object")
        else:
            job = {"workflow": args.workflow, "params": {"prompt": line, **extra}}
        if args.priority is not None:
            job.setdefault("priority", args.priority)
        jobs.append(job)
    return jobs


def cmd_submit(args: argparse.Namespace) -> int:
    try:
        jobs = read_jobs(Path(args.file), args)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"comfyq submit: {exc}\n")
        return EXIT_USAGE
    if not jobs:
        sys.stderr.write("comfyq submit: the file holds no jobs\n")
        return EXIT_USAGE
    api = client(args)
    submitted: list[dict[str, Any]] = []
    try:
        for start in range(0, len(jobs), args.batch_size):
            key = f"{args.idempotency_key}:{start}" if args.idempotency_key else None
            submitted += api.submit_batch(jobs[start:start + args.batch_size], key)
    except ApiCallFailed as exc:
        api_failed("submit", exc)
        sys.stderr.write(f"{len(submitted)} of {len(jobs)} jobs were submitted before the error\n")
        return EXIT_API
    ids = [job["id"] for job in submitted]
    if not args.wait:
        emit(args, submitted, submitted_line(ids))
        return EXIT_OK
    sys.stderr.write(submitted_line(ids) + "\n")  # before the wait: an interrupted wait leaves the ids on screen
    endpoint = cli_watch.events_endpoint(args)
    try:
        cli_watch.follow_all(endpoint.url, args.token or get_settings().api_token, ids,
                             args.timeout if args.wait is True else args.wait, args)
    except ApiCallFailed as exc:  # LostContact too; the events process's, not the API's: the jobs are queued
        cli_watch.cannot_follow("submit", endpoint, exc)
        return submitted_anyway(args, submitted, cli_watch.EXIT_NO_CONTACT)
    try:
        final = [api.job(job_id) for job_id in ids]  # the jobs as the API shows them, with output URLs
    except ApiCallFailed as exc:
        api_failed("submit", exc)
        return submitted_anyway(args, submitted, EXIT_API)
    rows = [{"id": j["id"], "status": j["status"], "attempts": j["attempts"], "priority": j["priority"],
             "output": (j["outputs"][0].get("url") or j["outputs"][0].get("location")) if j["outputs"]
             else (j.get("error") or {}).get("message", "")} for j in final]
    emit(args, final, render_table(rows, ["id", "status", "attempts", "priority", "output"]))
    return wait_exit_code([j["status"] for j in final])


def submitted_line(ids: list[int]) -> str:
    """Every id, as runs ("12-15, 19"): short for a large batch, and exact when other submissions interleave."""
    runs: list[list[int]] = []
    for job_id in sorted(set(ids)):
        if runs and job_id == runs[-1][1] + 1:
            runs[-1][1] = job_id
        else:
            runs.append([job_id, job_id])
    return f"submitted {len(ids)} jobs: ids " + ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def submitted_anyway(args: argparse.Namespace, submitted: list[dict[str, Any]], code: int) -> int:
    """The wait broke off, yet the jobs are queued and run regardless: print them as a plain submit does (stdout,
    JSON with --json) and say so, so that they are followed rather than submitted twice; returns `code`."""
    sys.stderr.write(f"comfyq submit: the {len(submitted)} jobs were submitted and run without this wait; do not "
                     "submit them again: follow one with `comfyq watch ID`, see it with `comfyq jobs ID`\n")
    emit(args, submitted, submitted_line([job["id"] for job in submitted]))
    return code


def wait_exit_code(statuses: list[str]) -> int:
    """One job: its own code (cli_watch.EXIT_BY_STATUS). Several: 0 when all succeeded, else 1."""
    if len(statuses) == 1:
        return cli_watch.EXIT_BY_STATUS.get(statuses[0], EXIT_JOBS_FAILED)
    return EXIT_OK if all(status == "succeeded" for status in statuses) else EXIT_JOBS_FAILED


def describe_job(job: dict[str, Any]) -> str:
    """One job for people: its fields as `name  value` lines, then its outputs as a table."""
    fields = ["id", "status", "workflow", "priority", "attempts", "max_attempts", "progress", "current_node",
              "created_at", "started_at", "finished_at"]
    width = max(len(name) for name in fields)
    lines = [f"{name.ljust(width)}  {'' if job.get(name) is None else job.get(name)}" for name in fields]
    error = job.get("error")
    if error:
        lines.append(f"{'error'.ljust(width)}  {error.get('type')}: {error.get('message')}")
    outputs = [{"n": n, "filename": o.get("filename"), "size": o.get("size"), "url": o.get("url")}
               for n, o in enumerate(job.get("outputs") or [])]
    if outputs:
        lines += ["", render_table(outputs, ["n", "filename", "size", "url"])]
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    try:
        stats = client(args).stats()
    except ApiCallFailed as exc:
        return api_failed("status", exc)
    rows = [{"status": status, "priority": priority, "jobs": count}
            for status in ("running", "queued") for priority, count in stats["by_priority"][status].items()]
    table = render_table(rows, ["status", "priority", "jobs"]) if rows else "the queue is empty"
    oldest = stats["oldest_queued_seconds"]
    table += (f"\n\nqueued {stats['queued']}, running {stats['running']}, oldest queued "
              f"{'-' if oldest is None else f'{oldest:.0f}s'}, workers alive {stats['workers']['alive']} "
              f"(silent {stats['workers']['silent']}, dead {stats['workers']['dead']}), finished last hour "
              f"{stats['finished_last_hour']}; scope: {stats['scope']}")
    emit(args, stats, table)
    return EXIT_OK


def cmd_jobs(args: argparse.Namespace) -> int:
    api = client(args)
    try:
        if args.id is not None:
            job = api.job(args.id)
            emit(args, job, describe_job(job))
            return EXIT_OK
        jobs = []
        for job in api.jobs(status=args.status, workflow=args.workflow, limit=min(args.limit, 500)):
            jobs.append(job)
            if len(jobs) >= args.limit:
                break
    except ApiCallFailed as exc:
        return api_failed("jobs", exc)
    rows = [{"id": j["id"], "status": j["status"], "workflow": j["workflow"], "priority": j["priority"],
             "attempts": j["attempts"], "created": j["created_at"]} for j in jobs]
    emit(args, jobs, render_table(rows, ["id", "status", "workflow", "priority", "attempts", "created"]))
    return EXIT_OK


def _one_job_action(args: argparse.Namespace, name: str) -> int:
    api = client(args)
    try:
        result = api.cancel(args.id) if name == "cancel" else api.retry(args.id)
    except ApiCallFailed as exc:
        return api_failed(name, exc)
    emit(args, result, f"job {result['id']}: {result['status']}")
    return EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    return _one_job_action(args, "cancel")


def cmd_retry(args: argparse.Namespace) -> int:
    return _one_job_action(args, "retry")


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    common = api_options()

    submit = sub.add_parser("submit", parents=[common], help="submit a file of prompts (one per line) or JSONL jobs",
                            description="Exit codes: 0 all submitted (with --wait: all succeeded), 1 some jobs "
                            "did not succeed or were not final when the wait ended, 2 bad input, 3 the API refused "
                            "or could not be reached. With --wait and one job, its end: 0 succeeded, 5 failed, "
                            "6 canceled, 7 expired. 8: the jobs were submitted, but the events process could not be "
                            "followed (nothing answered at the events URL for --give-up-after seconds, no events "
                            "process there, or it refused); their ids are printed, do not submit them again.")
    submit.add_argument("file", help="a file of prompts, one per line, or of JSONL job objects")
    submit.add_argument("--workflow", default="txt2img", help="template for plain-text lines (default txt2img)")
    submit.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="extra template param for plain-text lines, e.g. --param steps=30")
    submit.add_argument("--priority", type=int, help="priority of jobs that do not set one")
    submit.add_argument("--batch-size", type=int, default=1000, help="jobs per API call (default 1000)")
    submit.add_argument("--idempotency-key", help="makes re-running the same submit safe")
    submit.add_argument("--wait", nargs="?", const=True, type=float, metavar="SECONDS",
                        help="follow the jobs' event streams until every job is final (at most SECONDS, default "
                        "--timeout), printing transitions on stderr")
    submit.add_argument("--timeout", type=float, default=3600, help="seconds to wait with a bare --wait")
    cli_watch.add_options(submit)
    submit.set_defaults(func=cmd_submit)

    sub.add_parser("status", parents=[common], help="queue depth by status and priority, workers alive").set_defaults(
        func=cmd_status)

    cli_watch.add_command(sub, common)

    jobs = sub.add_parser("jobs", parents=[common], help="list jobs, or show one with its id")
    jobs.add_argument("id", nargs="?", type=int, help="one job's id (omit to list jobs)")
    jobs.add_argument("--status", help="only jobs in this status")
    jobs.add_argument("--workflow", help="only jobs of this template")
    jobs.add_argument("--limit", type=int, default=50, help="at most this many jobs (default 50)")
    jobs.set_defaults(func=cmd_jobs)

    for name, func, text in (("cancel", cmd_cancel, "cancel a job (queued: at once; running: interrupted)"),
                             ("retry", cmd_retry, "put a failed, canceled or expired job back in the queue")):
        action = sub.add_parser(name, parents=[common], help=text)
        action.add_argument("id", type=int, help="the job's id")
        action.set_defaults(func=func)
