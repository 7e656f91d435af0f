"""Prometheus metrics of the API on GET /metrics: request counts and latencies by endpoint and status, and a
counter of submitted jobs.

Under gunicorn each worker is its own process: with PROMETHEUS_MULTIPROC_DIR set (gunicorn_conf.py sets it up
before the workers fork) the values live in files there and the worker that takes the scrape adds up every
worker's values, on the API's own port. Without it (the Flask test client, `flask run`) each app gets a registry
of its own.

/metrics takes no token on purpose: Prometheus scrapes it from inside the network, and it holds request counts
and latencies, never job data. Keep it off the public ingress."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from flask import Flask, Request, current_app, has_app_context
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_flask_exporter import PrometheusMetrics
from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

from comfyq.api.services import services
from comfyq.errors import ComfyqError

log = logging.getLogger(__name__)

EXTENSION = "comfyq_metrics"
PREFIX = "comfyq_api"
# Liveness probes arrive every few seconds from the orchestrator and say nothing about the traffic.
# (/metrics itself is never counted: the exporter marks its own route do-not-track.)
EXCLUDED_PATHS = [r"^/healthz$"]


@dataclass
class ApiMetrics:
    exporter: Any  # a PrometheusMetrics (the package ships no type hints)
    jobs_submitted: Counter


def endpoint(request: Request) -> str:
    """The Flask endpoint (`jobs.get_job`), not the raw path: job ids in paths would make a series per job."""
    return request.endpoint or "unmatched"


def init_metrics(app: Flask) -> ApiMetrics:
    """Serve /metrics on app and count its requests; calling it again on the same app changes nothing."""
    existing: ApiMetrics | None = app.extensions.get(EXTENSION)
    if existing is not None:
        return existing
    options: dict[str, Any] = {"group_by": endpoint, "defaults_prefix": PREFIX, "excluded_paths": EXCLUDED_PATHS}
    exporter: Any
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # The "internal" variant registers /metrics on this app (no second port). Its registry is only a
        # placeholder: every scrape reads the value files of all workers.
        exporter = GunicornInternalPrometheusMetrics(app, **options)
    else:
        exporter = PrometheusMetrics(app, registry=CollectorRegistry(auto_describe=True), **options)
    jobs_submitted = Counter(f"{PREFIX}_jobs_submitted", "Jobs accepted by POST /jobs (written to the queue)",
                             registry=exporter.registry)
    exporter.registry.register(QueueCollector())
    metrics = ApiMetrics(exporter=exporter, jobs_submitted=jobs_submitted)
    app.extensions[EXTENSION] = metrics
    return metrics


class QueueCollector:
    """Queue depth and waiting time, read from Postgres at scrape time (so every gunicorn worker answers the
    same, and nothing is kept in between): what the queue alerts in prometheus/rules watch."""

    def describe(self) -> list[Any]:
        return []  # registering must not query the database

    def collect(self) -> Iterator[Any]:
        ok = GaugeMetricFamily("comfyq_queue_scrape_ok", "1 when the queue figures below could be read")
        try:
            row = services().queue.summary() if has_app_context() else None
        except ComfyqError as exc:
            log.warning("queue metrics unavailable: %s", exc, extra={"action": "metrics"})
            row = None
        ok.add_metric([], 1.0 if row else 0.0)
        yield ok
        if not row:
            return
        jobs = GaugeMetricFamily("comfyq_queue_jobs", "Jobs queued (eligible or delayed) and running",
                                 labels=["status"])
        for status in ("queued", "eligible", "delayed", "running"):
            jobs.add_metric([status], float(row[status]))
        yield jobs
        for name, column, text in (
                ("comfyq_queue_oldest_queued_age_seconds", "oldest_queued_age_seconds", "Age of the oldest queued job"),
                ("comfyq_queue_longest_wait_seconds", "longest_wait_seconds",
                 "How long the first eligible job has waited since it became eligible"),
                ("comfyq_queue_longest_running_seconds", "longest_running_seconds", "Longest running attempt"),
                ("comfyq_queue_expired_leases", "expired_leases", "Running jobs whose lease ran out (dead workers)")):
            gauge = GaugeMetricFamily(name, text)
            gauge.add_metric([], float(row[column]))
            yield gauge


def count_submitted(n: int) -> None:
    """Add n accepted jobs to comfyq_api_jobs_submitted_total; a no-op when the app has no metrics."""
    if n <= 0 or not has_app_context():
        return
    metrics: ApiMetrics | None = current_app.extensions.get(EXTENSION)
    if metrics is not None:
        metrics.jobs_submitted.inc(n)
