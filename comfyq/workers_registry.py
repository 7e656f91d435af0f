"""The workers table: each worker says it started, is alive (and which dependencies it finds down) and stopped,
so operators, the stats and the alerts can tell a live worker from a silent one."""

from __future__ import annotations

from collections.abc import Sequence

from comfyq.db import Database


class WorkerRegistry:
    """One worker's row, written under its id."""

    def __init__(self, db: Database, worker_id: str) -> None:
        self.db = db
        self.worker_id = worker_id

    def register(self, *, host: str, pid: int, comfyui_url: str) -> None:
        """Insert the row, or reset it when a worker runs again under the same id (started now, nothing held)."""
        self.db.execute("register_worker", {"id": self.worker_id, "host": host, "pid": pid,
                                            "comfyui_url": comfyui_url})

    def heartbeat(self, status: str, dependencies_down: Sequence[str]) -> None:
        """Alive now, in this status (running, draining), with these dependencies down."""
        self.db.execute("worker_heartbeat", {"id": self.worker_id, "status": status,
                                             "dependencies_down": list(dependencies_down)})

    def stopped(self) -> None:
        self.db.execute("worker_stopped", {"id": self.worker_id})
