"""gunicorn settings for webhook-api. Values can be overridden with GUNICORN_* style flags on the command line."""

import multiprocessing
import os

bind = os.environ.get("COMFYQ_API_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("COMFYQ_API_WORKERS", str(min(8, multiprocessing.cpu_count() * 2 + 1))))
worker_class = "sync"
timeout = 30
graceful_timeout = 20
keepalive = 5
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("COMFYQ_LOG_LEVEL", "info").lower()
# The app (and its database pool) is created in each worker after fork, never shared across processes.
preload_app = False


def post_fork(server, worker):
    from comfyq.logs import configure  # noqa: PLC0415 - after fork, in the worker process

    configure(os.environ.get("COMFYQ_LOG_LEVEL", "INFO"), os.environ.get("COMFYQ_LOG_FORMAT", "text"))
