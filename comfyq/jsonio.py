"""Fast JSON for the hot paths (rendering templates, sending 10k-job batches to Postgres): orjson, which is
several times quicker than the standard library, with the standard library as the fallback for the values
orjson refuses (integers beyond 64 bits, which JSON allows and jsonb stores)."""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any) -> str:
    """Compact JSON text of value."""
    try:
        return orjson.dumps(value).decode()
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def loads(text: str | bytes) -> Any:
    """Parse JSON text that this process produced itself (templates, stored documents)."""
    return orjson.loads(text)
