"""Named SQL queries loaded from sql/queries/*.sql, so no SQL lives in Python code."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from comfyq.errors import ConfigurationError

_HEADER = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*(?:--)?\s*$", re.MULTILINE)


def parse_queries(text: str, source: str = "<string>") -> dict[str, str]:
    """Split a file on `-- name: x` headers; the query runs to the next header."""
    queries: dict[str, str] = {}
    headers = list(_HEADER.finditer(text))
    for index, match in enumerate(headers):
        end = headers[index + 1].start() if index + 1 < len(headers) else len(text)
        body = text[match.end():end].strip()
        name = match.group(1)
        if not body:
            raise ConfigurationError(f"{source}: query {name!r} is empty")
        if name in queries:
            raise ConfigurationError(f"{source}: query {name!r} is defined twice")
        queries[name] = body
    return queries


@lru_cache(maxsize=4)
def load_positional(sql_dir: Path) -> dict[str, PositionalQuery]:
    """The PREPARE forms of every preparable named query."""
    forms = {name: positional(sql) for name, sql in load_queries(sql_dir).items()}
    return {name: form for name, form in forms.items() if form is not None}


@lru_cache(maxsize=4)
def load_queries(sql_dir: Path) -> dict[str, str]:
    """All named queries of the project, keyed by name; duplicate names across files are an error."""
    queries: dict[str, str] = {}
    files = sorted((sql_dir / "queries").glob("*.sql"))
    if not files:
        raise ConfigurationError(f"no query files under {sql_dir / 'queries'}")
    for path in files:
        for name, body in parse_queries(path.read_text(encoding="utf-8"), str(path)).items():
            if name in queries:
                raise ConfigurationError(f"{path}: query {name!r} is already defined in another file")
            queries[name] = body
    return queries


_PARAM = re.compile(r"%\((?P<name>[a-z_][a-z0-9_]*)\)s|%%")
_PREPARABLE = re.compile(r"^(?:\s*--[^\n]*\n)*\s*(?:SELECT|INSERT|UPDATE|DELETE|WITH|VALUES)\b", re.IGNORECASE)


@dataclass(frozen=True)
class PositionalQuery:
    """A named query rewritten for PREPARE: `%(name)s` becomes `$n` (one number per distinct name, in order of
    first use) and `%%` becomes `%`, because PREPARE takes server-side placeholders and psycopg2 formats nothing."""

    sql: str
    params: tuple[str, ...]


def positional(sql: str) -> PositionalQuery | None:
    """The PREPARE form of a query, or None for statements PREPARE does not take (LISTEN, DDL, SET ...)."""
    if not _PREPARABLE.match(sql):
        return None
    sql = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    names: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        if name is None:
            return "%"
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return PositionalQuery(_PARAM.sub(replace, sql).rstrip().rstrip(";"), tuple(names))


_COMMENT = re.compile(r"--[^\n]*")
_READ_START = re.compile(r"^\s*(?:SELECT|WITH|VALUES|TABLE|SHOW)\b", re.IGNORECASE)
# Words that write (or may: FOR UPDATE locks rows, which is harmless but rare in a read), and any call of the
# project's own functions (comfyq_*), which may write; every function that writes in sql/migrations is one.
_WRITE_WORDS = re.compile(r"\b(?:INSERT|UPDATE|DELETE|MERGE|TRUNCATE|COPY|CALL|NOTIFY|pg_notify|nextval|setval|"
                          r"lo_\w+)\b|\bcomfyq_\w+\s*\(", re.IGNORECASE)


def may_write(sql: str) -> bool:
    """False only for a statement that certainly writes nothing: a SELECT (or WITH, VALUES, ...) with no data
    changing word and no call of a comfyq_* function. When the connection is lost after such a statement was
    sent nothing can have changed (DatabaseUnavailable); for any other the outcome is unknown (OutcomeUnknown).
    Wrongly calling a read a write only costs a cautious answer, so the test errs that way."""
    text = _COMMENT.sub("", sql)
    return not _READ_START.match(text) or bool(_WRITE_WORDS.search(text))
