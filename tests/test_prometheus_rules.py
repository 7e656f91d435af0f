"""Prometheus: the scrape config and the alert rules pass promtool's checks and unit tests, every alert has a
test that makes it fire, and the rules and the dashboards' PromQL use only metrics that are really exported: the
API's as the real app under gunicorn serves them from each of its workers (with the queue gauges of a seeded
database), the worker's from its metrics registry. The rules are also evaluated by promtool on that real scrape,
so an alert whose series the API does not serve cannot pass.

promtool comes from Debian's `prometheus` package; without it these tests FAIL (CI installs it)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from comfyq.db import Database
from comfyq.jobs import JobQueue, NewJob
from comfyq.worker.metrics import WorkerMetrics
from grafana.panels import dashboard_files, iter_targets
from tests.apps.metrics_app import scrape_every_worker, start_metrics_api
from tests.conftest import SQL_DIR, project_path, scratch_database
from tests.e2e_support import wait_until

PROMETHEUS_DIR = project_path("prometheus")
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
INSTALL = "apt-get update && apt-get install -y --no-install-recommends prometheus"
BUILTIN = {"up"}
# Grafana replaces these in a Prometheus panel's query before sending it.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
METRICS_TOKEN = "prometheus-scrape-0123456789"
API_JOB, WORKER_JOB = "comfyq-api", "comfyq-worker"
WORKER_ID, WORKER_INSTANCE = "gpu-1", "10.0.0.5:9100"


def promtool(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(f"promtool not found: install Debian's prometheus package ({INSTALL})", pytrace=False)
    return subprocess.run([binary, *map(str, args)], input=stdin, capture_output=True, text=True, timeout=120,
                          check=False)


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr


def _scrape_job(name: str) -> dict[str, Any]:
    [job] = [job for job in yaml.safe_load(CONFIG.read_text())["scrape_configs"] if job["job_name"] == name]
    return dict(job)


def test_config_is_valid(tmp_path: Path) -> None:
    """In full, with the metrics token file in a scratch folder: promtool insists that it exists, and the one
    prometheus.yml names exists only inside the Prometheus container (compose puts it there)."""
    _ok(promtool("check", "config", "--syntax-only", CONFIG))
    credentials = _scrape_job(API_JOB)["authorization"]["credentials_file"]
    token = tmp_path / "metrics_token"
    token.write_text(METRICS_TOKEN)
    (tmp_path / "rules").symlink_to(PROMETHEUS_DIR / "rules")
    config = tmp_path / "prometheus.yml"
    config.write_text(CONFIG.read_text().replace(credentials, str(token)))
    _ok(promtool("check", "config", config))


def test_prometheus_sends_the_api_the_metrics_token_compose_gives_both() -> None:
    compose = yaml.safe_load(project_path("docker-compose.yml").read_text())
    [secret] = [name for name, spec in compose["secrets"].items() if spec.get("environment") == "COMFYQ_METRICS_TOKEN"]
    assert secret in compose["services"]["prometheus"]["secrets"]
    assert _scrape_job(API_JOB)["authorization"] == {"type": "Bearer", "credentials_file": f"/run/secrets/{secret}"}
    assert compose["services"]["webhook-api"]["environment"]["COMFYQ_METRICS_TOKEN"].startswith(
        "${COMFYQ_METRICS_TOKEN:?")


def test_rules_are_valid() -> None:
    assert RULE_FILES
    _ok(promtool("check", "rules", *RULE_FILES))


def test_rule_unit_tests_pass() -> None:
    assert TEST_FILES
    _ok(promtool("test", "rules", *TEST_FILES))


def _rules() -> list[dict[str, Any]]:
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]


def test_every_alert_is_tested_firing_and_documented() -> None:
    fired: set[str] = set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):
                    fired.add(check["alertname"])
    alerts = {rule["alert"] for rule in _rules() if "alert" in rule}
    assert alerts - fired == set(), "alerts without a test that makes them fire"
    docs = project_path("docs", "grafana.md").read_text(encoding="utf-8")
    for rule in _rules():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description", "runbook"} <= set(rule["annotations"])
        assert f"### {rule['alert']}" in docs, f"docs/grafana.md says nothing about {rule['alert']}"
        assert rule["annotations"]["runbook"] == f"docs/grafana.md#{rule['alert'].lower()}"


def _metric_names(expr: str) -> set[str]:
    """Metric-looking names in a PromQL expression: identifiers not followed by "(" (functions), not label
    names inside {} or by()/on()/group_left(), not durations or keywords."""
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r'"[^"]*"', "", expr)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr))
    return names - {"and", "or", "unless", "bool", "offset", "vector", "inf", "nan"}


def _panel_exprs() -> list[tuple[str, str]]:
    """(panel, PromQL) of every Prometheus panel, with Grafana's variables replaced as Grafana does."""
    exprs = []
    for path in dashboard_files():
        for target in iter_targets(path):
            if target.is_prometheus:
                expr = target.target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(variable, value)
                exprs.append((target.name, expr))
    return exprs


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    """promtool has no expression checker, so each panel's query becomes a recording rule to check."""
    exprs = _panel_exprs()
    assert exprs
    rules = [{"record": f"comfyq:panel_{i}", "expr": expr} for i, (_name, expr) in enumerate(exprs)]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    _ok(promtool("check", "rules", path))


# The real API under gunicorn ------------------------------------------------------------------------------------
@dataclass
class Live:
    scrapes: list[str]  # /metrics of the API, at least one from each gunicorn worker
    worker: str  # a worker's exposition


def _seed_queue(url: str) -> None:
    """Jobs in every state the queue gauges count: three eligible for two hours (the longest wait), one delayed,
    one running, and one running whose lease ran out (its worker is gone)."""
    db = Database(url, SQL_DIR)
    try:
        graph = {"1": {"class_type": "X", "inputs": {}}}
        for lease in (1.0, 600.0):
            queue = JobQueue(db, lease_seconds=lease)
            queue.enqueue(NewJob(graph=graph, priority=10))
            assert queue.claim(f"w-{lease:g}") is not None
        now = datetime.now(UTC)
        queue.enqueue_many([NewJob(graph=graph, run_at=now - timedelta(hours=2)) for _ in range(3)]
                           + [NewJob(graph=graph, run_at=now + timedelta(hours=1))])
        wait_until(lambda: (queue.summary() or {}).get("expired_leases") == 1, 10, "the short lease to run out")
    finally:
        db.close()


def _worker_exposition() -> str:
    """A worker's /metrics after some work: every labelled series touched, ComfyUI seen down."""
    worker = WorkerMetrics(WORKER_ID)
    worker.jobs("succeeded").inc()
    worker.jobs("failed").inc()
    worker.retries.labels("comfyui_unavailable").inc()
    worker.job_seconds.observe(3.0)
    worker.executed(2.0)
    worker.storage_bytes.inc(1024)
    worker.dependency_up.labels("comfyui").set(0)
    return generate_latest(worker.registry).decode()


@pytest.fixture(scope="module")
def live(server_url: str, template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The API as deployed (comfyq.api.app under gunicorn with the project's config, three workers, the metrics
    folder made by gunicorn_conf.py, a metrics token) on a seeded database."""
    with scratch_database(server_url, template_db) as url:
        _seed_queue(url)
        proc, api = start_metrics_api(tmp_path_factory.mktemp("api"), {
            "DATABASE_URL": url, "COMFYQ_METRICS_TOKEN": METRICS_TOKEN}, workers=3)
        try:
            scrapes = scrape_every_worker(proc, api, {"Authorization": f"Bearer {METRICS_TOKEN}"})
        finally:
            proc.stop(timeout=15)
        yield Live(scrapes=scrapes, worker=_worker_exposition())


def _samples(text: str) -> dict[str, float]:
    """{series selector with labels sorted: value} of an exposition."""
    return {sample.name + "{" + ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(sample.labels.items())) + "}":
            sample.value for family in text_string_to_metric_families(text) for sample in family.samples}


def _names(text: str) -> set[str]:
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_every_api_worker_serves_the_queue_gauges_from_postgres(live: Live) -> None:
    """The same figures whichever worker takes the scrape: each reads them from Postgres at that moment."""
    counts = {'comfyq_queue_jobs{status="queued"}': 4, 'comfyq_queue_jobs{status="eligible"}': 3,
              'comfyq_queue_jobs{status="delayed"}': 1, 'comfyq_queue_jobs{status="running"}': 2,
              "comfyq_queue_expired_leases{}": 1, "comfyq_queue_scrape_ok{}": 1}
    for text in live.scrapes:
        values = _samples(text)
        assert {key: values.get(key) for key in counts} == counts
        assert 7200 <= values["comfyq_queue_longest_wait_seconds{}"] < 7200 + 600
        assert values["comfyq_queue_longest_running_seconds{}"] >= 1
        assert 0 <= values["comfyq_queue_oldest_queued_age_seconds{}"] < 600


def test_the_scrapes_pass_promtool_check_metrics(live: Live) -> None:
    _ok(promtool("check", "metrics", stdin=live.scrapes[0]))
    _ok(promtool("check", "metrics", stdin=live.worker))


def test_rules_and_dashboards_use_what_the_api_and_the_worker_export(live: Live) -> None:
    api = set.intersection(*map(_names, live.scrapes))  # served by every worker, not only by some
    worker = _names(live.worker)
    assert {"comfyq_queue_jobs", "comfyq_queue_longest_wait_seconds", "comfyq_api_jobs_submitted_total"} <= api
    assert all(name.startswith("comfyq_worker_") for name in worker)
    for name, expr in [(rule["alert"], rule["expr"]) for rule in _rules()] + _panel_exprs():
        for metric in _metric_names(expr) - BUILTIN:
            source, exported = ("the worker", worker) if metric.startswith("comfyq_worker_") else ("the API", api)
            assert metric in exported, f"{name} uses {metric}, which {source} does not export"


# What each alert does on the seeded queue and the worker above (constant for 20 minutes), by alert name.
FIRING: dict[str, list[dict[str, str]]] = {
    "ComfyqApiDown": [], "ComfyqWorkerDown": [], "ComfyqNoWorkers": [], "ComfyqFailureRateHigh": [],
    "ComfyqQueueBackingUp": [],
    "ComfyqWorkerDependencyDown": [{"severity": "warning", "instance": WORKER_INSTANCE, "dependency": "comfyui",
                                    "worker": WORKER_ID}],
    "ComfyqQueueWaitTooLong": [{"severity": "warning"}],  # waited two hours
    "ComfyqQueueStalled": [{"severity": "critical"}],  # and no attempt recorded meanwhile
    "ComfyqStuckRunningJobs": [{"severity": "warning"}],  # one expired lease
}


def _input_series(text: str, target: dict[str, str], minutes: int) -> list[dict[str, str]]:
    """Every sample of a scrape as a promtool input series, with the labels Prometheus adds, held for minutes."""
    series = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert math.isfinite(sample.value), sample
            labels = {**sample.labels, **target}
            selector = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items()))
            series.append({"series": f"{sample.name}{{{selector}}}", "values": f"{sample.value:.6f}x{minutes}"})
    return series


def test_the_alerts_evaluate_on_the_real_scrape(live: Live, tmp_path: Path) -> None:
    """promtool evaluates every rule on the series the API and a worker really export. The annotations are left
    out of the copy of the rules (they print values, which vary from run to run); expressions, `for` and
    labels are the real ones."""
    assert set(FIRING) == {rule["alert"] for rule in _rules()}, "say in FIRING what each alert does here"
    groups = [{**group, "rules": [{k: v for k, v in rule.items() if k != "annotations"} for rule in group["rules"]]}
              for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]]
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": groups}))
    [api_target] = _scrape_job(API_JOB)["static_configs"][0]["targets"]
    api = {"job": API_JOB, "instance": api_target}
    worker = {"job": WORKER_JOB, "instance": WORKER_INSTANCE}
    minutes = 20
    series = [*_input_series("up 1\n", api, minutes), *_input_series("up 1\n", worker, minutes),
              *_input_series(live.scrapes[0], api, minutes), *_input_series(live.worker, worker, minutes)]
    tests = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [{
        "name": "the real scrape", "interval": "1m", "input_series": series,
        "alert_rule_test": [{"eval_time": "15m", "alertname": alert,
                             "exp_alerts": [{"exp_labels": labels} for labels in expected]}
                            for alert, expected in sorted(FIRING.items())]}]}
    path = tmp_path / "real_scrape_test.yml"
    path.write_text(yaml.safe_dump(tests))
    _ok(promtool("test", "rules", path))
