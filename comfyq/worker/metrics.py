"""Prometheus metrics of one worker, served on COMFYQ_METRICS_PORT: jobs by final status, durations, ComfyUI
execution time, retries, stored bytes, and the GPU busy ratio (share of wall time ComfyUI was running one of
this worker's prompts)."""

from __future__ import annotations

import logging
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


class WorkerMetrics:
    def __init__(self, worker_id: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"worker": worker_id}
        self.jobs = Counter("comfyq_worker_jobs", "Attempts recorded, by resulting job status", ["status"],
                            registry=self.registry).labels
        self.job_seconds = Histogram("comfyq_worker_job_duration_seconds",
                                     "Claim to recorded result, per attempt", buckets=DURATION_BUCKETS,
                                     registry=self.registry)
        self.execution_seconds = Histogram("comfyq_worker_comfyui_execution_seconds",
                                           "ComfyUI execution_start to done signal", buckets=DURATION_BUCKETS,
                                           registry=self.registry)
        self.retries = Counter("comfyq_worker_retries", "Attempts that failed and were scheduled again",
                               ["error_type"], registry=self.registry)
        self.storage_bytes = Counter("comfyq_worker_storage_bytes", "Bytes of outputs stored",
                                     registry=self.registry)
        self.busy_ratio = Gauge("comfyq_worker_gpu_busy_ratio",
                                "Share of wall time since start that ComfyUI ran this worker's prompts",
                                registry=self.registry)
        self.dependency_up = Gauge("comfyq_worker_dependency_up",
                                   "1 while the dependency answers, 0 during an outage (no claims then)",
                                   ["dependency"], registry=self.registry)
        for name in ("comfyui", "database", "storage", "redis"):
            self.dependency_up.labels(name).set(1)
        self.info = Gauge("comfyq_worker_info", "Constant 1, labelled with the worker id", list(labels),
                          registry=self.registry)
        self.info.labels(**labels).set(1)
        self._started = time.monotonic()
        self._busy = 0.0
        self._lock = threading.Lock()
        self.busy_ratio.set_function(self._ratio)

    def executed(self, seconds: float) -> None:
        self.execution_seconds.observe(seconds)
        with self._lock:
            self._busy += seconds

    def _ratio(self) -> float:
        with self._lock:
            wall = time.monotonic() - self._started
            return self._busy / wall if wall > 0 else 0.0

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Start the HTTP endpoint; port 0 picks a free one. Returns the port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        bound = int(server.server_address[1])
        log.info("metrics on http://%s:%d/metrics", host, bound, extra={"action": "metrics"})
        return bound
