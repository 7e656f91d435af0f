"""Runtime settings of the stand-in (timings, injected failures, directories), shared by the executor and
the routes so that tests can change behaviour of a running server through /standin/control."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

FAIL_MODES = ("none", "execution_error", "oom", "drop", "http_500")
CONTROL_KEYS = frozenset({"fail", "node_seconds", "sampler_step_seconds", "ws_silent"})
DEFAULT_CHECKPOINTS = ("v1-5-pruned-emaonly.safetensors", "sd_xl_base_1.0.safetensors")


@dataclass
class Config:
    """Everything a run of the stand-in is parameterised by. Mutable on purpose: the control route
    changes `fail`, `node_seconds`, `sampler_step_seconds` and `ws_silent` while the server runs."""

    output_dir: Path
    input_dir: Path
    temp_dir: Path
    node_seconds: float = 0.02
    sampler_step_seconds: float = 0.005
    checkpoints: list[str] = field(default_factory=lambda: list(DEFAULT_CHECKPOINTS))
    fail: str = "none"
    grain: bool = False
    ws_silent: bool = False  # sockets stay open but get no message: a client must fall back to /history

    def control_view(self) -> dict[str, Any]:
        """The part of the configuration that POST/GET /standin/control exposes."""
        return {
            "fail": self.fail,
            "node_seconds": self.node_seconds,
            "sampler_step_seconds": self.sampler_step_seconds,
            "ws_silent": self.ws_silent,
        }

    def apply_control(self, changes: dict[str, Any]) -> None:
        """Validate every requested change first, then apply them all; raises ValueError on a bad one."""
        unknown = set(changes) - CONTROL_KEYS
        if unknown:
            raise ValueError(f"unknown control keys: {sorted(unknown)}")
        fail = changes.get("fail", self.fail)
        if fail not in FAIL_MODES:
            raise ValueError(f"fail must be one of {list(FAIL_MODES)}, got {fail!r}")
        node_seconds = _non_negative(changes.get("node_seconds", self.node_seconds), "node_seconds")
        step_seconds = _non_negative(
            changes.get("sampler_step_seconds", self.sampler_step_seconds), "sampler_step_seconds"
        )
        ws_silent = changes.get("ws_silent", self.ws_silent)
        if not isinstance(ws_silent, bool):
            raise ValueError(f"ws_silent must be true or false, got {ws_silent!r}")
        self.fail, self.node_seconds, self.sampler_step_seconds = fail, node_seconds, step_seconds
        self.ws_silent = ws_silent
        logger.info("control: %s", self.control_view())


def _non_negative(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)
