"""Prometheus metrics of the API on GET /metrics: request counts and latencies by endpoint and status, a counter
of submitted jobs, and the queue gauges (QueueCollector) that the alert rules in prometheus/rules watch.

Under gunicorn each worker is its own process: with PROMETHEUS_MULTIPROC_DIR set (gunicorn_conf.py sets it up
before the workers fork) the counters live in files there, and the worker that takes the scrape adds up every
worker's values from those files and reads the queue gauges from Postgres itself, on the API's own port. Without
it (the Flask test client, `flask run`) each app has a registry of its own, which holds both.

With COMFYQ_METRICS_TOKEN set, /metrics answers only `Authorization: Bearer <that token>`, which Prometheus sends
(prometheus/prometheus.yml); unset, it answers anyone who reaches the port, so set it wherever clients can."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from flask import Flask, Request, Response, current_app, has_app_context, request
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_flask_exporter import PrometheusMetrics

from comfyq.api import bearer
from comfyq.api.api_errors import ApiError
from comfyq.api.services import services
from comfyq.errors import ComfyqError
from comfyq.settings import Settings

log = logging.getLogger(__name__)

EXTENSION = "comfyq_metrics"
PREFIX = "comfyq_api"
# Liveness probes arrive every few seconds from the orchestrator and say nothing about the traffic.
# (/metrics itself is never counted, refused scrapes included: its view is marked do-not-track.)
EXCLUDED_PATHS = [r"^/healthz$"]


@dataclass
class ApiMetrics:
    jobs_submitted: Counter
    registry: CollectorRegistry  # this process's metrics; under gunicorn scrapes read the files instead


def endpoint(request: Request) -> str:
    """The Flask endpoint (`jobs.get_job`), not the raw path: job ids in paths would make a series per job."""
    return request.endpoint or "unmatched"


def multiprocess() -> bool:
    """Under gunicorn (gunicorn_conf.py sets the folder before any worker imports prometheus_client)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def init_metrics(app: Flask) -> ApiMetrics:
    """Count app's requests and serve GET /metrics on it; calling it again on the same app changes nothing."""
    existing: ApiMetrics | None = app.extensions.get(EXTENSION)
    if existing is not None:
        return existing
    registry = CollectorRegistry(auto_describe=True)
    # path=None: the exporter's own /metrics would serve, under gunicorn, only what the value files hold (a
    # registry it builds per scrape), never the queue gauges; serve_metrics below serves both.
    exporter = PrometheusMetrics(app, path=None, registry=registry, group_by=endpoint, defaults_prefix=PREFIX,
                                 excluded_paths=EXCLUDED_PATHS)
    jobs_submitted = Counter(f"{PREFIX}_jobs_submitted", "Jobs accepted by POST /jobs (written to the queue)",
                             registry=registry)
    if not multiprocess():
        registry.register(QueueCollector())
    metrics = ApiMetrics(jobs_submitted=jobs_submitted, registry=registry)
    app.extensions[EXTENSION] = metrics
    app.add_url_rule("/metrics", "metrics", exporter.do_not_track()(serve_metrics))
    settings: Settings = app.config["COMFYQ_SETTINGS"]
    if not settings.metrics_token:
        log.warning("COMFYQ_METRICS_TOKEN is unset: /metrics answers anyone who reaches this port",
                    extra={"action": "metrics"})
    return metrics


def scrape_registry(metrics: ApiMetrics) -> CollectorRegistry:
    """What one scrape exports. Under gunicorn: every worker's counters, added up from the value files, and the
    queue gauges, read now by whichever worker answers (so all answer the same); else the app's registry."""
    if not multiprocess():
        return metrics.registry
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(QueueCollector())
    return registry


def serve_metrics() -> Response:
    """GET /metrics; refused (before anything is read) without the metrics token when one is set."""
    settings: Settings = current_app.config["COMFYQ_SETTINGS"]
    if settings.metrics_token and not bearer.matches(settings.metrics_token):
        raise ApiError(401, "unauthorized", "/metrics needs 'Authorization: Bearer <COMFYQ_METRICS_TOKEN>'",
                       headers={"WWW-Authenticate": 'Bearer realm="comfyq"'})
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encode(scrape_registry(current_app.extensions[EXTENSION])), content_type=content_type)


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
