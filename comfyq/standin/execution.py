"""The single-prompt-at-a-time executor: takes prompts off the queue, runs their nodes with simulated
timing, emits ComfyUI's WebSocket events in ComfyUI's order, caches results and writes history."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import Any

from comfyq.standin import nodes
from comfyq.standin.config import Config
from comfyq.standin.hub import Hub
from comfyq.standin.images import Frame, png_text_for
from comfyq.standin.paths import resolve_input_image
from comfyq.standin.state import PromptState, QueueItem

logger = logging.getLogger(__name__)

OOM_MESSAGE = (
    "CUDA out of memory. Tried to allocate 2.25 GiB. GPU 0 has a total capacity of 23.64 GiB of which "
    "1.02 GiB is free. Including non-PyTorch memory, this process has 22.59 GiB memory in use. Of the "
    "allocated memory 21.87 GiB is allocated by PyTorch, and 291.53 MiB is reserved by PyTorch but "
    "unallocated. If reserved but unallocated memory is large try setting "
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for "
    "Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)\n"
)


class Interrupted(Exception):
    """Raised where an interrupt is noticed: at a node's start or at a progress step."""


@dataclass
class CacheEntry:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def now_ms() -> int:
    return int(time.time() * 1000)


def node_meta(node_id: str) -> dict[str, Any]:
    return {"node_id": node_id, "display_node": node_id, "parent_node": None, "real_node_id": node_id}


def describe(value: Any) -> Any:
    """A short text form of an input value for execution_error's current_inputs."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list) and value and isinstance(value[0], Frame):
        first = value[0]
        return f"tensor(shape=[{len(value)}, {first.height}, {first.width}, 3], dtype=torch.float32)"
    if isinstance(value, nodes.Latent):
        shape = f"[{value.batch}, 4, {value.height // 8}, {value.width // 8}]"
        return f"{{'samples': tensor(shape={shape}, dtype=torch.float32)}}"
    if isinstance(value, nodes.Token):
        return f"<{value.kind} object>"
    if isinstance(value, nodes.Mask):
        return f"tensor(shape=[{value.batch}, {value.height}, {value.width}], dtype=torch.float32)"
    return str(value)


class ProgressTracker:
    """The per-prompt node states behind `progress_state` messages (every touched node, every time)."""

    def __init__(self, prompt_id: str, hub: Hub, sid: str | None) -> None:
        self.prompt_id = prompt_id
        self.hub = hub
        self.sid = sid
        self.nodes: dict[str, dict[str, Any]] = {}

    def _set(self, node_id: str, value: float, maximum: float, state: str) -> None:
        self.nodes[node_id] = {
            "value": value,
            "max": maximum,
            "state": state,
            "node_id": node_id,
            "prompt_id": self.prompt_id,
            "display_node_id": node_id,
            "parent_node_id": None,
            "real_node_id": node_id,
        }
        snapshot = {key: dict(entry) for key, entry in self.nodes.items()}
        self.hub.send("progress_state", {"prompt_id": self.prompt_id, "nodes": snapshot}, self.sid)

    def start(self, node_id: str) -> None:
        self._set(node_id, 0.0, 1.0, "running")

    def update(self, node_id: str, value: int, maximum: int) -> None:
        self._set(node_id, value, maximum, "running")

    def finish(self, node_id: str) -> None:
        current = self.nodes.get(node_id)
        maximum = current["max"] if current is not None else 1
        self._set(node_id, maximum, maximum, "finished")


class BusyStats:
    """How long the "GPU" was busy, so a benchmark can divide busy time by wall time."""

    def __init__(self) -> None:
        self.busy_seconds = 0.0
        self.prompts = 0
        self.first_start: float | None = None
        self.last_end: float | None = None

    def record(self, started: float, ended: float) -> None:
        self.busy_seconds += ended - started
        self.prompts += 1
        self.first_start = started if self.first_start is None else self.first_start
        self.last_end = ended

    def view(self) -> dict[str, Any]:
        return {"busy_seconds": self.busy_seconds, "prompts": self.prompts, "first_start": self.first_start,
                "last_end": self.last_end}

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


class Executor:
    def __init__(self, config: Config, state: PromptState, hub: Hub) -> None:
        self.config = config
        self.state = state
        self.hub = hub
        self.interrupt_requested = False
        self.current_client_id: str | None = None
        self.last_node_id: str | None = None
        self.cache: dict[str, CacheEntry] = {}
        self.stats = BusyStats()

    def interrupt(self) -> None:
        self.interrupt_requested = True

    def running_prompt_id(self) -> str | None:
        running = self.state.running
        return running[1] if running is not None else None

    async def run_forever(self) -> None:
        while True:
            item = await self.state.get()
            prompt_id = item[1]
            client_id = item[3].get("client_id")
            started = time.time()
            try:
                entry = await self.execute(item)
            except Exception:
                logger.exception("stand-in failure while running prompt %s", prompt_id)
                entry = {
                    "prompt": item,
                    "outputs": {},
                    "status": {"status_str": "error", "completed": False, "messages": []},
                    "meta": {},
                }
            self.state.task_done(item, entry)
            self.stats.record(started, time.time())
            if client_id is not None:
                self.hub.send("executing", {"node": None, "prompt_id": prompt_id}, client_id)
            self.last_node_id = None
            logger.info("prompt %s finished: %s", prompt_id, entry["status"]["status_str"])

    async def execute(self, item: QueueItem) -> dict[str, Any]:
        return await _Run(self, item).go()


class _Run:
    """One execution of one prompt."""

    def __init__(self, executor: Executor, item: QueueItem) -> None:
        self.ex = executor
        self.config = executor.config
        self.hub = executor.hub
        self.item = item
        self.prompt_id: str = item[1]
        self.graph: dict[str, Any] = item[2]
        self.extra_data: dict[str, Any] = item[3]
        self.outputs: list[str] = list(item[4])
        self.client_id: str | None = self.extra_data.get("client_id")
        self.messages: list[list[Any]] = []
        self.progress = ProgressTracker(self.prompt_id, executor.hub, self.client_id)
        self.values: dict[str, tuple[Any, ...]] = {}
        self.executed: list[str] = []
        self.ui_outputs: dict[str, Any] = {}
        self.meta: dict[str, Any] = {}
        self.png_text = png_text_for(self.graph, self.extra_data)

    def add_message(self, event: str, data: dict[str, Any], broadcast: bool = False) -> None:
        """Record a message in the history status and send it (to the prompt's client only)."""
        data = {**data, "timestamp": now_ms()}
        self.messages.append([event, data])
        if self.client_id is not None or broadcast:
            self.hub.send(event, data, self.client_id)

    def send_to_client(self, event: str, data: dict[str, Any]) -> None:
        if self.client_id is not None:
            self.hub.send(event, data, self.client_id)

    async def go(self) -> dict[str, Any]:
        self.ex.current_client_id = self.client_id
        self.ex.interrupt_requested = False
        fail = self.config.fail
        self.add_message("execution_start", {"prompt_id": self.prompt_id})
        if fail == "drop" and self.client_id is not None:
            self.hub.abort(self.client_id)

        signatures = self._signatures()
        current = {sig for sig in signatures.values() if sig is not None}
        # Like ComfyUI's cache: only results that the new prompt can reuse are kept.
        self.ex.cache = {sig: entry for sig, entry in self.ex.cache.items() if sig in current}
        hits: dict[str, CacheEntry] = {}
        if fail not in ("execution_error", "oom"):  # injected failures must strike every prompt
            for node_id, sig in signatures.items():
                if sig is not None and sig in self.ex.cache:
                    hits[node_id] = self.ex.cache[sig]
        self.add_message("execution_cached", {"nodes": list(hits), "prompt_id": self.prompt_id})
        for node_id, entry in hits.items():
            self.values[node_id] = entry.outputs
        order = self._order(set(hits))
        fail_target = self._fail_target(order, set(hits)) if fail in ("execution_error", "oom") else None

        status_ok = True
        for node_id in order:
            if node_id in hits:
                self._replay_cached(node_id, hits[node_id])
                continue
            if not await self._execute_node(node_id, signatures.get(node_id), node_id == fail_target):
                status_ok = False
                break
        if status_ok:
            self.add_message("execution_success", {"prompt_id": self.prompt_id})
        return {
            "prompt": self.item,
            "outputs": self.ui_outputs,
            "status": {
                "status_str": "success" if status_ok else "error",
                "completed": status_ok,
                "messages": self.messages,
            },
            "meta": self.meta,
        }

    def _replay_cached(self, node_id: str, entry: CacheEntry) -> None:
        self.send_to_client(
            "executed",
            {
                "node": node_id,
                "display_node": node_id,
                "output": entry.ui,
                "prompt_id": self.prompt_id,
            },
        )
        self.progress.finish(node_id)
        self.executed.append(node_id)
        if entry.ui is not None:
            self.ui_outputs[node_id] = entry.ui
            self.meta[node_id] = node_meta(node_id)

    async def _execute_node(self, node_id: str, signature: str | None, inject_failure: bool) -> bool:
        node = self.graph[node_id]
        class_type: str = node["class_type"]
        self.progress.start(node_id)
        self.ex.last_node_id = node_id
        self.send_to_client(
            "executing", {"node": node_id, "display_node": node_id, "prompt_id": self.prompt_id}
        )
        inputs: dict[str, Any] = {}
        try:
            if self.ex.interrupt_requested:
                raise Interrupted()
            inputs = self._resolve_inputs(node)
            await asyncio.sleep(self.config.node_seconds)
            if inject_failure:
                _injected_failure(self.config.fail, node_id, class_type)
            ctx = nodes.NodeContext(
                config=self.config,
                prompt_id=self.prompt_id,
                node_id=node_id,
                signature=signature or uuid.uuid4().hex,
                graph=self.graph,
                extra_data=self.extra_data,
                progress=self._progress_fn(node_id),
                png_text=self.png_text,
            )
            result = await nodes.REGISTRY[class_type](ctx, inputs)
        except Interrupted:
            logger.info("prompt %s interrupted at node %s", self.prompt_id, node_id)
            self.add_message(
                "execution_interrupted",
                {
                    "prompt_id": self.prompt_id,
                    "node_id": node_id,
                    "node_type": class_type,
                    "executed": list(self.executed),
                },
                broadcast=True,
            )
            return False
        except Exception as exc:
            self._report_error(node_id, class_type, exc, inputs)
            return False

        self.values[node_id] = result.outputs
        self.executed.append(node_id)
        if signature is not None and class_type not in nodes.NEVER_CACHED:
            self.ex.cache[signature] = CacheEntry(result.outputs, result.ui)
        if result.ui is not None:
            self.ui_outputs[node_id] = result.ui
            self.meta[node_id] = node_meta(node_id)
            self.send_to_client(
                "executed",
                {"node": node_id, "display_node": node_id, "output": result.ui, "prompt_id": self.prompt_id},
            )
        self.progress.finish(node_id)
        return True

    def _report_error(self, node_id: str, class_type: str, exc: Exception, inputs: dict[str, Any]) -> None:
        reported = getattr(exc, "reported_type", None) or _type_name(exc)
        logger.info("prompt %s failed at node %s: %s: %s", self.prompt_id, node_id, reported, exc)
        self.add_message(
            "execution_error",
            {
                "prompt_id": self.prompt_id,
                "node_id": node_id,
                "node_type": class_type,
                "executed": list(self.executed),
                "exception_message": str(exc),
                "exception_type": reported,
                "traceback": _format_tb(exc),
                "current_inputs": {name: [describe(value)] for name, value in inputs.items()},
                "current_outputs": list(self.graph),
            },
        )

    def _progress_fn(self, node_id: str) -> nodes.ProgressFn:
        async def progress(value: int, total: int, preview: bytes | None) -> None:
            if self.ex.interrupt_requested:
                raise Interrupted()
            self.progress.update(node_id, value, total)
            metadata = {
                "node_id": node_id,
                "prompt_id": self.prompt_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
                "image_type": "image/png",
            }
            if preview is not None:
                self.hub.send_preview(preview, metadata, self.client_id, with_metadata=True)
            self.hub.send(
                "progress",
                {"value": value, "max": total, "prompt_id": self.prompt_id, "node": node_id},
                self.client_id,
            )
            if preview is not None:
                self.hub.send_preview(preview, metadata, self.client_id, with_metadata=False)

        return progress

    def _resolve_inputs(self, node: dict[str, Any]) -> dict[str, Any]:
        resolved = {}
        for name, value in node.get("inputs", {}).items():
            if is_link(value):
                resolved[name] = self.values[value[0]][value[1]]
            else:
                resolved[name] = value
        return resolved

    def _order(self, cached: set[str]) -> list[str]:
        """Nodes to run, dependencies first: outputs in order, depth-first along inputs. Cached nodes
        are not run; cached output nodes are replayed in place."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(node_id: str) -> None:
            if node_id in seen:
                return
            seen.add(node_id)
            if node_id in cached:
                if node_id in self.outputs:
                    order.append(node_id)
                return
            for value in self.graph[node_id].get("inputs", {}).values():
                if is_link(value) and value[0] in self.graph:
                    visit(value[0])
            order.append(node_id)

        for output_id in self.outputs:
            visit(output_id)
        return order

    def _fail_target(self, order: list[str], cached: set[str]) -> str | None:
        """Where an injected failure strikes: the sampler if there is one, else the first node fed by
        another node (like the recorded ImageBlur failure), else the first node."""
        runnable = [node_id for node_id in order if node_id not in cached]
        for node_id in runnable:
            if self.graph[node_id]["class_type"] in ("KSampler", "KSamplerAdvanced"):
                return node_id
        for node_id in runnable:
            if any(is_link(v) for v in self.graph[node_id].get("inputs", {}).values()):
                return node_id
        return runnable[0] if runnable else None

    def _signatures(self) -> dict[str, str | None]:
        """Cache keys: class + literal inputs + upstream keys. None for nodes that cannot be keyed."""
        memo: dict[str, str | None] = {}

        def key(node_id: str, stack: frozenset[str]) -> str | None:
            if node_id in memo:
                return memo[node_id]
            if node_id in stack or node_id not in self.graph:
                return None
            node = self.graph[node_id]
            parts: list[Any] = [node.get("class_type")]
            for name in sorted(node.get("inputs", {})):
                value = node["inputs"][name]
                if is_link(value):
                    upstream = key(value[0], stack | {node_id})
                    if upstream is None:
                        memo[node_id] = None
                        return None
                    parts.append((name, "link", upstream, value[1]))
                else:
                    parts.append((name, json.dumps(value, sort_keys=True, default=str)))
            class_type = node.get("class_type")
            if class_type in nodes.NEVER_CACHED:
                parts.append(("nonce", uuid.uuid4().hex))
            if class_type == "LoadImage":
                parts.append(("file", _file_digest(self.config, node.get("inputs", {}).get("image"))))
            digest = hashlib.sha256(repr(parts).encode()).hexdigest()
            memo[node_id] = digest
            return digest

        return {node_id: key(node_id, frozenset()) for node_id in self.graph}


def _file_digest(config: Config, name: Any) -> str | None:
    if not isinstance(name, str):
        return None
    path = resolve_input_image(config, name)
    if path is None:
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _format_tb(exc: BaseException) -> list[str]:
    return traceback.format_tb(exc.__traceback__)


def _injected_failure(mode: str, node_id: str, class_type: str) -> None:
    if mode == "oom":
        raise nodes.NodeRuntimeError(OOM_MESSAGE, reported_type="torch.OutOfMemoryError")
    raise nodes.NodeRuntimeError(
        f"Injected failure (comfyui-standin --fail execution_error) in node {node_id} ({class_type})"
    )
