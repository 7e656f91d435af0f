"""Reading a request's JSON body the same way on every route that takes one: refused before any work when it is
not a JSON object or holds what Postgres cannot store."""

from __future__ import annotations

import math
from typing import Any

from flask import request

from comfyq.api.api_errors import ApiError

MAX_JSON_DEPTH = 64  # a ComfyUI graph nests about 5 levels deep


def json_body() -> dict[str, Any]:
    """The request's JSON object, refused with the API's own errors (415, 400, 422) when it is not JSON, not an
    object, or holds what Postgres cannot store."""
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send JSON with Content-Type: application/json")
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        body = None  # nested far too deep for the parser
    if body is None:
        raise ApiError(400, "invalid_json", "the request body is not valid JSON")
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    _check_storable(body)
    return body


def _check_storable(body: dict[str, Any]) -> None:
    """Refuse what Postgres cannot store (it would fail the write with a 500): NUL characters and lone
    surrogates in strings, and numbers that are not finite (NaN, Infinity, 1e400); and bodies nested so
    deep that encoding them again would hit the recursion limit."""
    stack: list[tuple[Any, str, int]] = [(body, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ApiError(400, "invalid_json", f"the request body is nested more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(value, float) and not math.isfinite(value):
            raise ApiError(400, "invalid_json", "numbers must be finite (no NaN, Infinity or overflowing values)",
                           {"field": path or "(body)"})
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            where = f"{path}.{key}" if path else str(key)
            for text in (key, item):
                if isinstance(text, str) and not _storable_text(text):
                    raise ApiError(422, "validation_error", "the request body failed validation", [{
                        "field": where, "problem": "NUL characters and unpaired surrogates cannot be stored",
                        "type": "string_unstorable"}])
            if isinstance(item, (dict, list, float)):
                stack.append((item, where, depth + 1))


def _storable_text(text: str) -> bool:
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
