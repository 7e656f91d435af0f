"""What the suite's benchmarks share: the figure they report (a value next to a baseline measured in the same run,
as a ratio, with its target and the load average), interleaved rounds (A B B A ...), the machine and versions,
wrk runs and process memory.

Every ratio is comfyq / baseline, whatever the unit: above 1 means more jobs/s or more milliseconds than the
baseline; each target says which way it points."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from comfyq.db import connect_once
from comfyq.settings import get_settings

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
PACKAGES = ("comfyq", "pgqueuer", "asyncpg", "procrastinate", "psycopg", "psycopg2-binary", "flask", "gunicorn",
            "pydantic")


def load() -> str:
    """The load average (1/5/15 min), as printed next to every figure."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


@dataclass
class Figure:
    """One row of the results table. ratio = value / baseline; a target bounds the ratio, the value, or both."""

    bench: str
    name: str
    unit: str
    value: float
    baseline_name: str = ""
    baseline: float | None = None
    min_ratio: float | None = None
    max_ratio: float | None = None
    min_value: float | None = None
    max_value: float | None = None
    main: bool = False  # drawn in the chart
    target_text: str | None = None  # a target the bounds above cannot say (then met_override decides)
    met_override: bool | None = None
    note: str = ""
    load: str = field(default_factory=load)
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline  # type: ignore[operator]

    @property
    def target(self) -> str:
        if self.target_text is not None:
            return self.target_text
        parts = []
        if self.min_value is not None:
            parts.append(f">= {fmt(self.min_value)} {self.unit}")
        if self.max_value is not None:
            parts.append(f"<= {fmt(self.max_value)} {self.unit}")
        if self.min_ratio is not None:
            parts.append(f">= {self.min_ratio:g}x")
        if self.max_ratio is not None:
            parts.append(f"<= {self.max_ratio:g}x")
        return ", ".join(parts) or "(context)"

    @property
    def met(self) -> bool | None:
        if self.met_override is not None:
            return self.met_override
        checks = []
        if self.min_value is not None:
            checks.append(self.value >= self.min_value)
        if self.max_value is not None:
            checks.append(self.value <= self.max_value)
        ratio = self.ratio
        if self.min_ratio is not None:
            checks.append(ratio is not None and ratio >= self.min_ratio)
        if self.max_ratio is not None:
            checks.append(ratio is not None and ratio <= self.max_ratio)
        return all(checks) if checks else None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(ratio=self.ratio, target=self.target, met=self.met)
        return out


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.4g}"


def table(figures: list[Figure]) -> str:
    """The results as fixed-width text: figure, comfyq, baseline, ratio, target, met?, load."""
    rows = [("figure", "comfyq", "baseline", "ratio", "target", "met?", "load 1/5/15")]
    for f in figures:
        base = f"{fmt(f.baseline)} ({f.baseline_name})" if f.baseline is not None else f.baseline_name or "-"
        met = {True: "yes", False: "NO", None: "-"}[f.met]
        rows.append((f"{f.bench}: {f.name}", f"{fmt(f.value)} {f.unit}", base,
                     "-" if f.ratio is None else f"{f.ratio:.2f}x", f.target, met, f.load))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  [{f.bench}: {f.name}] {f.note}" for f in figures if f.note]
    return "\n".join(lines + (["", "notes:", *notes] if notes else []))


def markdown(figures: list[Figure]) -> str:
    lines = ["| figure | comfyq | baseline | ratio | target | met? | load (1/5/15 min) |",
             "|---|---|---|---|---|---|---|"]
    for f in figures:
        base = f"{fmt(f.baseline)} {f.unit} ({f.baseline_name})" if f.baseline is not None else f.baseline_name or "-"
        met = {True: "yes", False: "**no**", None: "-"}[f.met]
        lines.append(f"| {f.bench}: {f.name} | {fmt(f.value)} {f.unit} | {base} | "
                     f"{'-' if f.ratio is None else f'{f.ratio:.2f}x'} | {f.target} | {met} | {f.load} |")
    return "\n".join(lines)


def interleave(rounds: int, runs: dict[str, Callable[[], Any]]) -> dict[str, list[Any]]:
    """Each run once per round, the order reversed every other round (A B, B A, A B ...), so a slow drift of
    the machine's load weighs on every run alike. Returns each run's results in round order."""
    results: dict[str, list[Any]] = {name: [] for name in runs}
    for index in range(rounds):
        order = list(runs.items())
        if index % 2:
            order.reverse()
        for name, run in order:
            results[name].append(run())
    return results


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return float(ordered[rank])


# Machine and versions ---------------------------------------------------------------------------------------
def server_url() -> str:
    return get_settings().database_url or DEFAULT_SERVER


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cores": os.cpu_count(), "arch": platform.machine(),
                            "python": platform.python_version(), "kernel": platform.release()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 1048576, 1)
    conn = connect_once(server_url())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('server_version'), current_setting('synchronous_commit'), "
                        "current_setting('fsync'), current_setting('shared_buffers')")
            version, sync, fsync, buffers = cur.fetchone()
    finally:
        conn.close()
    info.update(postgres=version, synchronous_commit=sync, fsync=fsync, shared_buffers=buffers)
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    wrk = shutil.which("wrk")
    if wrk:
        out = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
        versions["wrk"] = (out.stdout or out.stderr).split()[1] if (out.stdout or out.stderr).split() else "?"
    info["versions"] = versions
    return info


def machine_text(info: dict[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    return (f"machine: {info['cores']} cores ({info.get('cpu', '?')}, {info['arch']}), "
            f"{info.get('memory_gib', '?')} GiB, Linux {info['kernel']}\n"
            f"Python {info['python']}; PostgreSQL {info['postgres']} (synchronous_commit={info['synchronous_commit']}, "
            f"fsync={info['fsync']}, shared_buffers={info['shared_buffers']})\n"
            f"versions: {versions}")


# Processes --------------------------------------------------------------------------------------------------
def rss_mb(pid: int) -> float:
    """Resident set size of one process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK_JSON {"requests": %d, "duration_us": %d, "socket_errors": %d, "non2xx": %d, '
    .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


def wrk_script(path: Path, method: str = "GET", body: str | None = None,
               headers: dict[str, str] | None = None) -> Path:
    """A wrk Lua script sending one fixed request and printing its summary as JSON."""
    lines = [f"wrk.method = {json.dumps(method)}"]
    if body is not None:
        lines.append(f"wrk.body = {json.dumps(body)}")
    for key, value in (headers or {}).items():
        lines.append(f"wrk.headers[{json.dumps(key)}] = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n" + WRK_DONE)
    return path


def run_wrk(url: str, script: Path, *, seconds: float, connections: int = 8, threads: int = 1) -> dict[str, Any]:
    """A bounded wrk run against a loopback URL. Returns requests/s, latency percentiles (ms) and errors."""
    if not url.startswith(("http://127.", "http://localhost")):
        raise ValueError(f"load goes to loopback only, not {url}")
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s", "--timeout", "10s",
            "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out.stdout}\n{out.stderr}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    return {"requests": raw["requests"], "rps": raw["requests"] / (raw["duration_us"] / 1e6),
            "p50_ms": raw["p50_us"] / 1000, "p90_ms": raw["p90_us"] / 1000, "p99_ms": raw["p99_us"] / 1000,
            "max_ms": raw["max_us"] / 1000, "errors": raw["socket_errors"] + raw["non2xx"]}


def standalone(run: Callable[[Path, bool], list[Figure]], doc: str | None, argv: list[str] | None = None) -> int:
    """`python -m bench.<module> [--quick] [--json PATH]`: one benchmark on its own, printed like the suite."""
    import argparse  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from comfyq.logs import configure  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller runs (CI: proves it still runs)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    configure("WARNING")
    work = Path(tempfile.mkdtemp(prefix="comfyq-bench-"))
    figures = run(work, args.quick)
    print(table(figures))
    print()
    print(machine_text(machine()))
    if args.json:
        args.json.write_text(json.dumps([f.as_dict() for f in figures], indent=2))
    return 0


class Gunicorn:
    """A gunicorn master started with its output going straight to a file (no pump thread in the bench's own
    process, which shares the two cores with what it measures). Stopped by its pid: SIGTERM, then SIGKILL."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> None:
        import re  # noqa: PLC0415
        import signal  # noqa: PLC0415
        import sys  # noqa: PLC0415

        self._signal = signal
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0", *args],
                                     env={**os.environ, **env, "PYTHONUNBUFFERED": "1"}, cwd=cwd,
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        self.url = ""
        while time.monotonic() < deadline and self.proc.poll() is None:
            text = log_path.read_text(errors="replace")
            match = re.search(r"Listening at: (http://\S+)", text)
            if match and "Booting worker" in text:
                self.url = match.group(1)
                break
            time.sleep(0.1)
        if not self.url:
            self.stop()
            raise RuntimeError(f"gunicorn did not start; see {log_path}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def workers(self) -> list[int]:
        return children(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(self._signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def comfyq_api(work: Path, env: dict[str, str], *, workers: int | None = None) -> Gunicorn:
    """comfyq's API exactly as `comfyq api` runs it (comfyq/api/gunicorn_conf.py), on a free loopback port."""
    from comfyq.resources import gunicorn_config  # noqa: PLC0415
    from comfyq.settings import PROJECT_ROOT  # noqa: PLC0415

    args = ["-c", str(gunicorn_config())]
    if workers is not None:
        args += ["--workers", str(workers)]
    return Gunicorn([*args, "comfyq.api.app:create_app()"], env, work / "logs" / "webhook-api.log", PROJECT_ROOT)


def api_workers_default() -> int:
    """What comfyq/api/gunicorn_conf.py picks when COMFYQ_API_WORKERS is unset."""
    return min(8, len(os.sched_getaffinity(0)) * 2 + 1)
