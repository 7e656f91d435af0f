"""`comfyq watch JOB_ID`, and the waiting of `comfyq submit --wait`: both follow jobs through the events
process's per-job streams (comfyq/event_stream.py) instead of polling the API, print each transition as it
happens, and exit with a code that says how the job ended."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from comfyq.client import ApiCallFailed
from comfyq.event_stream import JobEvent, JobEventFollower, LostContact
from comfyq.settings import get_settings

# 0-4 are the API commands' (cli_api.py: 3 refused or unreachable, 4 no such job); a job's end has its own.
EXIT_BY_STATUS = {"succeeded": 0, "failed": 5, "canceled": 6, "expired": 7}
EXIT_NO_CONTACT = 8
EXIT_CODES = ("Exit codes: 0 the job succeeded, 5 it failed, 6 it was canceled, 7 it expired, 8 no contact with the "
              "events process for --give-up-after seconds, 3 the events process refused (the token, or no events "
              "process at that URL), 4 no such job.")
# Failures whose likely cause is the events URL: nothing answered there, or a server without the stream routes did
# (typically the API itself, with no front door sending the streams on).
URL_FAILURES = frozenset({"no_contact", "no_events_route"})


@dataclass(frozen=True)
class EventsEndpoint:
    url: str
    source: str  # where the URL came from: "--events-url", "COMFYQ_EVENTS_URL" or "the API's URL"


def events_endpoint(args: argparse.Namespace) -> EventsEndpoint:
    """--events-url, else COMFYQ_EVENTS_URL, else the API's URL (nginx sends the stream routes to the events
    process, docs/events.md), after one stderr line naming it and where it came from."""
    settings = get_settings()
    url, source = ((args.events_url, "--events-url") if args.events_url
                   else (settings.events_url, "COMFYQ_EVENTS_URL") if settings.events_url
                   else (args.api_url or settings.api_url, "the API's URL"))
    sys.stderr.write(f"events: {url} ({source})\n")
    return EventsEndpoint(str(url), source)


def cannot_follow(command: str, endpoint: EventsEndpoint, exc: ApiCallFailed) -> None:
    """Why the streams could not be followed, on stderr; when the URL is the likely cause, also the one tried,
    where it came from and how to set another, so the fix is in the message."""
    sys.stderr.write(f"comfyq {command}: {exc}\n")
    if exc.code in URL_FAILURES:
        sys.stderr.write(f"comfyq {command}: the events process was looked for at {endpoint.url} ({endpoint.source});"
                         " is the events process there? set COMFYQ_EVENTS_URL or pass --events-url (where `comfyq "
                         "events` listens, or a front door that sends /jobs/{id}/events to it)\n")


def describe_event(event: JobEvent) -> str:
    """One line for people: time, event, status, attempt, worker, progress or error."""
    data = event.data
    stamp = data.get("created_at") or datetime.now(UTC).isoformat(timespec="milliseconds")
    parts = [str(stamp), f"job {event.data.get('job_id')}", event.event, str(event.status or "")]
    job = data.get("job") or {}
    attempt = data.get("attempt", job.get("attempts"))
    if attempt:
        parts.append(f"attempt {attempt}")
    worker = data.get("worker_id") or job.get("worker_id")
    if worker:
        parts.append(f"worker {worker}")
    progress = data.get("progress", job.get("progress") if event.status == "running" else None)
    if progress is not None:
        node = data.get("current_node") or job.get("current_node")
        parts.append(f"{float(progress) * 100:.0f}%" + (f" node {node}" if node else ""))
    error = data.get("error") or job.get("error")
    if error and event.status != "succeeded":
        parts.append(f"error {error.get('type')}: {error.get('message')}")
    elif data.get("message"):
        parts.append(str(data["message"]))
    return "  ".join(parts)


def follow(url: str, token: str | None, job_id: int, give_up_seconds: float,
           show: Callable[[JobEvent], object], deadline: float | None = None) -> str:
    """Follow one job to its end (or the deadline), passing every event to `show`; its last status."""
    def reconnecting(error: str) -> None:
        sys.stderr.write(f"job {job_id}: {error}; reconnecting\n")

    follower = JobEventFollower(url, token, job_id, give_up_seconds=give_up_seconds, deadline=deadline,
                                on_reconnect=reconnecting)
    for event in follower.events():
        show(event)
    return str(follower.last_status)


def follow_all(url: str, token: str | None, ids: list[int], seconds: float, args: argparse.Namespace) -> None:
    """Follow each job until it is final or `seconds` have passed, its transitions on stderr unless --json.
    One stream at a time, in submission order: a job that ended while an earlier one was followed answers at
    once with its snapshot, so the whole wait lasts as long as the slowest job, with one open connection
    whatever the batch size. Streams rather than `?wait=`: they show progress as it happens, and a wait is cut
    at COMFYQ_EVENTS_WAIT_MAX_SECONDS and would have to be asked again anyway."""
    deadline = time.monotonic() + seconds
    done = failed = 0
    for job_id in ids:
        if time.monotonic() >= deadline:
            return
        status = follow(url, token, job_id, args.give_up_after,
                        lambda e: None if args.json else sys.stderr.write(describe_event(e) + "\n"), deadline)
        if status not in EXIT_BY_STATUS:
            return
        done, failed = done + 1, failed + (status != "succeeded")
        if not args.json:
            sys.stderr.write(f"{done}/{len(ids)} done, {failed} failed\n")


def cmd_watch(args: argparse.Namespace) -> int:
    endpoint = events_endpoint(args)
    token = args.token or get_settings().api_token

    def show(event: JobEvent) -> None:
        line = json.dumps({**event.data, "event": event.event, "id": event.id}, default=str) if args.json \
            else describe_event(event)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    try:
        status = follow(endpoint.url, token, args.id, args.give_up_after, show)
    except LostContact as exc:
        cannot_follow("watch", endpoint, exc)
        return EXIT_NO_CONTACT
    except ApiCallFailed as exc:
        cannot_follow("watch", endpoint, exc)
        return 4 if exc.status == 404 else 3
    return EXIT_BY_STATUS.get(status, EXIT_NO_CONTACT)


def add_options(parser: argparse.ArgumentParser) -> None:
    """--events-url and --give-up-after, for watch and submit --wait."""
    parser.add_argument("--events-url", help="the events process (default COMFYQ_EVENTS_URL, else the API's URL: "
                        "the front door sends streams there)")
    parser.add_argument("--give-up-after", type=float, default=120.0, metavar="SECONDS",
                        help="stop after this long without contact with the events process (default 120)")


def add_command(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    watch = sub.add_parser("watch", parents=[common], help="print a job's transitions live until it ends",
                           description=EXIT_CODES + " --json prints each event as a JSON line.")
    watch.add_argument("id", type=int, help="the job's id")
    add_options(watch)
    watch.set_defaults(func=cmd_watch)
