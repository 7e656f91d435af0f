"""Replays the recordings of real ComfyUI 0.3.64 against the stand-in and compares message types, their
order and the key shapes of WebSocket messages and HTTP bodies (volatile values ignored)."""

from __future__ import annotations

import io
import json
import signal
import struct
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket
from PIL import Image

from tests.standin.helpers import (
    WsCollector,
    assert_frames_match,
    assert_same_shape,
    capture,
    frame_type,
    history,
    post_prompt,
    run_slice,
    types,
    wait_history,
    wait_running,
    without,
    workflow,
)
from tests.support.standin import StandinProcess

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def only_entry(body: dict[str, Any]) -> dict[str, Any]:
    assert len(body) == 1, list(body)
    value: dict[str, Any] = next(iter(body.values()))
    return value


def captured_graph(entry: dict[str, Any]) -> dict[str, Any]:
    graph: dict[str, Any] = entry["prompt"][2]
    return graph


# --- basic_invert.json ------------------------------------------------------------------------------


def test_basic_invert_run_then_fully_cached_rerun(standin: StandinProcess) -> None:
    cap = capture("basic_invert")
    first_id, second_id = cap["post_prompt"]["body"]["prompt_id"], cap["post_prompt_2"]["prompt_id"]
    cap_entry = cap["history"]["body"][first_id]
    graph = captured_graph(cap_entry)
    client = f"probe-{uuid.uuid4().hex[:8]}"
    with WsCollector(standin.ws_url, client) as ws:
        hello = ws.recv(5)
        assert_same_shape(hello["json"], cap["ws"][0]["json"])
        assert hello["json"]["data"]["sid"] == client

        post = requests.post(f"{standin.url}/prompt", json={"prompt": graph, "client_id": client}, timeout=10)
        assert post.status_code == 200
        assert post.headers["Content-Type"] == cap["post_prompt"]["headers"]["Content-Type"]
        assert_same_shape(post.json(), cap["post_prompt"]["body"])
        assert post.json()["number"] == 0 and post.json()["node_errors"] == {}
        prompt_id = post.json()["prompt_id"]
        ws.until_done(prompt_id)
        assert_frames_match(ws.run_of(prompt_id), run_slice(cap["ws"], first_id))

        # History is complete by the time the done signal arrives.
        entry = only_entry(history(standin.url, prompt_id))
        assert_same_shape(entry, cap_entry)
        assert entry["prompt"][0] == 0 and entry["prompt"][1] == prompt_id
        assert entry["prompt"][2:] == [*cap_entry["prompt"][2:3], {"client_id": client}, ["3"]]
        assert entry["outputs"] == cap_entry["outputs"]
        assert entry["meta"] == cap_entry["meta"]
        assert [m[0] for m in entry["status"]["messages"]] == [m[0] for m in cap_entry["status"]["messages"]]
        assert without(entry["status"], {"messages"}) == without(cap_entry["status"], {"messages"})

        view = requests.get(
            f"{standin.url}/view", params={"filename": "probe_invert_00001_.png", "type": "output"}, timeout=10
        )
        assert view.status_code == 200
        for header in ("Content-Type", "Content-Disposition"):
            assert view.headers[header] == cap["view"]["headers"][header]
        assert view.content[:8] == PNG_MAGIC
        assert (standin.output_dir / "probe_invert_00001_.png").read_bytes() == view.content

        # Identical graph again: everything cached, no new file, the old filename replayed.
        post2 = post_prompt(standin.url, graph, client)
        assert post2["number"] == 1
        ws.until_done(post2["prompt_id"])
        assert_frames_match(ws.run_of(post2["prompt_id"]), run_slice(cap["ws"], second_id))
        cached = [f["json"] for f in ws.run_of(post2["prompt_id"]) if frame_type(f) == "execution_cached"]
        assert cached[0]["data"]["nodes"] == ["1", "2", "3"]
    entry2 = only_entry(history(standin.url, post2["prompt_id"]))
    cap_entry2 = cap["history2"][second_id]
    assert_same_shape(entry2, cap_entry2)
    assert entry2["outputs"] == cap_entry2["outputs"]
    assert entry2["status"]["messages"][1][1]["nodes"] == ["1", "2", "3"]
    assert sorted(p.name for p in standin.output_dir.iterdir()) == ["probe_invert_00001_.png"]


# --- errors.json ------------------------------------------------------------------------------------

ERROR_CASES = [name for name in capture("errors") if name != "runtime_error"]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_validation_error_bodies(standin: StandinProcess, case: str) -> None:
    cap = capture("errors")[case]
    if isinstance(cap["request"], str):
        response = requests.post(
            f"{standin.url}/prompt", data=cap["request"], headers={"Content-Type": "application/json"}, timeout=10
        )
    else:
        response = requests.post(f"{standin.url}/prompt", json=cap["request"], timeout=10)
    assert response.status_code == cap["status"]
    assert response.headers["Content-Type"] == cap["content_type"]
    if not isinstance(cap["body"], dict):
        assert response.text == cap["body"]
        return
    body = response.json()
    assert_same_shape(body, cap["body"])
    if cap["status"] == 200:  # partially valid: accepted, invalid output reported and skipped
        assert without(body, {"prompt_id", "number"}) == without(cap["body"], {"prompt_id", "number"})
        entry = wait_history(standin.url, body["prompt_id"])
        assert entry["prompt"][4] == ["3"] and list(entry["outputs"]) == ["3"]
        return
    # Everything but tracebacks (which name the stand-in's own frames) is deterministic.
    assert without(body, {"traceback"}) == without(cap["body"], {"traceback"})
    for node in body["node_errors"].values():
        for error in node["errors"]:
            if "traceback" in error["extra_info"]:
                assert all(isinstance(line, str) for line in error["extra_info"]["traceback"])
    # A rejected prompt never reaches the queue or history.
    assert requests.get(f"{standin.url}/queue", timeout=10).json() == {"queue_running": [], "queue_pending": []}
    assert requests.get(f"{standin.url}/history", timeout=10).json() == {}


def test_rejected_prompts_still_count_numbers(standin: StandinProcess) -> None:
    cases = capture("errors")
    for name in ("missing_input", "unknown_class", "no_prompt_key"):
        assert requests.post(f"{standin.url}/prompt", json=cases[name]["request"], timeout=10).status_code == 400
    assert post_prompt(standin.url, workflow("invert"))["number"] == 3


def test_runtime_error_at_execution(standin: StandinProcess) -> None:
    cap = capture("errors")["runtime_error"]
    cap_id = cap["post"]["body"]["prompt_id"]
    client = "probe-rterr"
    with WsCollector(standin.ws_url, client) as ws:
        ws.recv(5)
        post = post_prompt(standin.url, workflow("runtime_error_blur_8x8"), client)
        assert post["node_errors"] == {}
        ws.until_done(post["prompt_id"])
        frames = ws.run_of(post["prompt_id"])
    assert_frames_match(frames, run_slice(cap["ws"], cap_id))
    error = next(f["json"]["data"] for f in frames if frame_type(f) == "execution_error")
    cap_error = cap["history"][cap_id]["status"]["messages"][-1][1]
    assert set(error) == set(cap_error)
    for key in ("node_id", "node_type", "executed", "exception_message", "exception_type"):
        assert error[key] == cap_error[key], key
    assert set(error["current_inputs"]) == set(cap_error["current_inputs"])
    assert sorted(error["current_outputs"]) == sorted(cap_error["current_outputs"])
    entry = only_entry(history(standin.url, post["prompt_id"]))
    cap_entry = cap["history"][cap_id]
    assert_same_shape(entry, cap_entry)
    assert entry["outputs"] == {} and entry["meta"] == {}
    assert without(entry["status"], {"messages"}) == {"status_str": "error", "completed": False}
    assert [m[0] for m in entry["status"]["messages"]] == [m[0] for m in cap_entry["status"]["messages"]]


# --- progress_ws.json -------------------------------------------------------------------------------


def test_progress_and_binary_previews(standin: StandinProcess) -> None:
    cap = capture("progress_ws")["plain"]
    cap_id = cap["post"]["prompt_id"]
    cap_entry = cap["history"][cap_id]
    with WsCollector(standin.ws_url, "probe-plain") as ws:
        ws.recv(5)
        post = post_prompt(standin.url, captured_graph(cap_entry), "probe-plain")
        ws.until_done(post["prompt_id"])
        frames = ws.run_of(post["prompt_id"])
    assert_frames_match(frames, run_slice(cap["ws"], cap_id))
    progress = [f["json"]["data"] for f in frames if frame_type(f) == "progress"]
    assert [(p["value"], p["max"], p["node"]) for p in progress] == [(0, 3, "3"), (1, 3, "3"), (2, 3, "3")]
    for frame in frames:
        if "binary" in frame:
            event, image_type = struct.unpack(">II", frame["binary"][:8])
            assert (event, image_type) == (1, 2)
            assert frame["binary"][8:16] == PNG_MAGIC
    entry = only_entry(history(standin.url, post["prompt_id"]))
    assert_same_shape(entry, cap_entry)
    assert entry["outputs"] == {} and entry["meta"] == {}


def test_progress_with_preview_metadata_flag(standin: StandinProcess) -> None:
    cap = capture("progress_ws")
    flags = cap["flags"]
    cap_id = flags["post"]["prompt_id"]
    graph = captured_graph(cap["plain"]["history"][cap["plain"]["post"]["prompt_id"]])
    graph["1"]["inputs"].update(batch_size=2, color=4242)
    with WsCollector(standin.ws_url, "probe-flags") as ws:
        ws.recv(5)
        ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
        reply = ws.recv(5)
        assert reply["json"] == flags["ws"][1]["json"]
        assert requests.get(f"{standin.url}/features", timeout=10).json() == cap["features"]
        post = post_prompt(standin.url, graph, "probe-flags")
        ws.until_done(post["prompt_id"])
        frames = ws.run_of(post["prompt_id"])
    assert_frames_match(frames, run_slice(flags["ws"], cap_id))
    cap_meta = next(f["binary"]["metadata"] for f in flags["ws"] if "binary" in f)
    for frame in frames:
        if "binary" in frame:
            data = frame["binary"]
            event, length = struct.unpack(">II", data[:8])
            metadata = json.loads(data[8 : 8 + length])
            assert event == 4
            assert set(metadata) == set(cap_meta)
            assert metadata["prompt_id"] == post["prompt_id"] and metadata["image_type"] == "image/png"
            assert data[8 + length : 16 + length] == PNG_MAGIC


# --- queue_interrupt.json ---------------------------------------------------------------------------


def test_queue_delete_and_interrupts(slow_standin: StandinProcess) -> None:
    cap = capture("queue_interrupt")
    url = slow_standin.url
    slow, quick = workflow("slow_chain_6x_blur_1024"), workflow("invert")
    client = "probe-A"
    ws_a = WsCollector(slow_standin.ws_url, client)
    ws_b = WsCollector(slow_standin.ws_url)  # no clientId: gets only broadcasts
    try:
        ws_a.recv(5)
        hello_b = ws_b.recv(5)
        assert_same_shape(hello_b["json"], cap["ws_B_all"][0]["json"])
        assert len(hello_b["json"]["data"]["sid"]) == 32

        s1 = post_prompt(url, slow, client, prompt_id="my-job-0001")
        assert s1["prompt_id"] == "my-job-0001"
        wait_running(url, "my-job-0001")
        s2 = post_prompt(url, {**slow, "1": {**slow["1"], "inputs": {**slow["1"]["inputs"], "color": 102}}}, client)
        s3 = post_prompt(url, quick, client)
        s4 = post_prompt(url, quick, client, front=True)
        assert s4["number"] == -(s3["number"] + 1) < 0
        for body, key in ((s1, "S1"), (s2, "S2"), (s3, "S3"), (s4, "S4_front")):
            assert_same_shape(body, cap[key]["body"])

        queue = requests.get(f"{url}/queue", timeout=10).json()
        assert_same_shape(queue["queue_running"][0], cap["queue_raw_first_running_item"])
        assert queue["queue_running"][0][:2] == [s1["number"], "my-job-0001"]
        assert queue["queue_running"][0][3:] == [{"client_id": client}, ["99"]]
        pending = {item[1]: item[0] for item in queue["queue_pending"]}
        assert pending == {s2["prompt_id"]: s2["number"], s3["prompt_id"]: s3["number"], s4["prompt_id"]: -3}
        assert requests.get(f"{url}/prompt", timeout=10).json() == cap["get_prompt"]

        deleted = requests.post(f"{url}/queue", json={"delete": [s3["prompt_id"]]}, timeout=10)
        assert (deleted.status_code, deleted.text) == (200, "")
        assert "Content-Type" not in deleted.headers
        queue = requests.get(f"{url}/queue", timeout=10).json()
        assert [item[1] for item in queue["queue_pending"]] == [s4["prompt_id"], s2["prompt_id"]]
        assert history(url, s3["prompt_id"]) == cap["history_S3_deleted"]

        not_running = requests.post(f"{url}/interrupt", json={"prompt_id": s2["prompt_id"]}, timeout=10)
        assert (not_running.status_code, not_running.text) == (200, "")
        time.sleep(0.3)
        assert requests.get(f"{url}/queue", timeout=10).json()["queue_running"][0][1] == "my-job-0001"

        started = time.monotonic()
        interrupt = requests.post(f"{url}/interrupt", json={"prompt_id": "my-job-0001"}, timeout=10)
        assert (interrupt.status_code, interrupt.text) == (200, "")
        ws_a.until_done("my-job-0001")
        assert time.monotonic() - started < 1.0  # takes effect at the next node
        h1 = only_entry(history(url, "my-job-0001"))
        cap_h1 = cap["history_S1"]["my-job-0001"]
        assert_same_shape(h1, cap_h1)
        assert without(h1["status"], {"messages"}) == without(cap_h1["status"], {"messages"})
        assert [m[0] for m in h1["status"]["messages"]] == [m[0] for m in cap_h1["status"]["messages"]]
        assert h1["outputs"] == {}

        ws_a.until_done(s4["prompt_id"])  # the front prompt runs next, then S2
        wait_running(url, s2["prompt_id"])
        ws_a.read_until(lambda f: frame_type(f) == "executing" and f["json"]["data"]["node"] == "10")
        global_interrupt = requests.post(f"{url}/interrupt", timeout=10)
        assert (global_interrupt.status_code, global_interrupt.text) == (200, "")
        ws_a.until_done(s2["prompt_id"])
        h2 = only_entry(history(url, s2["prompt_id"]))
        assert h2["status"]["messages"][-1][0] == "execution_interrupted"

        s5 = post_prompt(url, {**quick, "1": {**quick["1"], "inputs": {**quick["1"]["inputs"], "color": 5}}})
        wait_history(url, s5["prompt_id"])
        ws_a.drain()
        ws_b.drain()
        assert requests.get(f"{url}/history/nope", timeout=10).json() == cap["history_unknown"]["body"]
    finally:
        ws_a.close()
        ws_b.close()

    # S1: interrupted at the start of a node, like the capture.
    cap_s1 = run_slice(cap["ws_A_all"], "my-job-0001")
    s1_frames = ws_a.run_of("my-job-0001")
    assert types(s1_frames[-4:]) == types(cap_s1[-4:]) == ["executing", "execution_interrupted", "status", "executing"]
    interrupted = s1_frames[-3]["json"]["data"]
    assert set(interrupted) == set(cap_s1[-3]["json"]["data"])
    assert interrupted["node_id"] == s1_frames[-4]["json"]["data"]["node"]
    assert interrupted["node_type"] == "ImageBlur" and "1" in interrupted["executed"]
    assert types(s1_frames[:6]) == types(cap_s1[:6])
    # The front prompt ran uninterrupted, exactly like the captured one.
    cap_s4 = run_slice(cap["ws_A_all"], "876269a0-5b60-4262-8aaf-d26108bcc120")
    assert_frames_match(ws_a.run_of(s4["prompt_id"]), cap_s4)
    # A prompt without client_id: its client sees only broadcasts (status, progress_state).
    s5_frames = [f for f in ws_a.frames if "json" in f and f["json"]["data"].get("prompt_id") == s5["prompt_id"]]
    s5_id = "a8fb064f-8196-4625-8385-7374442b6425"
    cap_s5 = [f for f in cap["ws_A_all"] if f["json"]["data"].get("prompt_id") == s5_id]
    assert types(s5_frames) == types(cap_s5)
    assert set(types(ws_b.frames)) == set(types(cap["ws_B_all"])) == {"status", "progress_state"}
    assert {f["json"]["data"]["prompt_id"] for f in ws_b.frames if frame_type(f) == "progress_state"} == {
        s5["prompt_id"]
    }


# --- reconnect.json ---------------------------------------------------------------------------------


def test_reconnect_mid_run_resends_current_node(slow_standin: StandinProcess) -> None:
    cap = capture("reconnect")["reconnect_frames"]
    client = "probe-rc"
    with WsCollector(slow_standin.ws_url, client) as first:
        first.recv(5)
        post = post_prompt(slow_standin.url, workflow("slow_chain_6x_blur_1024"), client)
        first.read_until(lambda f: frame_type(f) == "executing" and f["json"]["data"]["node"] == "10")
    with WsCollector(slow_standin.ws_url, client) as second:
        hello = second.recv(5)
        assert_same_shape(hello["json"], cap[0]["json"])
        assert hello["json"]["data"]["sid"] == client
        assert hello["json"]["data"]["status"]["exec_info"]["queue_remaining"] == 1
        resent = second.recv(5)
        assert resent["json"]["type"] == "executing"
        assert set(resent["json"]["data"]) == set(cap[1]["json"]["data"]) == {"node"}
        assert resent["json"]["data"]["node"] in ("10", "11")
        second.until_done(post["prompt_id"])
        frames = second.frames
    # The capture was recorded without progress_state frames.
    got, want = types(frames, skip=("progress_state",)), types(cap, skip=("progress_state",))
    assert got[:2] == want[:2] and got[-4:] == want[-4:]
    assert set(got[2:-4]) == set(want[2:-4]) == {"executing"}
    node_keys = set(cap[2]["json"]["data"])
    for frame in frames[2:-1]:
        if frame_type(frame) == "executing":
            assert set(frame["json"]["data"]) == node_keys
    assert set(frames[-1]["json"]["data"]) == set(cap[-1]["json"]["data"])


# --- misc.json --------------------------------------------------------------------------------------


def _upload(url: str, name: str, data: bytes, **fields: str) -> requests.Response:
    return requests.post(f"{url}/upload/image", files={"image": (name, data, "image/png")}, data=fields, timeout=10)


def _png(color: tuple[int, int, int], size: tuple[int, int] = (16, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_misc_uploads(standin: StandinProcess) -> None:
    cap = capture("misc")
    url = standin.url
    first, other = _png((1, 2, 3)), _png((200, 100, 0))
    checks = [
        ("upload_1", _upload(url, "probe_upload.png", first)),
        ("upload_same_bytes_again", _upload(url, "probe_upload.png", first)),
        ("upload_same_name_diff_bytes", _upload(url, "probe_upload.png", other)),
        ("upload_overwrite", _upload(url, "probe_upload.png", other, overwrite="true")),
        ("upload_subfolder", _upload(url, "sub_probe.png", first, subfolder="jobs/abc")),
        ("upload_temp_type", _upload(url, "tmp_probe.png", first, type="temp")),
    ]
    for key, response in checks:
        assert response.status_code == cap[key]["status"], key
        assert response.json() == cap[key]["body"], key
    assert (standin.input_dir / "probe_upload.png").read_bytes() == other
    assert (standin.input_dir / "probe_upload (1).png").read_bytes() == other
    assert (standin.input_dir / "jobs" / "abc" / "sub_probe.png").is_file()

    no_file = requests.post(f"{url}/upload/image", data={"subfolder": "x"}, timeout=10)
    assert (no_file.status_code, no_file.text) == (cap["upload_no_file"]["status"], cap["upload_no_file"]["body"])
    traversal = _upload(url, "evil.png", first, subfolder="../..")
    assert (traversal.status_code, traversal.text) == (400, "")
    traversal2 = _upload(url, "../evil.png", first)
    assert traversal2.status_code == 400

    info = requests.get(f"{url}/object_info/LoadImage", timeout=10).json()
    assert info["LoadImage"]["input"]["required"]["image"][0] == [
        "example.png", "probe_upload (1).png", "probe_upload.png"
    ]  # fmt: skip

    # LoadImage from the input dir, and from a subfolder into an output subfolder.
    post = post_prompt(url, cap["loadimage_request"])
    assert_same_shape(post, cap["loadimage_post"])
    assert wait_history(url, post["prompt_id"])["outputs"] == cap["loadimage_history_outputs"]
    graph = json.loads(json.dumps(cap["loadimage_request"]))
    graph["1"]["inputs"]["image"] = "jobs/abc/sub_probe.png"
    graph["3"]["inputs"]["filename_prefix"] = "jobs/xyz/probe_sub"
    sub = post_prompt(url, graph)
    assert wait_history(url, sub["prompt_id"])["outputs"] == cap["loadimage_subfolder_outputs"]
    view = requests.get(f"{url}/view", params=cap["view_subfolder"]["params"], timeout=10)
    assert (view.status_code, view.headers["Content-Type"]) == (200, cap["view_subfolder"]["ct"])


def test_misc_preview_and_view_cases(standin: StandinProcess) -> None:
    cap = capture("misc")
    url = standin.url
    wait_history(url, post_prompt(url, workflow("invert"))["prompt_id"])  # probe_invert_00001_.png
    assert _upload(url, "probe_upload.png", _png((9, 9, 9))).status_code == 200
    preview = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 2, "color": 77}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    outputs = wait_history(url, post_prompt(url, preview)["prompt_id"])["outputs"]
    assert_same_shape(outputs, cap["preview_outputs"])
    images = outputs["2"]["images"]
    assert [i["type"] for i in images] == ["temp", "temp"]
    assert images[0]["filename"].startswith("ComfyUI_temp_") and images[0]["filename"].endswith("_00001_.png")
    view_temp = requests.get(f"{url}/view", params=images[0], timeout=10)
    assert (view_temp.status_code, view_temp.headers["Content-Type"]) == (200, cap["view_temp"]["ct"])

    for case in cap["view_cases"]:
        response = requests.get(f"{url}/view", params=case["params"], timeout=10)
        assert response.status_code == case["status"], case["params"]
        assert response.headers.get("Content-Type") == case["ct"], case["params"]
        assert response.headers.get("Content-Disposition") == case["cd"], case["params"]
        # The magic number only: a RIFF header also carries the (size-dependent) length.
        assert response.content[:4].hex() == case["body_head"][:8], case["params"]
        if case["status"] != 200:
            assert response.content == b""


def test_misc_ids_numbers_and_history_paging(standin: StandinProcess) -> None:
    cap = capture("misc")
    url = standin.url
    graph = workflow("invert")

    def colored(color: int) -> dict[str, Any]:
        g = json.loads(json.dumps(graph))
        g["1"]["inputs"]["color"] = color
        return g

    ids = []
    for color in (1, 2, 3):
        ids.append(post_prompt(url, colored(color))["prompt_id"])
        wait_history(url, ids[-1])
    dup1 = post_prompt(url, colored(901), prompt_id="dup-1")
    assert_same_shape(dup1, cap["dup_prompt_id"]["post1"])
    assert dup1["prompt_id"] == "dup-1"
    first_outputs = wait_history(url, "dup-1")["outputs"]
    dup2 = post_prompt(url, colored(902), prompt_id="dup-1")
    assert dup2["number"] == dup1["number"] + 1
    deadline = time.monotonic() + 10
    while wait_history(url, "dup-1")["prompt"][0] != dup2["number"] and time.monotonic() < deadline:
        time.sleep(0.02)
    second = wait_history(url, "dup-1")
    assert second["prompt"][2]["1"]["inputs"]["color"] == 902
    assert second["outputs"] != first_outputs  # a new file, counter +1
    assert first_outputs["3"]["images"][0]["filename"] == "probe_invert_00004_.png"
    assert second["outputs"]["3"]["images"][0]["filename"] == "probe_invert_00005_.png"

    as_int = post_prompt(url, colored(903), prompt_id=12345)
    assert as_int["prompt_id"] == cap["int_prompt_id"]["prompt_id"]
    assert list(history(url, "12345")) in ([], cap["int_prompt_id_hist_keys"])
    wait_history(url, "12345")
    explicit = post_prompt(url, colored(904), number=5.5)
    assert explicit["number"] == cap["explicit_number"]["number"]
    wait_history(url, explicit["prompt_id"])

    everything = requests.get(f"{url}/history", timeout=10).json()
    keys = list(everything)
    assert keys == [*ids, "dup-1", "12345", explicit["prompt_id"]]
    last2 = requests.get(f"{url}/history", params={"max_items": 2}, timeout=10).json()
    assert list(last2) == keys[-2:]
    paged = requests.get(f"{url}/history", params={"max_items": 2, "offset": 1}, timeout=10).json()
    assert list(paged) == keys[1:3]

    deleted = requests.post(f"{url}/history", json={"delete": [ids[0]]}, timeout=10)
    expected = cap["post_history_delete"]
    assert (deleted.status_code, deleted.text) == (expected["status"], expected["body"])
    assert history(url, ids[0]) == cap["history_after_delete"]
    assert requests.post(f"{url}/history", json={"clear": True}, timeout=10).status_code == 200
    assert requests.get(f"{url}/history", timeout=10).json() == {}


def test_misc_info_routes_and_api_prefix(standin: StandinProcess) -> None:
    cap = capture("misc")
    url = standin.url
    stats = requests.get(f"{url}/system_stats", timeout=10).json()
    assert_same_shape(stats, cap["system_stats"])
    assert stats["devices"][0]["type"] == "cpu" and stats["system"]["comfyui_version"] == "0.3.64"
    assert requests.get(f"{url}/object_info/EmptyImage", timeout=10).json() == cap["object_info_EmptyImage"]
    unknown = requests.get(f"{url}/object_info/NoSuchNode", timeout=10)
    assert (unknown.status_code, unknown.json()) == (200, cap["object_info_unknown"])
    everything = requests.get(f"{url}/object_info", timeout=10)
    assert everything.status_code == 200
    assert {"EmptyImage", "SaveImage", "KSampler", "CheckpointLoaderSimple"} <= set(everything.json())
    for name in ("EmptyImage", "ImageBlur", "ImageInvert", "ImageScale", "PreviewImage", "SaveImage"):
        assert_same_shape(everything.json()[name], capture(f"objinfo_{name}")[name])
    assert requests.get(f"{url}/api/prompt", timeout=10).json() == cap["api_prefix_prompt"]
    assert requests.get(f"{url}/api/queue", timeout=10).json() == cap["api_prefix_queue"]
    assert requests.get(f"{url}/api/features", timeout=10).json() == cap["features"]
    assert requests.get(f"{url}/features", timeout=10).json() == cap["features"]
    assert requests.get(f"{url}/embeddings", timeout=10).json() == cap["embeddings"]
    assert requests.get(f"{url}/models", timeout=10).json() == cap["models"]
    assert requests.get(f"{url}/api/models", timeout=10).json() == cap["models"]
    free = requests.post(f"{url}/free", json={"unload_models": True, "free_memory": True}, timeout=10)
    assert free.status_code == cap["post_free"]["status"]
    clear = requests.post(f"{url}/api/queue", json={"clear": True}, timeout=10)
    assert clear.status_code == cap["post_queue_clear"]["status"]
    post = requests.post(f"{url}/api/prompt", json={"prompt": workflow("save_512")}, timeout=10)
    assert post.status_code == 200
    assert wait_history(url, post.json()["prompt_id"])["status"]["status_str"] == "success"
    assert requests.get(f"{url}/api/history/{post.json()['prompt_id']}", timeout=10).json() != {}


# --- restart.json -----------------------------------------------------------------------------------


def test_restart_loses_queue_and_history(tmp_path: Path) -> None:
    cap = capture("restart")
    slow = workflow("slow_chain_6x_blur_1024")
    first = StandinProcess(tmp_path / "first", node_seconds=0.3)
    second: StandinProcess | None = None
    try:
        first.start()
        port = first.port
        with WsCollector(first.ws_url, "probe-restart") as ws:
            ws.recv(5)
            post_prompt(first.url, slow, "probe-restart", prompt_id="restart-running")
            pending = json.loads(json.dumps(slow))
            pending["99"]["inputs"]["filename_prefix"] = "probe_pending"
            post_prompt(first.url, pending, "probe-restart", prompt_id="restart-pending")
            wait_running(first.url, "restart-running")
            queue = requests.get(f"{first.url}/queue", timeout=10).json()
            summary = {k: [item[1] for item in v] for k, v in queue.items()}
            assert summary == cap["queue_before_kill"]
            ws.read_until(lambda f: frame_type(f) == "executing" and f["json"]["data"]["node"] == "10")
            first.kill()
            # Killed: the socket drops with no close frame.
            with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError)):
                ws.read_until(lambda f: False, timeout=5)
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{first.url}/system_stats", timeout=2)

        second = StandinProcess(tmp_path / "second", port=port, node_seconds=0.01)
        second.start()
        assert second.port == port
        assert history(second.url, "restart-running") == cap["history_running_job"]
        assert requests.get(f"{second.url}/history", timeout=10).json() == cap["history_after_restart"]
        assert requests.get(f"{second.url}/queue", timeout=10).json() == cap["queue_after_restart"]
        assert requests.get(f"{second.url}/prompt", timeout=10).json() == cap["prompt_after_restart"]
        again = post_prompt(second.url, workflow("invert"))
        assert_same_shape(again, cap["first_post_after_restart"])
        assert again["number"] == cap["first_post_after_restart"]["number"] == 0
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_sigterm_exits_promptly_with_status_zero(slow_standin: StandinProcess) -> None:
    with WsCollector(slow_standin.ws_url, "probe-term") as ws:
        ws.recv(5)
        post = post_prompt(slow_standin.url, workflow("slow_chain_6x_blur_1024"), "probe-term")
        wait_running(slow_standin.url, post["prompt_id"])
        started = time.monotonic()
        assert slow_standin.process is not None
        slow_standin.process.send_signal(signal.SIGTERM)
        assert slow_standin.process.wait(timeout=5) == 0
        assert time.monotonic() - started < 2.0
