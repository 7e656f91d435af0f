"""Render a dashboard's Postgres panels to a PNG without Grafana: make a scratch database, fill it with a few
hours of simulated traffic (grafana/sample_data.py), run every panel's SQL with Grafana's macros expanded, as
the read-only role comfyq_grafana, and draw each panel where the dashboard places it.

    .venv/bin/python grafana/render_preview.py                      # docs/grafana-queue-overview.png
    .venv/bin/python grafana/render_preview.py --dashboard workers.json --out /tmp/workers.png

The server is --server-url, else TEST_DATABASE_URL, else DATABASE_URL, else the embedded one; the scratch
database is dropped afterwards. Prometheus panels are drawn as placeholders (there is no Prometheus here)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.gridspec import GridSpec
from matplotlib.ticker import PercentFormatter

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file: make `grafana` importable from the checkout
    sys.path.insert(0, str(ROOT))

from comfyq.connect import database_url  # noqa: E402
from comfyq.db import Database, connect_once  # noqa: E402
from comfyq.migrate import migrate  # noqa: E402
from comfyq.settings import get_settings  # noqa: E402
from grafana.panels import (  # noqa: E402
    DASHBOARDS_DIR,
    TimeRange,
    expand_macros,
    iter_panels,
    load_dashboard,
    parse_interval,
)
from grafana.sample_data import populate  # noqa: E402

ROLE = "comfyq_grafana"
# Grafana's dark theme and its named colours.
BACKGROUND, PANEL, TEXT, MUTED, GRID = "#111217", "#181b1f", "#d8d9da", "#8e8e8e", "#2c3235"
COLORS = {"green": "#73bf69", "red": "#f2495c", "orange": "#ff9830", "yellow": "#fade2a", "blue": "#5794f2",
          "purple": "#b877d9", "text": TEXT}
PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0"]


@contextlib.contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    name = f"comfyq_preview_{uuid.uuid4().hex[:8]}"
    admin = connect_once(server_url)
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(server_url)
    try:
        yield urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


# Values -----------------------------------------------------------------------------------------------------------
def _float(value: Any) -> float | None:
    if value is None:
        return None
    return float(value) if isinstance(value, (int, float, Decimal)) else None


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def _format(value: Any, unit: str) -> str:
    number = _float(value)
    if number is None:
        return "" if value is None else str(value)[:60]
    if unit == "s":
        return _duration(number)
    if unit == "percentunit":
        return f"{number * 100:.1f}%"
    return f"{number:,.0f}" if number == int(number) else f"{number:,.2f}"


def _threshold_color(panel: dict[str, Any], value: float | None) -> str:
    steps = panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])
    color = "green"
    for step in steps:
        if step["value"] is None or (value is not None and value >= step["value"]):
            color = step["color"]
    return COLORS.get(color, color)


def _fixed_colors(panel: dict[str, Any]) -> dict[str, str]:
    colors = {}
    for override in panel["fieldConfig"].get("overrides", []):
        for prop in override["properties"]:
            if prop["id"] == "color" and prop["value"].get("fixedColor"):
                colors[override["matcher"]["options"]] = COLORS.get(prop["value"]["fixedColor"], TEXT)
    return colors


# Panels -------------------------------------------------------------------------------------------------------------
def _style(ax: Axes, title: str) -> None:
    ax.set_facecolor(PANEL)
    ax.set_title(title, loc="left", color=TEXT, fontsize=11, fontweight="bold", pad=8)
    for spine in ax.spines.values():
        spine.set_color(GRID)
    ax.tick_params(colors=MUTED, labelsize=8)
    ax.grid(True, color=GRID, linewidth=0.6)
    ax.set_axisbelow(True)


def draw_stat(ax: Axes, panel: dict[str, Any], columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    _style(ax, panel["title"])
    ax.grid(False)
    ax.set_xticks([])
    ax.set_yticks([])
    unit = panel["fieldConfig"]["defaults"].get("unit", "short")
    row = rows[0] if rows else (None,) * len(columns)
    fields = [(c, v) for c, v in zip(columns, row, strict=True) if _float(v) is not None]
    many = len(fields) > 1
    for i, (column, value) in enumerate(fields):
        x = (i + 0.5) / len(fields)
        color = _threshold_color(panel, _float(value))
        ax.text(x, 0.45 if many else 0.42, _format(value, unit), ha="center", va="center", color=color,
                fontsize=20 if many else 26, fontweight="bold", transform=ax.transAxes)
        if many:
            ax.text(x, 0.15, column, ha="center", va="center", color=MUTED, fontsize=9, transform=ax.transAxes)


def draw_bargauge(ax: Axes, panel: dict[str, Any], columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    _style(ax, panel["title"])
    ax.grid(True, axis="x", color=GRID, linewidth=0.6)
    unit = panel["fieldConfig"]["defaults"].get("unit", "short")
    labels, values = [], []
    for row in rows:
        labels.append(" ".join(str(v) for v in row if _float(v) is None))
        values.append(next((_float(v) for v in row if _float(v) is not None), 0.0) or 0.0)
    ax.barh(labels[::-1], values[::-1], color=[_threshold_color(panel, v) for v in values[::-1]], height=0.6)
    for y, value in enumerate(values[::-1]):
        ax.text(value, y, " " + _format(value, unit), va="center", color=TEXT, fontsize=9)


def draw_table(ax: Axes, panel: dict[str, Any], columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    _style(ax, panel["title"])
    ax.grid(False)
    ax.axis("off")
    units = {o["matcher"]["options"]: p["value"] for o in panel["fieldConfig"].get("overrides", [])
             for p in o["properties"] if p["id"] == "unit"}
    default = panel["fieldConfig"]["defaults"].get("unit", "short")
    cells = [[_format(v, units.get(c, default)) for c, v in zip(columns, row, strict=True)] for row in rows[:10]]
    if not cells:
        ax.text(0.5, 0.5, "No data", ha="center", va="center", color=MUTED, transform=ax.transAxes)
        return
    table = ax.table(cellText=cells, colLabels=columns, loc="upper center", cellLoc="left", colLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.5)
    for (r, _c), cell in table.get_celld().items():
        cell.set_edgecolor(GRID)
        cell.set_facecolor(PANEL if r else "#22252b")
        cell.get_text().set_color(TEXT if r else MUTED)


def draw_barchart(ax: Axes, panel: dict[str, Any], columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    _style(ax, panel["title"])
    x_field = panel["options"]["xField"]
    labels = [str(row[columns.index(x_field)]) for row in rows]
    colors = _fixed_colors(panel)
    bottom = [0.0] * len(rows)
    for i, column in enumerate(c for c in columns if c != x_field):
        values = [_float(row[columns.index(column)]) or 0.0 for row in rows]
        ax.bar(labels, values, bottom=bottom, label=column, color=colors.get(column, PALETTE[i % len(PALETTE)]),
               width=0.6)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_ylim(0, max(bottom, default=0) * 1.2 or 1)  # room above the tallest bar for the legend
    _legend(ax)


def draw_timeseries(ax: Axes, panel: dict[str, Any], columns: list[str], rows: list[tuple[Any, ...]],
                    bucket_seconds: float) -> None:
    _style(ax, panel["title"])
    series: dict[str, list[tuple[float, float]]] = {}  # name: [(matplotlib date number, value)]
    t = columns.index("time")
    for row in rows:
        when = float(mdates.date2num(datetime.fromtimestamp(float(row[t]), UTC)))
        if "metric" in columns:
            value = _float(row[columns.index("value")])
            series.setdefault(str(row[columns.index("metric")]), []).append((when, value or 0.0))
        else:
            for i, column in enumerate(columns):
                if column != "time":
                    series.setdefault(column, []).append((when, _float(row[i]) or 0.0))
    colors = _fixed_colors(panel)
    custom = panel["fieldConfig"]["defaults"].get("custom", {})
    bars = custom.get("drawStyle") == "bars"
    stacked = custom.get("stacking", {}).get("mode") == "normal"
    width = bucket_seconds * 0.9 / 86400  # date numbers count days
    base: dict[float, float] = {}
    for i, (name, points) in enumerate(series.items()):
        color = colors.get(name, PALETTE[i % len(PALETTE)])
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        if bars:
            bottoms = [base.get(x, 0.0) if stacked else 0.0 for x in xs]
            ax.bar(xs, ys, bottom=bottoms, width=width, align="edge", label=name, color=color, alpha=0.85)
            for x, y in zip(xs, ys, strict=True):
                base[x] = base.get(x, 0.0) + y
        else:
            ax.plot(xs, ys, label=name, color=color, linewidth=1.4)
            ax.fill_between(xs, ys, color=color, alpha=0.08)
    unit = panel["fieldConfig"]["defaults"].get("unit", "short")
    if unit == "percentunit":
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    elif unit == "s":
        ax.set_ylabel("seconds", color=MUTED, fontsize=9)
    if "max" in panel["fieldConfig"]["defaults"]:
        ax.set_ylim(panel["fieldConfig"]["defaults"].get("min", 0), panel["fieldConfig"]["defaults"]["max"] * 1.05)
    ax.xaxis_date()
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    _legend(ax)


def _legend(ax: Axes) -> None:
    if ax.get_legend_handles_labels()[0]:
        legend = ax.legend(loc="upper left", fontsize=8, frameon=False, ncols=4)
        for text in legend.get_texts():
            text.set_color(TEXT)


# The dashboard ------------------------------------------------------------------------------------------------------
def render(dashboard_path: Path, url: str, out: Path, time_range: TimeRange, bucket_seconds: float = 60.0) -> None:
    """Draw every panel of the dashboard. Time series are bucketed by the panel's minimum interval or
    bucket_seconds, whichever is larger (Grafana picks $__interval from the range and the panel's width)."""
    dashboard = load_dashboard(dashboard_path)
    panels = list(iter_panels(dashboard["panels"]))
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(20, height * 0.7), facecolor=BACKGROUND)
    grid = GridSpec(height, 24, figure=fig, left=0.03, right=0.99, top=0.94, bottom=0.03, hspace=3.2, wspace=1.4)
    fig.suptitle(f"{dashboard['title']}   ·   simulated data, {time_range.start:%H:%M} to {time_range.end:%H:%M} UTC"
                 f"   ·   time series in {bucket_seconds / 60:g}-minute buckets",
                 x=0.03, ha="left", color=TEXT, fontsize=15, fontweight="bold")
    conn = connect_once(url)
    try:
        cur = conn.cursor()
        cur.execute(f"SET ROLE {ROLE}")
        for panel in panels:
            pos = panel["gridPos"]
            ax = fig.add_subplot(grid[pos["y"]:pos["y"] + pos["h"], pos["x"]:pos["x"] + pos["w"]])
            target = panel["targets"][0]
            if "rawSql" not in target:
                _style(ax, panel["title"])
                ax.grid(False)
                ax.set_xticks([])
                ax.set_yticks([])
                ax.text(0.5, 0.5, "Prometheus panel (not rendered here)", ha="center", va="center", color=MUTED,
                        transform=ax.transAxes)
                continue
            interval = max(parse_interval(panel["interval"]) if panel.get("interval") else 60.0, bucket_seconds)
            bucketed = TimeRange(time_range.start, time_range.end, interval)
            cur.execute(expand_macros(target["rawSql"], bucketed))
            rows = cur.fetchall()
            columns = [d.name for d in cur.description]
            kind = panel["type"]
            if kind == "stat":
                draw_stat(ax, panel, columns, rows)
            elif kind == "bargauge":
                draw_bargauge(ax, panel, columns, rows)
            elif kind == "table":
                draw_table(ax, panel, columns, rows)
            elif kind == "barchart":
                draw_barchart(ax, panel, columns, rows)
            else:
                draw_timeseries(ax, panel, columns, rows, interval)
    finally:
        conn.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, facecolor=BACKGROUND)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dashboard", default="queue-overview.json", help="file name in grafana/dashboards")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "grafana-queue-overview.png")
    parser.add_argument("--minutes", type=float, default=180, help="simulated traffic, ending now")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--bucket", default="5m", help="smallest time bucket of the time series (e.g. 1m, 5m)")
    parser.add_argument("--server-url", help="admin URL of a PostgreSQL server (a scratch database is made)")
    args = parser.parse_args(argv)
    server = (args.server_url or os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
              or database_url(get_settings()))
    with scratch_database(server) as url:
        db = Database(url, ROOT / "sql")
        try:
            migrate(db, ROOT / "sql" / "migrations")
            populate(db, args.minutes, seed=args.seed)
        finally:
            db.close()
        now = datetime.now(UTC)
        render(DASHBOARDS_DIR / args.dashboard, url, args.out,
               TimeRange(now - timedelta(minutes=args.minutes), now + timedelta(seconds=30)),
               parse_interval(args.bucket))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
