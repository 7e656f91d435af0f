"""The stand-in as the worker's fault tests need it: a restart that refuses connections while it "loads its
nodes" (--startup-delay) and forgets queue, history and numbers, and sockets that stay open but go silent
(--ws-silent, control key ws_silent) while HTTP still tells how a prompt ended."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from comfyq.standin.server import parse_args
from tests.standin.helpers import (
    WsCollector,
    assert_same_shape,
    capture,
    connection_refused,
    frame_type,
    free_port,
    history,
    post_prompt,
    types,
    wait_history,
    wait_running,
    workflow,
)
from tests.support.standin import StandinProcess

HOST = "127.0.0.1"


def control(standin: StandinProcess, **changes: Any) -> dict[str, Any]:
    response = requests.post(f"{standin.url}/standin/control", json=changes, timeout=10)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def prompt_ids(frames: list[dict[str, Any]]) -> set[str]:
    return {f["json"]["data"]["prompt_id"] for f in frames if "json" in f and "prompt_id" in f["json"]["data"]}


# --- startup delay and restart ----------------------------------------------------------------------


def test_startup_delay_option_parsing() -> None:
    assert parse_args([]).startup_delay == (0.0, 0.0)
    assert parse_args(["--startup-delay", "2.5"]).startup_delay == (2.5, 2.5)
    assert parse_args(["--startup-delay", "6-13"]).startup_delay == (6.0, 13.0)
    for bad in ("-1", "5-1", "x", "1-y", "inf"):
        with pytest.raises(SystemExit):
            parse_args(["--startup-delay", bad])


def test_startup_delay_refuses_connections_then_serves(tmp_path: Path) -> None:
    low, high = 1.5, 2.0
    port = free_port(HOST)
    standin = StandinProcess(tmp_path, port=port, startup_delay=f"{low}-{high}", node_seconds=0.01)
    with ThreadPoolExecutor(max_workers=1) as pool:
        began = time.monotonic()
        starting = pool.submit(standin.start)
        try:
            # Well past the ~0.5 s a stand-in without delay needs to listen, the port still refuses.
            probes = 0
            while time.monotonic() < began + low - 0.2:
                assert connection_refused(HOST, port), "the port accepted a connection during the startup delay"
                probes += 1
                time.sleep(0.05)
            starting.result(timeout=60)
            assert time.monotonic() - began >= low
            assert probes >= 10
            assert standin.port == port
            assert requests.get(f"{standin.url}/system_stats", timeout=10).status_code == 200
            entry = wait_history(standin.url, post_prompt(standin.url, workflow("invert"))["prompt_id"])
            assert entry["status"]["status_str"] == "success"
            drawn = re.search(r"start-up delay: the port opens in ([0-9.]+) s", standin.log_tail(20000))
            assert drawn is not None and low <= float(drawn.group(1)) <= high
        finally:
            if not starting.done():
                starting.exception(timeout=60)
            standin.stop()


def test_sigterm_during_startup_delay_exits_without_listening(tmp_path: Path) -> None:
    port = free_port(HOST)
    log_path = tmp_path / "standin.log"
    command = [
        sys.executable, "-m", "comfyq.standin", "--host", HOST, "--port", str(port),
        "--output-dir", str(tmp_path / "o"), "--input-dir", str(tmp_path / "i"), "--startup-delay", "30",
    ]  # fmt: skip
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 20
        while "start-up delay" not in log_path.read_text(encoding="utf-8"):
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text(encoding="utf-8")
            time.sleep(0.05)
        assert connection_refused(HOST, port)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
        assert time.monotonic() - started < 2.0
        assert process.stdout is not None and process.stdout.read() == ""  # never announced
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_kill_and_restart_on_the_same_port_forgets_everything(tmp_path: Path) -> None:
    """After kill -9 and a restart (with the delay a real ComfyUI has) on the same port: empty /queue and
    /history, numbers from 0 again, and sockets greeted like any new connection: sid = clientId when one is
    given (as in captures/reconnect.json), else a new uuid4 hex (as ws_B in captures/queue_interrupt.json)."""
    greeting = capture("reconnect")["reconnect_frames"][0]["json"]
    first = StandinProcess(tmp_path / "first", node_seconds=0.3)
    second: StandinProcess | None = None
    try:
        first.start()
        port = first.port
        invert = workflow("invert")
        slow = workflow("slow_chain_6x_blur_1024")
        with WsCollector(first.ws_url, "probe-rs") as named, WsCollector(first.ws_url) as anonymous:
            assert named.recv(5)["json"]["data"]["sid"] == "probe-rs"
            old_anonymous_sid = anonymous.recv(5)["json"]["data"]["sid"]
            done = post_prompt(first.url, invert, "probe-rs", prompt_id="before-done")
            wait_history(first.url, "before-done")
            running = post_prompt(first.url, slow, "probe-rs", prompt_id="before-running")
            pending = post_prompt(first.url, slow, "probe-rs", prompt_id="before-pending")
            assert [done["number"], running["number"], pending["number"]] == [0, 1, 2]
            wait_running(first.url, "before-running")
            first.kill()
        assert connection_refused(HOST, port)

        second = StandinProcess(tmp_path / "second", port=port, startup_delay=1, node_seconds=0.01)
        second.start()
        assert second.port == port
        url = second.url
        assert requests.get(f"{url}/queue", timeout=10).json() == {"queue_running": [], "queue_pending": []}
        assert requests.get(f"{url}/history", timeout=10).json() == {}
        for prompt_id in ("before-done", "before-running", "before-pending"):
            assert history(url, prompt_id) == {}
        assert requests.get(f"{url}/prompt", timeout=10).json() == {"exec_info": {"queue_remaining": 0}}

        with WsCollector(second.ws_url, "probe-rs") as named, WsCollector(second.ws_url) as anonymous:
            hello = named.recv(5)["json"]
            assert_same_shape(hello, greeting)
            assert hello["data"] == {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "probe-rs"}
            assert named.drain(0.3) == []  # nothing runs: no `executing` re-sent as on a mid-run reconnect
            new_anonymous_sid = anonymous.recv(5)["json"]["data"]["sid"]
            assert re.fullmatch(r"[0-9a-f]{32}", new_anonymous_sid) and new_anonymous_sid != old_anonymous_sid

            again = post_prompt(url, invert, "probe-rs")
            assert again["number"] == 0
            named.until_done(again["prompt_id"])
        assert wait_history(url, again["prompt_id"])["prompt"][0] == 0
    finally:
        first.stop()
        if second is not None:
            second.stop()


# --- silent sockets ---------------------------------------------------------------------------------


def test_ws_silent_drops_events_while_http_reports_the_end(standin: StandinProcess) -> None:
    url = standin.url
    assert requests.get(f"{url}/standin/control", timeout=10).json()["ws_silent"] is False
    with WsCollector(standin.ws_url, "quiet") as ws, WsCollector(standin.ws_url) as watcher:
        ws.recv(5)
        watcher.recv(5)
        assert control(standin, ws_silent=True)["ws_silent"] is True

        silenced = post_prompt(url, workflow("invert"), "quiet")
        entry = wait_history(url, silenced["prompt_id"])
        assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
        assert requests.get(f"{url}/queue", timeout=10).json() == {"queue_running": [], "queue_pending": []}
        with WsCollector(standin.ws_url, "late") as late:
            assert late.drain(0.3) == []  # not even the greeting
        assert ws.drain(0.5) == []
        assert watcher.drain(0.1) == []
        assert ws.ws.connected and watcher.ws.connected  # open, just quiet

        assert control(standin, ws_silent=False)["ws_silent"] is False
        resumed = post_prompt(url, workflow("blur"), "quiet")
        frames = ws.until_done(resumed["prompt_id"])
        assert "execution_start" in types(frames)
        assert types(frames)[-3:] == ["execution_success", "status", "executing"]
        # Events of the silenced prompt were dropped, not held back until now.
        assert prompt_ids(ws.frames) == {resumed["prompt_id"]}
        assert all("sid" not in f["json"]["data"] for f in frames if frame_type(f) == "status")
        assert "status" in types(watcher.drain(0.3))


def test_ws_silent_from_the_command_line(tmp_path: Path) -> None:
    with StandinProcess(tmp_path, node_seconds=0.01, ws_silent=True) as standin:
        url = standin.url
        assert requests.get(f"{url}/standin/control", timeout=10).json()["ws_silent"] is True
        for bad in ("yes", 1, None):
            response = requests.post(f"{url}/standin/control", json={"ws_silent": bad}, timeout=10)
            assert response.status_code == 400, bad
        assert requests.get(f"{url}/standin/control", timeout=10).json()["ws_silent"] is True
        with WsCollector(standin.ws_url, "cli-quiet") as ws:
            ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
            post = post_prompt(url, workflow("ws_progress_SaveImageWebsocket"), "cli-quiet")
            assert wait_history(url, post["prompt_id"])["status"]["status_str"] == "success"
            assert ws.drain(0.5) == []
            control(standin, ws_silent=False)
            again = post_prompt(url, workflow("invert"), "cli-quiet")
            ws.until_done(again["prompt_id"])
            assert prompt_ids(ws.frames) == {again["prompt_id"]}
