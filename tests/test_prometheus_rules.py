"""Prometheus: the scrape config and the alert rules pass promtool's checks and unit tests, every alert has a
test that makes it fire, and the rules and the dashboards' PromQL use only metrics that the workers and the API
export (or the queue gauges proposed in docs/grafana.md).

promtool comes from Debian's `prometheus` package; without it these tests FAIL (CI installs it)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from comfyq.api.app import create_app
from comfyq.api.metrics import init_metrics
from comfyq.settings import Settings
from comfyq.worker.metrics import WorkerMetrics
from grafana.panels import dashboard_files, iter_targets
from tests.conftest import project_path

PROMETHEUS_DIR = project_path("prometheus")
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
INSTALL = "apt-get update && apt-get install -y --no-install-recommends prometheus"
BUILTIN = {"up"}
# Grafana replaces these in a Prometheus panel's query before sending it.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(f"promtool not found: install Debian's prometheus package ({INSTALL})", pytrace=False)
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=120, check=False)


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr


def test_config_is_valid() -> None:
    _ok(promtool("check", "config", CONFIG))


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


def _exported_metrics(monkeypatch: pytest.MonkeyPatch, db_url: str) -> set[str]:
    """Metric families of a worker (every labelled child touched once) and of the API's app (whose queue
    gauges are read from a real database at scrape time)."""
    worker = WorkerMetrics("w1")
    worker.jobs("succeeded").inc()
    worker.retries.labels("transient").inc()
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    app = create_app(Settings(database_url=db_url))
    api = init_metrics(app)
    registries: list[CollectorRegistry] = [worker.registry, api.exporter.registry]
    names: set[str] = set()
    with app.app_context():
        for registry in registries:
            for line in generate_latest(registry).decode().splitlines():
                if line and not line.startswith("#"):
                    names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    app.extensions["comfyq"].db.close()
    return names


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


def test_rules_and_dashboards_use_exported_metrics(monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:
    exported = _exported_metrics(monkeypatch, db_url)
    assert "comfyq_worker_jobs_total" in exported and "comfyq_api_jobs_submitted_total" in exported
    assert {"comfyq_queue_jobs", "comfyq_queue_longest_wait_seconds", "comfyq_queue_expired_leases"} <= exported
    for name, expr in [(rule["alert"], rule["expr"]) for rule in _rules()] + _panel_exprs():
        unknown = _metric_names(expr) - exported - BUILTIN
        assert not unknown, f"{name} uses metrics nothing exports: {unknown}"


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    """promtool has no expression checker, so each panel's query becomes a recording rule to check."""
    exprs = _panel_exprs()
    assert exprs
    rules = [{"record": f"comfyq:panel_{i}", "expr": expr} for i, (_name, expr) in enumerate(exprs)]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    _ok(promtool("check", "rules", path))
