"""Keyset pagination of the list routes (GET /jobs, GET /jobs/{id}/logs): the page size a query asks for, and
opaque cursors that name the last row seen, so a page never repeats or skips a row while rows are added."""

from __future__ import annotations

import base64
import binascii

from werkzeug.datastructures import MultiDict

from comfyq.api.api_errors import ApiError

MAX_ID = 2**63 - 1  # ids are Postgres bigints
DEFAULT_PAGE = 50


def default_page(max_limit: int) -> int:
    """The page size when a query names none: DEFAULT_PAGE, or the largest page allowed when that is smaller."""
    return min(DEFAULT_PAGE, max_limit)


def page_limit(args: MultiDict[str, str], max_limit: int) -> int:
    """The `limit` query parameter: 1 to max_limit (COMFYQ_LIST_PAGE_MAX), default_page() when absent."""
    if "limit" not in args:
        return default_page(max_limit)
    try:
        limit = int(args["limit"])
    except ValueError as exc:
        raise ApiError(400, "invalid_query", "limit must be an integer") from exc
    if not 1 <= limit <= max_limit:
        raise ApiError(400, "invalid_query", f"limit must be between 1 and {max_limit}")
    return limit


def encode_cursor(kind: str, *ids: int) -> str:
    """`kind:id[:id...]` in URL-safe base64 without padding; GET /jobs' cursors are `id:<job id>`."""
    text = ":".join([kind, *map(str, ids)])
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, kind: str, count: int) -> tuple[int, ...]:
    """The ids of a cursor of this kind that encode_cursor made; anything else (another route's cursor, an id
    out of the bigint range, garbage) is a 400, never a query."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        found, *parts = text.split(":")
        if found != kind or len(parts) != count or not all(part.isascii() and part.isdigit() for part in parts):
            raise ValueError(text)
        ids = tuple(int(part) for part in parts)
        if not all(1 <= value <= MAX_ID for value in ids):
            raise ValueError(text)
        return ids
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, "invalid_cursor", "the cursor is not one this API returned") from exc
