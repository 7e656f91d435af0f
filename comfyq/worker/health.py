"""What the worker knows about each dependency (ComfyUI, the database, storage, Redis): up or down, since when,
and when to probe it again. One object owns that state; every thread reports into it, the main loop reads it
to decide whether to claim. While a dependency is down nothing is claimed, and the next probe waits a jittered
delay that doubles between the outage backoff bounds, so a fleet of workers does not hammer a recovering
server in lockstep."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

COMFYUI = "comfyui"
DATABASE = "database"
STORAGE = "storage"
REDIS = "redis"
DEPENDENCIES = (COMFYUI, DATABASE, STORAGE, REDIS)
# Claims wait for these. Redis is only shown: while it is down the transport claims through Postgres.
GATING = (COMFYUI, DATABASE, STORAGE)
# The main loop probes these on their schedule; storage is probed by the finisher's own tries to store.
PROBED = (COMFYUI, DATABASE)


@dataclass
class DependencyState:
    """UP or DOWN; while DOWN, `down_since` and the probe schedule say how long and when to look again."""

    name: str
    up: bool = True
    down_since: float | None = None
    failures: int = 0
    next_probe_at: float = 0.0


class DependencyHealth:
    """Thread-safe health of the worker's dependencies, with jittered exponential probe backoff."""

    def __init__(self, *, backoff_min: float, backoff_max: float,
                 on_change: Callable[[str, bool], None] = lambda name, up: None,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.backoff_min = backoff_min
        self.backoff_max = max(backoff_min, backoff_max)
        self.on_change = on_change
        self.clock = clock
        self.rng = rng or random.Random()
        self._states = {name: DependencyState(name) for name in DEPENDENCIES}
        self._lock = threading.Lock()

    def down(self, name: str, error: object) -> None:
        """A call to `name` failed as an outage (refused, timed out, 5xx, disk full): schedule the next probe."""
        with self._lock:
            state = self._states[name]
            now = self.clock()
            became_down = state.up
            if not became_down and now < state.next_probe_at:
                return  # another report of the same outage before the next probe: the schedule stands
            state.up = False
            state.down_since = state.down_since if state.down_since is not None else now
            state.failures += 1
            state.next_probe_at = now + self._delay(state.failures)
        if became_down:
            if name in GATING:  # Redis logs its own outage (and claims go on through Postgres)
                log.warning("%s unavailable: %s (no claims until it is back)", name, error,
                            extra={"action": "dependency_down", "dependency": name})
            self.on_change(name, False)

    def up(self, name: str) -> None:
        """A call to `name` succeeded: it is back (or never left)."""
        with self._lock:
            state = self._states[name]
            if state.up:
                return
            outage = self.clock() - (state.down_since or self.clock())
            state.up, state.down_since, state.failures, state.next_probe_at = True, None, 0, 0.0
        if name in GATING:
            log.info("%s is back after %.1fs", name, outage,
                     extra={"action": "dependency_up", "dependency": name, "outage_seconds": round(outage, 1)})
        self.on_change(name, True)

    def probe_soon(self, name: str) -> None:
        """Evidence that `name` may be back (its WebSocket connected again): probe it now, not at the
        scheduled time; only a successful probe says it is up."""
        with self._lock:
            state = self._states[name]
            if not state.up:
                state.next_probe_at = self.clock()

    def _delay(self, failures: int) -> float:
        """Equal jitter: uniform in [d/2, d] with d = min(max, min * 2^(failures-1))."""
        ceiling = min(self.backoff_max, self.backoff_min * (2 ** min(failures - 1, 30)))
        return float(ceiling / 2 + self.rng.random() * ceiling / 2)

    def is_up(self, name: str) -> bool:
        with self._lock:
            return self._states[name].up

    def all_up(self) -> bool:
        """Every dependency that claims wait for is up."""
        with self._lock:
            return all(self._states[name].up for name in GATING)

    def down_names(self) -> list[str]:
        with self._lock:
            return [state.name for state in self._states.values() if not state.up]

    def probe_due(self, name: str) -> bool:
        """True when `name` is down and its next probe is due (always False while it is up)."""
        with self._lock:
            state = self._states[name]
            return not state.up and self.clock() >= state.next_probe_at

    def seconds_to_next_probe(self) -> float | None:
        """Until the earliest probe the main loop makes of a down dependency; None when none is due."""
        with self._lock:
            due = [self._states[name].next_probe_at for name in PROBED if not self._states[name].up]
        return None if not due else max(0.0, min(due) - self.clock())

    def down_for(self, name: str) -> float:
        """Seconds `name` has been down (0 while up)."""
        with self._lock:
            state = self._states[name]
            return 0.0 if state.up or state.down_since is None else self.clock() - state.down_since

