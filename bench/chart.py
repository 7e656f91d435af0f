"""The chart of the main figures (docs/benchmarks.png): one panel per benchmark, comfyq beside the baselines of
the same run; a panel's title says whether its targets are met.

    .bench-venv/bin/python -m bench.chart build/bench/results.json docs/benchmarks.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COMFYQ = "#2b6cb0"
BASE = "#a0aec0"
GOOD, BAD = "#2f855a", "#c53030"


def _bars(ax: Any, labels: list[str], values: list[float], colors: list[str], unit: str, fmt: str = "{:,.0f}") -> None:
    bars = ax.bar(range(len(values)), values, color=colors)
    ax.set_xticks(range(len(values)), labels, fontsize=7)
    ax.set_ylabel(unit, fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    for bar, value in zip(bars, values):
        ax.annotate(fmt.format(value), (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                    va="bottom", fontsize=7)
    ax.margins(y=0.15)


def _title(ax: Any, text: str, figures: list[dict[str, Any]]) -> None:
    checks = [f["met"] for f in figures if f["met"] is not None]
    ok = all(checks) if checks else None
    mark = "" if ok is None else ("  [met]" if ok else "  [missed]")
    ax.set_title(text + mark, fontsize=9, color=GOOD if ok else BAD if ok is False else "black")


def draw(result: dict[str, Any], path: Path) -> None:
    figs = [f for f in result["figures"] if f.get("main")]
    by: dict[str, list[dict[str, Any]]] = {}
    for f in figs:
        by.setdefault(f["bench"], []).append(f)
    panels = [name for name in ("ingest", "submit", "pickup", "drain", "claim_scale", "gpu_busy", "memory")
              if name in by]
    extra = 1 if "memory" in by else 0
    count = len(panels) + extra
    cols = 4
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(16, 4.2 * rows), squeeze=False)
    slots = iter(axes.flat)
    for name in panels:
        group = by[name]
        ax = next(slots)
        if name == "ingest":
            labels = ["comfyq\nHTTP 10k batch", "direct\nmulti-row INSERT", "pgqueuer\n100 per call"]
            vs_pgq = next(f for f in group if "pgqueuer" in f["baseline_name"])
            values = [group[0]["value"], group[0]["baseline"], vs_pgq["baseline"]]
            _bars(ax, labels, values, [COMFYQ, BASE, BASE], "jobs/s")
            ax.axhline(25_000, color=BAD, ls="--", lw=1)
            ax.annotate("target 25k", (2.4, 25_000), fontsize=7, color=BAD, ha="right", va="bottom")
            _title(ax, f"Batch ingest ({group[0]['ratio']:.2f}x / {vs_pgq['ratio']:.2f}x)", group)
        elif name == "submit":
            _bars(ax, ["comfyq\nPOST /jobs", "Flask\n+1 INSERT"], [group[0]["value"], group[0]["baseline"]],
                  [COMFYQ, BASE], "requests/s")
            _title(ax, f"Single submits, 8 conn. ({group[0]['ratio']:.2f}x)", group)
        elif name == "pickup":
            ms = group[0]["samples"]
            names = [n for n in ("comfyq", "pgqueuer", "procrastinate", "plain") if n in ms]
            p50 = [sorted(ms[n])[len(ms[n]) // 2] for n in names]
            p99 = [sorted(ms[n])[max(0, round(0.99 * len(ms[n]) + 0.5) - 1)] for n in names]
            x = range(len(names))
            ax.bar([i - 0.2 for i in x], p50, 0.4, color=[COMFYQ] + [BASE] * (len(names) - 1), label="p50")
            ax.bar([i + 0.2 for i in x], p99, 0.4, color=[COMFYQ] + [BASE] * (len(names) - 1), alpha=0.55,
                   label="p99")
            for i, (a, b) in enumerate(zip(p50, p99)):
                ax.annotate(f"{a:.1f}", (i - 0.2, a), ha="center", va="bottom", fontsize=7)
                ax.annotate(f"{b:.1f}", (i + 0.2, b), ha="center", va="bottom", fontsize=7)
            ax.set_xticks(list(x), [n if n != "plain" else "plain\nLISTEN loop" for n in names], fontsize=7)
            ax.axhline(2, color=BAD, ls="--", lw=1)
            ax.axhline(6, color=BAD, ls=":", lw=1)
            ax.set_ylabel("ms (left p50, right p99)", fontsize=8)
            ax.tick_params(axis="y", labelsize=7)
            ax.margins(y=0.15)
            _title(ax, f"Pickup latency, idle worker (p50 {group[0]['ratio']:.2f}x pgqueuer)", group)
        elif name == "drain":
            f = group[0]
            _bars(ax, ["comfyq core\nbatch 10, 4 workers", "pgqueuer\nbatch 10, 1 worker"], [f["value"], f["baseline"]],
                  [COMFYQ, BASE], "jobs/s")
            _title(ax, f"Drain, no-op executor ({f['ratio']:.2f}x)", group)
        elif name == "claim_scale":
            f = group[0]
            _bars(ax, ["only the queue", "1M finished\n+100k queued"], [f["baseline"], f["value"]], [BASE, COMFYQ],
                  "ms per claim (median)", "{:.2f}")
            _title(ax, f"Claim cost at scale ({f['ratio']:.2f}x)", group)
        elif name == "gpu_busy":
            labels, values, colors = [], [], []
            for f in group:
                storage = "S3" if "s3" in f["name"] else "local"
                labels += [f"{storage}\nprefetch 0", f"{storage}\nprefetch 1"]
                values += [f["baseline"], f["value"]]
                colors += [BASE, COMFYQ]
            _bars(ax, labels, values, colors, "busy ratio", "{:.4f}")
            ax.set_ylim(0.9, 1.005)
            ax.axhline(0.995, color=BAD, ls="--", lw=1)
            _title(ax, "GPU busy ratio", group)
        elif name == "memory":
            worker = next(f for f in group if "worker" in f["name"])
            api = next(f for f in group if "API" in f["name"])
            s = worker["samples"]
            ax.plot(s["done"], s["rss"], color=COMFYQ)
            ax.axhline(worker["baseline"] + 10, color=BAD, ls="--", lw=1)
            ax.set_xlabel("jobs done", fontsize=8)
            ax.set_ylabel("worker RSS, MB", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.set_ylim(0, max(s["rss"]) * 1.3)
            _title(ax, "Worker memory", [worker])
            ax = next(slots)
            s = api["samples"]
            ax.plot(s["requests"], s["rss_sum"], color=COMFYQ, marker=".")
            ax.set_xlabel("POST /jobs answered", fontsize=8)
            ax.set_ylabel("API RSS, sum of workers, MB", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.set_ylim(0, max(s["rss_sum"]) * 1.3)
            _title(ax, "API memory", [api])
    for ax in slots:
        ax.axis("off")
    info = result["machine"]
    fig.suptitle(f"comfyq benchmarks{' (QUICK)' if result.get('quick') else ''}: {info['cores']} cores "
                 f"{info.get('cpu', '')}, PostgreSQL {info['postgres'].split()[0]}, Python {info['python']}; "
                 "blue = comfyq, grey = baseline measured in the same run", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    draw(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
