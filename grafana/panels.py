"""The dashboards in grafana/dashboards as data: their panels and queries, and Grafana's SQL macros expanded the
way Grafana's PostgreSQL datasource expands them, so tests and the preview renderer can run a panel's query
on a real database. Only the macros the dashboards use are known; any other `$name` is an error."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

GRAFANA_DIR = Path(__file__).resolve().parent
DASHBOARDS_DIR = GRAFANA_DIR / "dashboards"
PROVISIONING_DIR = GRAFANA_DIR / "provisioning"

POSTGRES_TYPES = frozenset({"grafana-postgresql-datasource", "postgres"})
PROMETHEUS_TYPE = "prometheus"

# $__name(args): the same pattern as Grafana's macro engine (arguments cannot hold a closing parenthesis).
_MACRO = re.compile(r"\$(_{2}[A-Za-z0-9_]+)\(([^)]*)\)")
_LEFTOVER = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*")
_INTERVAL = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class UnknownMacro(ValueError):
    """The query uses a macro or variable this expander does not know (nor, perhaps, Grafana)."""


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime
    interval_seconds: float = 60.0  # what Grafana picks for $__interval (at least the panel's min interval)


@dataclass(frozen=True)
class Target:
    dashboard: str  # file name
    dashboard_uid: str
    panel: dict[str, Any]
    target: dict[str, Any]
    datasource: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.dashboard}: {self.panel.get('title')} [{self.target.get('refId')}]"

    @property
    def is_postgres(self) -> bool:
        return self.datasource.get("type") in POSTGRES_TYPES

    @property
    def is_prometheus(self) -> bool:
        return self.datasource.get("type") == PROMETHEUS_TYPE


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS_DIR.glob("*.json"))


def load_dashboard(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside rows (a collapsed row keeps its panels in its own list)."""
    for panel in panels:
        if panel.get("type") == "row":
            yield from iter_panels(panel.get("panels", []))
        else:
            yield panel


def iter_targets(path: Path) -> Iterator[Target]:
    dashboard = load_dashboard(path)
    for panel in iter_panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            datasource = target.get("datasource") or panel.get("datasource") or {}
            yield Target(path.name, str(dashboard.get("uid")), panel, target, datasource)


def parse_interval(text: str) -> float:
    """Seconds of a Grafana interval such as 30s, 1m, 1h."""
    match = _INTERVAL.match(text.strip().strip("'"))
    if not match:
        raise UnknownMacro(f"cannot parse interval {text!r}")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def format_interval(seconds: float) -> str:
    """Grafana's way of writing $__interval: the largest whole unit (1m, 30s, 2h, 500ms)."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{round(seconds * 1000)}ms"


def _rfc3339(moment: datetime) -> str:
    """Go's RFC3339Nano in UTC: no fraction when it is zero, trailing zeros trimmed."""
    utc = moment.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += "." + f"{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


def _number(value: float) -> str:
    return f"{value:g}"


def expand_macros(sql: str, time_range: TimeRange) -> str:
    """The SQL Grafana sends for this time range: $__interval and $__interval_ms first (as the SQL engine does),
    then the $__macro(...) calls; anything left that looks like a variable is refused."""
    sql = sql.replace("$__interval_ms", str(round(time_range.interval_seconds * 1000)))
    sql = sql.replace("$__interval", format_interval(time_range.interval_seconds))
    original = sql

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        args = [arg.strip() for arg in match.group(2).split(",")]
        if name == "__timeGroup":
            # Grafana's pre-5.3 compatibility: $__timeGroup(...) directly followed by a comma gets the alias.
            end = original.find(match.group(0)) + len(match.group(0))
            if end < len(original) and original[end] == ",":
                name = "__timeGroupAlias"
        return _evaluate(name, args, time_range)

    sql = _MACRO.sub(replace, sql)
    leftover = _LEFTOVER.search(sql)
    if leftover:
        raise UnknownMacro(f"unknown macro or variable {leftover.group(0)!r}")
    return sql


def _evaluate(name: str, args: list[str], time_range: TimeRange) -> str:
    column = args[0] if args and args[0] else None
    if name == "__time":
        return f'{_need(column, name)} AS "time"'
    if name == "__timeEpoch":
        return f'extract(epoch from {_need(column, name)}) as "time"'
    if name == "__timeFilter":
        return f"{_need(column, name)} BETWEEN '{_rfc3339(time_range.start)}' AND '{_rfc3339(time_range.end)}'"
    if name == "__timeFrom":
        return f"'{_rfc3339(time_range.start)}'"
    if name == "__timeTo":
        return f"'{_rfc3339(time_range.end)}'"
    if name in ("__timeGroup", "__timeGroupAlias"):
        if len(args) < 2 or len(args) > 3:
            raise UnknownMacro(f"${name} needs a time column, an interval and an optional fill value")
        if len(args) == 3 and not re.fullmatch(r"NULL|previous|-?\d+(\.\d+)?", args[2]):
            raise UnknownMacro(f"${name}: bad fill value {args[2]!r}")
        seconds = _number(parse_interval(args[1]))
        group = f"floor(extract(epoch from {_need(column, name)})/{seconds})*{seconds}"
        return group + ' AS "time"' if name == "__timeGroupAlias" else group
    if name == "__unixEpochFilter":
        col = _need(column, name)
        return (f"{col} >= {int(time_range.start.timestamp())} AND "
                f"{col} <= {int(time_range.end.timestamp())}")
    if name == "__unixEpochFrom":
        return str(int(time_range.start.timestamp()))
    if name == "__unixEpochTo":
        return str(int(time_range.end.timestamp()))
    raise UnknownMacro(f"unknown macro ${name}")


def _need(column: str | None, name: str) -> str:
    if column is None:
        raise UnknownMacro(f"${name} needs a column argument")
    return column
