"""A few hours of a plausible queue, made with the queue's own operations (JobQueue: enqueue_many, claim,
complete, fail_attempt, rescue_expired; the register_worker and worker_heartbeat named queries), for the
dashboard tests and the preview renderer.

Time is simulated: instead of sleeping, every tick moves all recorded timestamps back by the tick's length, so
the rows look as if they were written over hours while the run takes seconds. Leases, retry delays and the
durations the queue measures (now() minus a stored time) all follow from that. Only for scratch databases."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from comfyq.db import Database
from comfyq.jobs import ClaimedJob, JobQueue, NewJob

LEASE_SECONDS = 30.0


@dataclass(frozen=True)
class Workflow:
    name: str | None  # None: a raw graph
    priority: int
    seconds: tuple[float, float]  # execution time range
    errors: tuple[tuple[float, dict[str, Any], bool], ...] = ()  # (probability, error record, retryable)


def _execution_error(node: str, node_type: str, exception: str, message: str) -> dict[str, Any]:
    return {"type": "execution_error", "retryable": False, "node": node,
            "message": f"{node_type} (node {node}) failed: {exception}: {message}",
            "details": {"node_id": node, "node_type": node_type, "exception_type": exception,
                        "exception_message": message}}


OOM = {"type": "out_of_memory", "retryable": True, "node": "3",
       "message": "out of memory in node 3: CUDA out of memory. Tried to allocate 2.50 GiB",
       "details": {"node_id": "3", "node_type": "KSampler", "exception_type": "torch.cuda.OutOfMemoryError"}}
UNREACHABLE = {"type": "comfyui_unavailable", "retryable": True,
               "message": "ComfyUI did not answer: connection refused"}
MISSING_CHECKPOINT = {
    "type": "validation_error", "retryable": False,
    "message": "Prompt outputs failed validation: Value not in list: ckpt_name: 'flux1-dev.safetensors'",
    "details": {"node_errors": {"4": {"class_type": "CheckpointLoaderSimple", "dependent_outputs": ["9"],
                                      "errors": [{"type": "value_not_in_list", "message": "Value not in list"}]}}}}

WORKFLOWS = (
    Workflow("txt2img-sdxl", 0, (25, 70), (
        (0.05, OOM, True),
        (0.03, _execution_error("3", "KSampler", "RuntimeError", "expected scalar type Half"), False))),
    Workflow("img2img-flux", 10, (40, 110), (
        (0.06, MISSING_CHECKPOINT, False),
        (0.03, UNREACHABLE, True))),
    Workflow("upscale-4x", -5, (8, 25), (
        (0.03, _execution_error("12", "ImageUpscaleWithModel", "RuntimeError", "tile size too large"), False),
        (0.02, UNREACHABLE, True))),
    Workflow(None, 0, (15, 50), (
        (0.10, _execution_error("8", "VAEDecode", "ValueError", "latent has 0 channels"), False),)),
)
WEIGHTS = (5, 3, 3, 1)


@dataclass
class SimWorker:
    id: str
    comfyui_url: str
    job: ClaimedJob | None = None
    workflow: Workflow | None = None
    started_at: float = 0.0
    ends_at: float = 0.0
    dead: bool = False
    stopped: bool = False


class Simulation:
    """Drive the queue for `minutes` of simulated time with a few workers; one of them dies and one stops."""

    def __init__(self, db: Database, *, seed: int = 7, workers: int = 4) -> None:
        self.db = db
        self.queue = JobQueue(db, lease_seconds=LEASE_SECONDS)
        self.rng = random.Random(seed)
        self.now = 0.0  # simulated seconds since the start
        self.workers = [SimWorker(f"gpu-{i + 1}", f"http://comfyui-{i + 1}:8188") for i in range(workers)]
        self.workflows: dict[int, Workflow] = {}

    def close(self) -> None:
        """Nothing to release: every statement goes through the database's pool."""

    # Time -------------------------------------------------------------------------------------------------
    def shift(self, seconds: float) -> None:
        self.db.fetch_all("shift_time_back", {"seconds": seconds})
        self.now += seconds

    # Actors -----------------------------------------------------------------------------------------------
    def register(self, worker: SimWorker) -> None:
        self.db.execute("register_worker", {"id": worker.id, "host": f"host-{worker.id}", "pid": 1000,
                                            "comfyui_url": worker.comfyui_url})

    def submit(self, count: int) -> None:
        chosen = self.rng.choices(WORKFLOWS, WEIGHTS, k=count)
        jobs = [NewJob(graph={"3": {"class_type": "KSampler", "inputs": {}}}, workflow=workflow.name,
                       params={"prompt": "a lighthouse at dusk"}, priority=workflow.priority) for workflow in chosen]
        for row, workflow in zip(self.queue.enqueue_many(jobs), chosen, strict=True):
            self.workflows[row["id"]] = workflow

    def step_worker(self, worker: SimWorker) -> None:
        if worker.dead or worker.stopped:
            return
        self.db.execute("worker_heartbeat", {"id": worker.id, "status": "running", "dependencies_down": []})
        if worker.job is not None and worker.ends_at <= self.now:
            self.finish(worker)
        if worker.job is None:
            claimed = self.queue.claim(worker.id)
            if claimed is not None:
                worker.job = claimed
                worker.workflow = self.workflows[claimed.id]
                low, high = worker.workflow.seconds
                worker.started_at = self.now
                worker.ends_at = self.now + self.rng.uniform(low, high)
        if worker.job is not None:
            self.queue.renew(worker.id, [worker.job.lease])
            done = (self.now - worker.started_at) / max(worker.ends_at - worker.started_at, 1.0)
            self.queue.update_progress(worker.job.lease, done, "3")

    def finish(self, worker: SimWorker) -> None:
        assert worker.job is not None and worker.workflow is not None
        lease = worker.job.lease
        roll = self.rng.random()
        for probability, error, retryable in worker.workflow.errors:
            if roll < probability:
                self.queue.fail_attempt(lease, error, retryable=retryable, delay_seconds=self.rng.uniform(10, 60))
                break
            roll -= probability
        else:
            self.queue.complete(lease, [{"node_id": "9", "key": f"outputs/{lease.job_id}/0.png",
                                         "size": self.rng.randint(800_000, 2_500_000)}])
        worker.job = None

    # The run ----------------------------------------------------------------------------------------------
    def run(self, minutes: float) -> None:
        """Bursts of submissions, a steady trickle, a worker that dies at 60% and one that stops at 80%,
        and a late burst larger than the workers can drain, so the queue ends with a backlog."""
        for worker in self.workers:
            self.register(worker)
        total = minutes * 60
        next_burst = 0.0
        backlog_at, backlog_sent = 0.92 * total, False
        dying = self.workers[-1]
        stopping = self.workers[0] if len(self.workers) > 2 else None
        while self.now < total:
            if not backlog_sent and self.now >= backlog_at:
                self.submit(40)  # more than the workers can drain before the end: the queue ends with a backlog
                backlog_sent = True
            elif self.now >= next_burst:
                self.submit(self.rng.randint(8, 25))
                next_burst = self.now + self.rng.uniform(15, 35) * 60
            elif self.rng.random() < 0.35:
                self.submit(self.rng.randint(1, 3))
            for worker in self.workers:
                self.step_worker(worker)
            self.queue.rescue_expired()
            if not dying.dead and self.now >= 0.6 * total and dying.job is not None:
                dying.dead = True  # holds its job and goes silent: the lease expires, another worker rescues it
            if stopping is not None and not stopping.stopped and self.now >= 0.8 * total and stopping.job is None:
                stopping.stopped = True
                self.db.execute("worker_stopped", {"id": stopping.id})
            self.shift(self.rng.uniform(10, 30))
        for worker in self.workers:
            self.step_worker(worker)


def populate(db: Database, minutes: float = 60, *, seed: int = 7) -> None:
    """Fill a migrated scratch database with `minutes` of simulated traffic ending now."""
    simulation = Simulation(db, seed=seed)
    try:
        simulation.run(minutes)
    finally:
        simulation.close()
