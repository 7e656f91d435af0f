"""In-memory queue and history of one server process: a heap of pending prompts ordered by number, at
most one running prompt, and a capped history — all lost on restart, exactly like ComfyUI."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

MAX_HISTORY = 10000

# [number, prompt_id, graph, extra_data, outputs_to_execute], the item shape of /queue and /history.
QueueItem = list[Any]


class PromptState:
    """Queue + history. `on_change` is called after every change of the queue (ComfyUI then
    broadcasts a `status` message with the new queue_remaining)."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self._counter = 0
        self._seq = itertools.count()
        self._pending: list[tuple[float, int, QueueItem]] = []
        self.running: QueueItem | None = None
        self.history: dict[str, dict[str, Any]] = {}
        self._on_change = on_change or (lambda: None)
        self._wakeup = asyncio.Event()

    def set_on_change(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change

    def next_number(self, front: bool) -> int:
        """The per-process number of the next prompt; counts every prompt that gets this far,
        rejected ones included. `front` makes it negative so it sorts first."""
        number = self._counter
        self._counter += 1
        return -number if front else number

    def put(self, item: QueueItem) -> None:
        heapq.heappush(self._pending, (item[0], next(self._seq), item))
        self._wakeup.set()
        self._on_change()

    async def get(self) -> QueueItem:
        """Wait for the lowest-numbered pending prompt and mark it running."""
        while not self._pending:
            self._wakeup.clear()
            await self._wakeup.wait()
        _, _, item = heapq.heappop(self._pending)
        self.running = item
        self._on_change()
        return item

    def task_done(self, item: QueueItem, entry: dict[str, Any]) -> None:
        """Record the finished prompt in history (oldest entry dropped past the cap) and clear running."""
        prompt_id = item[1]
        if len(self.history) >= MAX_HISTORY and prompt_id not in self.history:
            self.history.pop(next(iter(self.history)))
        self.history[prompt_id] = entry
        self.running = None
        self._on_change()

    def queue_remaining(self) -> int:
        return len(self._pending) + (1 if self.running is not None else 0)

    def pending_items(self) -> list[QueueItem]:
        """Pending prompts in heap order (not sorted), as ComfyUI shows them."""
        return [item for _, _, item in self._pending]

    def delete_pending(self, prompt_ids: list[Any]) -> None:
        """Remove, for each id, the first pending prompt (in heap order) that has it."""
        for prompt_id in prompt_ids:
            for index, entry in enumerate(self._pending):
                if entry[2][1] == prompt_id:
                    self._pending.pop(index)
                    heapq.heapify(self._pending)
                    self._on_change()
                    break

    def clear_pending(self) -> None:
        self._pending = []
        self._on_change()

    def get_history(
        self, prompt_id: str | None = None, max_items: int | None = None, offset: int = -1
    ) -> dict[str, Any]:
        """ComfyUI's paging: without offset, max_items means the newest max_items entries."""
        if prompt_id is not None:
            entry = self.history.get(prompt_id)
            return {prompt_id: entry} if entry is not None else {}
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        out: dict[str, Any] = {}
        for index, (key, entry) in enumerate(self.history.items()):
            if index < offset:
                continue
            out[key] = entry
            if max_items is not None and len(out) >= max_items:
                break
        return out

    def delete_history(self, prompt_ids: list[Any]) -> None:
        for prompt_id in prompt_ids:
            self.history.pop(str(prompt_id), None)

    def clear_history(self) -> None:
        self.history.clear()
