"""The benchmark suite: every benchmark of bench/, each figure printed next to its baseline measured in the same
run, as a ratio (comfyq / baseline), with its target, whether it is met and the load average at the time, then
the machine and the versions. Benchmarks are not tests: CI runs --quick only to prove they still run.

    make bench                 # the full suite (~20 min), chart in docs/benchmarks.png
    make bench-quick           # CI: smaller runs, under 3 minutes
    .bench-venv/bin/python -m bench.run --only pickup,drain --json out.json

Needs DATABASE_URL (a server where it may create scratch databases; default postgresql://postgres@127.0.0.1:5432/
postgres) and wrk on PATH (Debian: apt-get install wrk). Every benchmark works in a database of its own,
dropped afterwards, and sends load to loopback only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import cancel, claim_scale, drain, events, ingest, memory, pickup, submit
from bench.common import scratch_database
from bench.harness import Figure, load, machine, machine_text, markdown, server_url, table
from comfyq.logs import configure

log = logging.getLogger("bench.run")


def gpu_busy(work: Path, quick: bool) -> list[Figure]:
    """bench/gpu_busy.py: one worker drains jobs of ~250 ms through the stand-in with prefetch off (baseline)
    and on, storing locally and to moto's S3 server."""
    from bench import gpu_busy as gb  # noqa: PLC0415 - imports moto's server only when it runs

    jobs = 20 if quick else 200
    with scratch_database(work) as (url, db):
        results = {r["run"]: r for r in gb.run_all(db, url, work, jobs)}
    figures = []
    for backend in ("local", "s3"):
        on, off = results[f"{backend}-prefetch1"], results[f"{backend}-prefetch0"]
        figures.append(Figure("gpu_busy", f"busy ratio, {backend} storage, prefetch 1", "", on["ratio"],
                              "prefetch 0", off["ratio"], min_value=0.995, main=True,
                              note=f"{jobs} jobs of ~{on['per_job_ms']:.0f} ms per run; span {on['span_s']} s vs "
                                   f"{off['span_s']} s" + (" (QUICK: 20 jobs, the full run has 200)" if quick else ""),
                              samples={"prefetch1": [on["ratio"]], "prefetch0": [off["ratio"]]}))
    return figures


BENCHES: dict[str, Callable[[Path, bool], list[Figure]]] = {
    "ingest": ingest.run,
    "submit": submit.run,
    "pickup": pickup.run,
    "claim_scale": claim_scale.run,
    "drain": drain.run,
    "gpu_busy": gpu_busy,
    "memory": memory.run,
    "cancel": cancel.run,
    "events": events.run,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller runs, under 3 minutes (CI)")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(BENCHES)}")
    parser.add_argument("--json", type=Path, help="write every figure, the machine and the command here")
    parser.add_argument("--markdown", type=Path, help="write the results table as Markdown here")
    parser.add_argument("--chart", type=Path, help="draw the main figures into this PNG")
    args = parser.parse_args(argv)
    configure("WARNING")
    os.environ.setdefault("DATABASE_URL", server_url())
    names = [n.strip() for n in args.only.split(",")] if args.only else list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    command = " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])])
    info = machine()
    print(machine_text(info), flush=True)
    print(f"mode: {'QUICK (smaller runs; CI proves the suite still runs)' if args.quick else 'full'}; "
          f"load average at start {load()}\n", flush=True)
    work = Path(tempfile.mkdtemp(prefix="comfyq-bench-"))
    figures: list[Figure] = []
    failed: dict[str, str] = {}
    started = time.monotonic()
    for name in names:
        t0 = time.monotonic()
        print(f"== {name} ...", flush=True)
        try:
            (work / name).mkdir(parents=True, exist_ok=True)
            new = BENCHES[name](work / name, args.quick)
        except (Exception, SystemExit) as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
            print(f"== {name} FAILED after {time.monotonic() - t0:.0f} s: {exc}\n", flush=True)
            continue
        figures.extend(new)
        print(table(new), flush=True)
        print(f"== {name} done in {time.monotonic() - t0:.0f} s\n", flush=True)
    elapsed = time.monotonic() - started
    print("=" * 100)
    print(table(figures))
    print()
    print(machine_text(info))
    print(f"mode: {'QUICK' if args.quick else 'full'}; {len(figures)} figures in {elapsed:.0f} s; load average at "
          f"the end {load()}; logs and EXPLAIN plans under {work}")
    missed = [f"{f.bench}: {f.name}" for f in figures if f.met is False]
    if missed:
        print(f"targets missed: {len(missed)} of {sum(f.met is not None for f in figures)}")
    if failed:
        print("benchmarks that FAILED to run: " + "; ".join(f"{k} ({v})" for k, v in failed.items()))
    result = {"command": command, "quick": args.quick, "machine": info, "elapsed_s": round(elapsed, 1),
              "figures": [f.as_dict() for f in figures], "failed": failed}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(figures) + "\n")
    if args.chart and figures:
        from bench.chart import draw  # noqa: PLC0415

        draw(result, args.chart)
        print(f"chart: {args.chart}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
