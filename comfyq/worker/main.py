"""The worker's command line (`python worker/worker.py`, `python -m comfyq.worker`, `comfyq worker`): `run` drives
the loop, `healthcheck` exits 0 only when Postgres and ComfyUI both answer."""

from __future__ import annotations

import argparse
import logging
import sys

from comfyq.connect import open_database
from comfyq.errors import ComfyqError
from comfyq.logs import configure
from comfyq.settings import get_settings

log = logging.getLogger("comfyq.worker")


def healthcheck() -> int:
    from comfyq.worker.comfy_client import ComfyClient  # noqa: PLC0415

    settings = get_settings()
    try:
        db = open_database(settings, application_name="comfyq-healthcheck", start_embedded=False)
        db.ping()
        db.close()
        ComfyClient(settings.comfyui_url, "comfyq-healthcheck", connect_timeout=3, request_timeout=5).system_stats()
    except ComfyqError as exc:
        log.error("unhealthy: %s", exc)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="worker.py", description="comfyq worker: drains the job queue "
                                     "into one ComfyUI instance")
    parser.add_argument("command", nargs="?", choices=["run", "healthcheck"], default="run")
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs")
    args = parser.parse_args(argv)
    settings = get_settings()
    configure(settings.log_level, settings.log_format)
    if args.command == "healthcheck":
        return healthcheck()
    from comfyq.worker.loop import Worker  # noqa: PLC0415

    db = open_database(settings, application_name="comfyq-worker")
    worker = Worker(settings, db)
    worker.install_signal_handlers()
    try:
        worker.run(burst=args.burst, max_jobs=args.max_jobs)
    finally:
        db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
