"""Reading a request's JSON body the same way on every route that takes one: measured while it is read (bytes,
values, batch items) and refused before it is parsed when it is too large, then refused before any work when it
is not a JSON object or holds what Postgres cannot store."""

from __future__ import annotations

import itertools
import json
import math
from typing import IO, Any, TypeVar, cast

import orjson
from flask import request
from pydantic import BaseModel
from werkzeug.wsgi import LimitedStream

from comfyq.api.api_errors import MAX_LISTED_ERRORS, ApiError, capped
from comfyq.api.json_shape import JsonShape, ShapeExceeded, ShapeLimits

MAX_JSON_DEPTH = 64  # a ComfyUI graph nests about 5 levels deep
# A body may hold one JSON value per this many bytes of its limit. Ordinary JSON takes 11 bytes or more a value
# (a compact ComfyUI graph), so only bodies packed with tiny values ({} or 1, at 2 or 3 bytes) meet it before the
# byte limit. Parsed, those cost up to 25 times their size; at this bound, at most about 1.4 times what a body of
# ordinary JSON at the byte limit costs (measured: 578 MiB for 8M two-letter strings, 426 MiB for 64 MiB of graphs).
BYTES_PER_VALUE = 8
READ_CHUNK = 65536


def json_body(*, max_bytes: int | None = None, max_list_items: int | None = None) -> dict[str, Any]:
    """The request's JSON object, refused with the API's own errors (415, 413, 400, 422): over max_bytes (the
    app's MAX_CONTENT_LENGTH by default) or its share of values, a list under the top level longer than
    max_list_items (413 batch_too_large), not JSON, not an object, or holding what Postgres cannot store."""
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send JSON with Content-Type: application/json")
    limit = max_bytes or request.max_content_length
    assert limit is not None, "every app sets MAX_CONTENT_LENGTH"
    data = _read(limit, ShapeLimits(max_values=limit // BYTES_PER_VALUE, max_list_items=max_list_items))
    body = _parse(data)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the request body must be a JSON object")
    _check_storable(body)
    return body


Model = TypeVar("Model", bound=BaseModel)


def validated(model: type[Model], data: Any) -> Model:
    """model.model_validate(data), with unknown keys refused first when the model forbids them: pydantic makes an
    error object for each one, so a body of a million keys would hold (and answer) a million errors."""
    if isinstance(data, dict) and model.model_config.get("extra") == "forbid":
        fields = model.model_fields
        unknown = list(itertools.islice((key for key in data if key not in fields), MAX_LISTED_ERRORS))
        if unknown:
            total = len(data.keys() - fields.keys())
            raise ApiError(422, "validation_error", "the request body failed validation", capped(
                [{"field": key, "problem": "Extra inputs are not permitted", "type": "extra_forbidden"}
                 for key in unknown], total))
    return model.model_validate(data)


def too_many_items(found: int | None, limit: int) -> ApiError:
    """The batch_too_large refusal; `found` is None when counting stopped at the limit."""
    details: dict[str, Any] = {"limit": limit} if found is None else {"jobs": found, "limit": limit}
    return ApiError(413, "batch_too_large", f"a batch holds at most {limit} jobs", details)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "request_entity_too_large", f"the request body is larger than {limit} bytes",
                    {"max_bytes": limit})


def _read(limit: int, shape_limits: ShapeLimits) -> bytearray:
    """The body, measured while it is read: a Content-Length over the limit is refused before a byte is read, a
    chunked body as soon as it passes the limit, and a body over its values or items as soon as the scan sees
    it (the rest, within the limit, is read and dropped, so that the client, still sending, hears the answer)."""
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(limit)
    environ = request.environ
    # With a length, the stream is cut there (a short body is a ClientDisconnected, 400). Without one, a server
    # that sets wsgi.input_terminated ends the stream itself (chunked encoding), and each read asks for at most one
    # byte beyond the limit, which tells a body of exactly the limit from a longer one. (werkzeug's request.stream
    # would cut both at the limit, and raise on that one-byte read even when the body ends there.)
    stream: IO[bytes]
    if length is not None:
        stream = cast(IO[bytes], LimitedStream(environ["wsgi.input"], length))
    elif environ.get("wsgi.input_terminated"):
        stream = environ["wsgi.input"]
    else:
        return bytearray()  # no length and a server that does not end the stream: nothing can be read safely
    shape = JsonShape(shape_limits)
    data = bytearray()
    while chunk := stream.read(min(READ_CHUNK, limit + 1 - len(data))):
        data += chunk
        if len(data) > limit:
            raise _too_large(limit)
        try:
            shape.feed(chunk)
        except ShapeExceeded as exc:
            _drop(stream, limit - len(data))
            if exc.limit == "list_items":
                raise too_many_items(None, exc.bound) from exc
            raise ApiError(413, "request_entity_too_large", f"the request body holds more than {exc.bound} JSON "
                           f"values (one per {BYTES_PER_VALUE} bytes of its {limit}-byte limit)",
                           {"max_values": exc.bound}) from exc
    return data


def _drop(stream: IO[bytes], budget: int) -> None:
    """Read and forget what is left of the body, at most budget bytes, a chunk at a time."""
    while budget > 0 and (chunk := stream.read(min(READ_CHUNK, budget))):
        budget -= len(chunk)


def _parse(data: bytearray) -> Any:
    """orjson, which is quick; the standard library for what orjson refuses but JSON allows, or that _check_storable
    should name (integers beyond 64 bits, NaN and Infinity, lone surrogates, other encodings than UTF-8)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested far too deep for the parser
        raise ApiError(400, "invalid_json", "the request body is not valid JSON") from exc


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
