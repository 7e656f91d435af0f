"""Small tools for replaying the ComfyUI captures against the stand-in: capture loading, key-shape
comparison, a WebSocket collector that reads until the done signal, and HTTP shortcuts."""

from __future__ import annotations

import json
import socket
import struct
import time
from pathlib import Path
from typing import Any

import requests
import websocket

SHARED = Path(__file__).resolve().parents[1] / "fixtures" / "comfyui"  # recorded from a real ComfyUI
CAPTURES = SHARED / "captures"
WORKFLOWS = SHARED / "workflows"

Frame = dict[str, Any]  # {"json": message} or {"binary": bytes}


def capture(name: str) -> Any:
    return json.loads((CAPTURES / f"{name}.json").read_text())


def workflow(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((WORKFLOWS / f"{name}.json").read_text())
    return data


def key_shape_diff(actual: Any, expected: Any, path: str = "$") -> list[str]:
    """Differences in structure: dict key sets (recursively), and dict/list/scalar kind. Values and
    list lengths are ignored (lists are compared element-wise on their common prefix)."""
    problems: list[str] = []
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {type(actual).__name__}"]
        if set(actual) != set(expected):
            problems.append(
                f"{path}: keys differ: missing {sorted(set(expected) - set(actual))}, "
                f"extra {sorted(set(actual) - set(expected))}"
            )
        for key in set(actual) & set(expected):
            problems += key_shape_diff(actual[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{path}: expected a list, got {type(actual).__name__}"]
        for index, (a, e) in enumerate(zip(actual, expected, strict=False)):
            problems += key_shape_diff(a, e, f"{path}[{index}]")
    elif isinstance(actual, (dict, list)):
        problems.append(f"{path}: expected a scalar, got {type(actual).__name__}")
    return problems


def assert_same_shape(actual: Any, expected: Any) -> None:
    problems = key_shape_diff(actual, expected)
    assert not problems, "\n".join(problems)


def without(value: Any, volatile: set[str]) -> Any:
    """A deep copy with the given keys removed from every object (for comparing stable values)."""
    if isinstance(value, dict):
        return {k: without(v, volatile) for k, v in value.items() if k not in volatile}
    if isinstance(value, list):
        return [without(v, volatile) for v in value]
    return value


def frame_type(frame: Frame) -> str:
    """`status`, `executing`... for JSON frames; `binary:<event>` for binary ones."""
    if "json" in frame:
        return str(frame["json"]["type"])
    binary = frame["binary"]
    if isinstance(binary, dict):  # as recorded in a capture
        return f"binary:{binary['event']}"
    return f"binary:{struct.unpack('>I', binary[:4])[0]}"


def types(frames: list[Frame], skip: tuple[str, ...] = ()) -> list[str]:
    return [t for t in map(frame_type, frames) if t not in skip]


def is_done(frame: Frame, prompt_id: str) -> bool:
    message = frame.get("json")
    return (
        message is not None
        and message["type"] == "executing"
        and message["data"].get("node") is None
        and message["data"].get("prompt_id") == prompt_id
    )


def run_slice(frames: list[Frame], prompt_id: str) -> list[Frame]:
    """The frames of one prompt's run in a recording: up to two `status` frames right before its
    execution_start (queue put + get), through its done signal."""
    start = next(
        i
        for i, f in enumerate(frames)
        if "json" in f and f["json"]["type"] == "execution_start" and f["json"]["data"]["prompt_id"] == prompt_id
    )
    first = start
    while (
        start > max(0, first - 2)
        and frame_type(frames[start - 1]) == "status"
        and "sid" not in frames[start - 1]["json"]["data"]
    ):
        start -= 1
    end = next(i for i, f in enumerate(frames) if is_done(f, prompt_id))
    return frames[start : end + 1]


def assert_frames_match(actual: list[Frame], expected: list[Frame]) -> None:
    """Same message types in the same order, and the same key shape for every JSON message."""
    assert types(actual) == types(expected)
    for got, want in zip(actual, expected, strict=True):
        if "json" in want:
            assert_same_shape(got["json"], want["json"])


class WsCollector:
    """A WebSocket client (websocket-client) that records every frame. Connect before posting."""

    def __init__(self, ws_url: str, client_id: str | None = None, timeout: float = 10.0) -> None:
        url = f"{ws_url}?clientId={client_id}" if client_id else ws_url
        self.client_id = client_id
        self.ws = websocket.create_connection(url, timeout=timeout)
        self.frames: list[Frame] = []

    def recv(self, timeout: float) -> Frame:
        self.ws.settimeout(max(timeout, 0.01))
        try:
            data = self.ws.recv()
        except websocket.WebSocketTimeoutException as exc:
            raise TimeoutError(f"no frame within {timeout:.2f}s") from exc
        frame: Frame = {"binary": data} if isinstance(data, bytes) else {"json": json.loads(data)}
        frame["t"] = time.monotonic()
        self.frames.append(frame)
        return frame

    def read_until(self, predicate: Any, timeout: float = 20.0) -> list[Frame]:
        """Frames received from now until (and including) the first one matching `predicate`."""
        deadline = time.monotonic() + timeout
        got: list[Frame] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no matching frame within {timeout}s; got {types(got)}")
            frame = self.recv(remaining)
            got.append(frame)
            if predicate(frame):
                return got

    def drain(self, quiet: float = 0.3) -> list[Frame]:
        """Everything that arrives until the socket has been quiet for `quiet` seconds."""
        got: list[Frame] = []
        while True:
            try:
                got.append(self.recv(quiet))
            except TimeoutError:
                return got

    def until_done(self, prompt_id: str, timeout: float = 20.0) -> list[Frame]:
        return self.read_until(lambda f: is_done(f, prompt_id), timeout)

    def run_of(self, prompt_id: str) -> list[Frame]:
        return run_slice(self.frames, prompt_id)

    def send_json(self, message: Any) -> None:
        self.ws.send(json.dumps(message))

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> WsCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def post_prompt(url: str, graph: dict[str, Any], client_id: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": graph, **extra}
    if client_id is not None:
        body["client_id"] = client_id
    response = requests.post(f"{url}/prompt", json=body, timeout=10)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def history(url: str, prompt_id: str) -> dict[str, Any]:
    response = requests.get(f"{url}/history/{prompt_id}", timeout=10)
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


def wait_history(url: str, prompt_id: str, timeout: float = 20.0) -> dict[str, Any]:
    """The history entry of `prompt_id`, polling until it appears."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = history(url, prompt_id)
        if entry:
            value: dict[str, Any] = entry[prompt_id]
            return value
        time.sleep(0.02)
    raise TimeoutError(f"prompt {prompt_id} not in history after {timeout}s")


def wait_running(url: str, prompt_id: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = requests.get(f"{url}/queue", timeout=10).json()["queue_running"]
        if running and running[0][1] == prompt_id:
            return
        time.sleep(0.01)
    raise TimeoutError(f"prompt {prompt_id} did not start within {timeout}s")


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now, for a server that must not bind at once (startup delay)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def connection_refused(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when nothing listens on host:port (the connect is refused), False when it connects."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return False
    except ConnectionRefusedError:
        return True
