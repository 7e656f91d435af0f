"""Hears cancels of running jobs the moment the API writes them (LISTEN comfyq_cancel, one connection of its
own), so a job waiting in ComfyUI's queue is removed before it starts and a running one is interrupted at once
rather than at the next heartbeat, which stays the fallback while this connection is down."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from comfyq.errors import DatabaseUnavailable
from comfyq.jobs import JobQueue
from comfyq.wake_pipe import WakePipe

log = logging.getLogger(__name__)

RECONNECT_SECONDS = 2.0
WAIT_SLICE_SECONDS = 1.0


class CancelListener:
    """Owns its LISTEN connection and thread; calls on_cancel(job_id) for every cancel it hears."""

    def __init__(self, queue: JobQueue, on_cancel: Callable[[int], None]) -> None:
        self.queue = queue
        self.on_cancel = on_cancel
        self._closing = threading.Event()
        # close() ends the wait on the LISTEN socket at once: a worker's shutdown does not wait out a wait slice.
        self._wake = WakePipe()
        self._thread = threading.Thread(target=self._run, name="cancel-listener", daemon=True)

    def start(self) -> CancelListener:
        self._thread.start()
        return self

    def close(self) -> None:
        if self._closing.is_set():
            return
        self._closing.set()
        self._wake.wake()
        self._thread.join(timeout=WAIT_SLICE_SECONDS + 1)
        if not self._thread.is_alive():  # never close a descriptor the thread may still be waiting on
            self._wake.close()

    def _run(self) -> None:
        listener = self.queue.listen_cancels()
        try:
            while not self._closing.is_set():
                try:
                    received = listener.notifications(WAIT_SLICE_SECONDS, (self._wake.read_fd,))
                except DatabaseUnavailable as exc:
                    log.debug("cancel listener: %s", exc)
                    self._closing.wait(RECONNECT_SECONDS)
                    continue
                for _channel, payload in received:
                    try:
                        job_id = int(payload)
                    except ValueError:
                        continue
                    self.on_cancel(job_id)
        finally:
            listener.close()
