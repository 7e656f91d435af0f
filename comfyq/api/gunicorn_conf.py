"""gunicorn settings for webhook-api. Values can be overridden with GUNICORN_* style flags on the command line.

Metrics: every worker is its own process, so prometheus_client keeps its values in files under
PROMETHEUS_MULTIPROC_DIR and GET /metrics (served by whichever worker takes the scrape) adds them up. The master
prepares that folder before the first fork (on_starting) and drops a dead worker's live gauges (child_exit).
Nothing here imports prometheus_client at load time: it must first be imported with the variable already set,
or its values would stay per-process."""

import gc
import glob
import multiprocessing
import os
import shutil
import tempfile
from typing import Any

bind = os.environ.get("COMFYQ_API_BIND", "0.0.0.0:8000")


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the CPUs this container may use, not the whole host's
    except AttributeError:  # not on Linux
        return multiprocessing.cpu_count()


workers = int(os.environ.get("COMFYQ_API_WORKERS", str(min(8, _cpu_count() * 2 + 1))))
worker_class = "sync"
timeout = 30
graceful_timeout = 20  # in-flight requests get this long to finish on SIGTERM before workers are killed
keepalive = 5
accesslog = "-"  # stdout
errorlog = "-"
# The default format plus the worker pid (%(p)s), to tell which worker served a request.
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" pid=%(p)s'
loglevel = os.environ.get("COMFYQ_LOG_LEVEL", "info").lower()
# The app (and its database pool) is created in each worker after fork, never shared across processes.
preload_app = False
# gunicorn >= 25 opens a control socket for `gunicornc` at one fixed path per user ($HOME/.gunicorn/gunicorn.ctl),
# which every gunicorn on the machine (the tests start several) fights over. Unused here; older versions ignore it.
control_socket_disable = True

_created_multiproc_dir: str | None = None


def on_starting(server: Any) -> None:
    """Master, before any worker forks: a PROMETHEUS_MULTIPROC_DIR that exists and holds no stale values."""
    global _created_multiproc_dir
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        os.makedirs(path, exist_ok=True)
        # Only prometheus_client's own files: the variable might point at a folder that holds other things.
        for stale in glob.glob(os.path.join(path, "*.db")):
            os.remove(stale)
    else:
        path = _created_multiproc_dir = tempfile.mkdtemp(prefix="comfyq-api-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path  # inherited by every worker forked from here on
    server.log.info("prometheus multiprocess dir: %s", path)


def post_fork(server: Any, worker: Any) -> None:
    from comfyq.logs import configure  # noqa: PLC0415 - after fork, in the worker process

    configure(os.environ.get("COMFYQ_LOG_LEVEL", "INFO"), os.environ.get("COMFYQ_LOG_FORMAT", "text"))


def post_worker_init(worker: Any) -> None:
    """The app is built: move everything alive now (modules, the app, templates) out of the cyclic garbage
    collector's reach, so collections during requests scan only what requests allocate, not the whole
    start-up heap again each time."""
    gc.freeze()


def child_exit(server: Any, worker: Any) -> None:
    # Imported here, in the master, long after on_starting has set PROMETHEUS_MULTIPROC_DIR.
    from prometheus_flask_exporter.multiprocess import GunicornPrometheusMetrics  # noqa: PLC0415

    GunicornPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)


def on_exit(server: Any) -> None:
    """Remove the metrics folder when this master made it (a folder given in the environment is left)."""
    if _created_multiproc_dir:
        shutil.rmtree(_created_multiproc_dir, ignore_errors=True)
