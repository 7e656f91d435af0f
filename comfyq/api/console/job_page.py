"""What a job page needs beyond the job's public view: its error as a person reads it (console.js shows the
live one the same way), and the POST /jobs body that submits the job again."""

from __future__ import annotations

import json
from typing import Any

# The error's details that the page shows in fields of their own; the rest stays under "All details".
SHOWN_DETAILS = ("node_type", "exception_type", "exception_message", "traceback")


def error_view(error: dict[str, Any] | None) -> dict[str, str] | None:
    """A stored job error (type, message, node, details from the worker) as the page's fields, all strings."""
    if not error:
        return None
    raw = error.get("details")
    details: dict[str, Any] = raw if isinstance(raw, dict) else {}
    node = error.get("node") or details.get("node_id")
    node_type = details.get("node_type")
    rest = {key: value for key, value in details.items() if key not in SHOWN_DETAILS}
    return {
        "type": str(error.get("type") or "error"),
        "message": str(error.get("message") or ""),
        "node": f"{node} ({node_type})" if node and node_type else str(node or ""),
        "exception": str(details.get("exception_type") or ""),
        "traceback": str(details.get("traceback") or ""),
        "retryable": "yes" if error.get("retryable") else "no",
        "details": json.dumps(rest, indent=2, ensure_ascii=False, default=str) if rest else "",
    }


def resubmit_body(row: dict[str, Any]) -> dict[str, Any]:
    """The job's row as a new POST /jobs body: the same template and stored params (random seeds included, so
    the new job reproduces the first) or the same raw graph, priority, attempts and timeout. Not its deadline
    (likely past) nor its callback URL: the person watches the new job in the console."""
    body: dict[str, Any] = ({"workflow": row["workflow"], "params": row.get("params") or {}} if row.get("workflow")
                            else {"graph": row.get("graph") or {}})
    body.update(priority=row.get("priority", 0), max_attempts=row.get("max_attempts"))
    if row.get("timeout_seconds") is not None:
        body["timeout_seconds"] = row["timeout_seconds"]
    return body
