"""Retry delays: capped exponential backoff with equal jitter, so delays grow yet retries of many jobs
that failed together spread out instead of hitting ComfyUI in lockstep."""

from __future__ import annotations

import random


def retry_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): uniform in [d/2, d] where
    d = min(cap, base * 2**(attempt-1)). The lower bound keeps successive delays non-decreasing."""
    if attempt < 1:
        raise ValueError("attempt numbers start at 1")
    ceiling = min(cap, base * (2 ** min(attempt - 1, 62)))
    draw = (rng or random).random()
    return float(ceiling / 2 + draw * ceiling / 2)
