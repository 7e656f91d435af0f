"""The objects one server process shares between its routes, WebSocket handler and executor."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from comfyq.standin.config import Config
from comfyq.standin.execution import Executor
from comfyq.standin.hub import Hub
from comfyq.standin.state import PromptState

logger = logging.getLogger(__name__)

MAX_UPLOAD_SIZE = 100 * 1024 * 1024
SERVER_FEATURES: dict[str, Any] = {"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD_SIZE}


@dataclass
class Services:
    config: Config
    state: PromptState
    hub: Hub
    executor: Executor

    @classmethod
    def create(cls, config: Config) -> Services:
        hub = Hub(is_silent=lambda: config.ws_silent)
        state = PromptState()
        services = cls(config, state, hub, Executor(config, state, hub))
        state.set_on_change(services.broadcast_status)
        return services

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.state.queue_remaining()}}

    def broadcast_status(self) -> None:
        self.hub.send("status", {"status": self.queue_info()})


SERVICES = web.AppKey("services", Services)
