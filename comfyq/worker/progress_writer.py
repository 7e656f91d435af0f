"""Writes job progress on a thread of its own, at most once per interval per job and only the latest value:
the main loop never waits on the database for progress, and a slow or down database only delays progress."""

from __future__ import annotations

import logging
import threading

from comfyq.errors import ComfyqError
from comfyq.jobs import JobQueue, Lease

log = logging.getLogger(__name__)


class ProgressWriter:
    """offer() from the main loop; the writer thread owns the database writes. Best effort by design: the
    final state is written by the finisher, progress is only a view of the way there."""

    def __init__(self, queue: JobQueue, interval: float) -> None:
        self.queue = queue
        self.interval = max(0.05, interval)
        self._latest: dict[int, tuple[Lease, float, str | None]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress-writer", daemon=True)

    def start(self) -> ProgressWriter:
        self._thread.start()
        return self

    def offer(self, lease: Lease, fraction: float, node: str | None) -> None:
        with self._lock:
            self._latest[lease.job_id] = (lease, fraction, node)
        self._wake.set()

    def forget(self, job_id: int) -> None:
        """The attempt ended: a pending progress write would only be overwritten by the final state."""
        with self._lock:
            self._latest.pop(job_id, None)

    def close(self) -> None:
        self._closing.set()
        self._wake.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while not self._closing.is_set():
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                batch, self._latest = list(self._latest.values()), {}
            for lease, fraction, node in batch:
                try:
                    self.queue.update_progress(lease, fraction, node)
                except ComfyqError as exc:
                    log.debug("progress of job %s not written: %s", lease.job_id, exc)
            self._closing.wait(self.interval)
