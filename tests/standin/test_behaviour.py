"""Stand-in behaviour the captures do not cover: the txt2img graph, every recorded workflow, injected
failures (CLI and /standin/control), file naming, the CLI entry points and signal handling."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket
from PIL import Image

from comfyq.standin.state import MAX_HISTORY, PromptState
from tests.standin.helpers import (
    WORKFLOWS,
    WsCollector,
    frame_type,
    post_prompt,
    types,
    wait_history,
    workflow,
)
from tests.support.standin import StandinProcess


def txt2img(seed: int = 1, text: str = "a lighthouse", steps: int = 5, width: int = 96, height: int = 64,
            prefix: str = "t2i") -> dict[str, Any]:  # fmt: skip
    return {
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "cfg": 7.0, "denoise": 1.0, "latent_image": ["5", 0], "model": ["4", 0], "negative": ["7", 0],
                "positive": ["6", 0], "sampler_name": "euler", "scheduler": "normal", "seed": seed, "steps": steps,
            },
        },
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"batch_size": 1, "height": height, "width": width}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": text}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "blurry"}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["8", 0]}},
    }


def saved_file(standin: StandinProcess, entry: dict[str, Any], node: str) -> Path:
    image = entry["outputs"][node]["images"][0]
    return standin.output_dir / image["subfolder"] / image["filename"]


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        size: tuple[int, int] = image.size
    return size


def control(standin: StandinProcess, **changes: Any) -> dict[str, Any]:
    response = requests.post(f"{standin.url}/standin/control", json=changes, timeout=10)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_txt2img_runs_with_sampler_progress(standin: StandinProcess) -> None:
    with WsCollector(standin.ws_url, "t2i") as ws:
        ws.recv(5)
        post = post_prompt(standin.url, txt2img(seed=1), "t2i")
        ws.until_done(post["prompt_id"])
        frames = ws.run_of(post["prompt_id"])
    progress = [f["json"]["data"] for f in frames if frame_type(f) == "progress"]
    assert [(p["value"], p["max"], p["node"], p["prompt_id"]) for p in progress] == [
        (step, 5, "3", post["prompt_id"]) for step in range(5)
    ]
    executing = [f["json"]["data"]["node"] for f in frames if frame_type(f) == "executing"]
    assert executing[-1] is None and sorted(executing[:-1]) == ["3", "4", "5", "6", "7", "8", "9"]
    assert executing.index("3") > max(executing.index(n) for n in ("4", "5", "6", "7"))
    assert types(frames)[-3:] == ["execution_success", "status", "executing"]
    entry = wait_history(standin.url, post["prompt_id"])
    first = saved_file(standin, entry, "9")
    assert entry["outputs"]["9"]["images"][0]["filename"] == "t2i_00001_.png"
    assert png_size(first) == (96, 64)

    # Another seed: new pixels, counter continues. Another prompt text: new pixels again.
    second = saved_file(standin, wait_history(standin.url, post_prompt(standin.url, txt2img(seed=2))["prompt_id"]), "9")
    third = saved_file(standin, wait_history(standin.url, post_prompt(
        standin.url, txt2img(seed=2, text="a fox"))["prompt_id"]), "9")  # fmt: skip
    assert (second.name, third.name) == ("t2i_00002_.png", "t2i_00003_.png")
    pixels = [Image.open(p).convert("RGB").tobytes() for p in (first, second, third)]
    assert len(set(pixels)) == 3


def test_partial_cache_when_only_the_prefix_changes(standin: StandinProcess) -> None:
    wait_history(standin.url, post_prompt(standin.url, txt2img(seed=7))["prompt_id"])
    with WsCollector(standin.ws_url, "cache") as ws:
        ws.recv(5)
        post = post_prompt(standin.url, txt2img(seed=7, prefix="jobs/42/out"), "cache")
        ws.until_done(post["prompt_id"])
        frames = ws.run_of(post["prompt_id"])
    cached = next(f["json"]["data"]["nodes"] for f in frames if frame_type(f) == "execution_cached")
    assert sorted(cached) == ["3", "4", "5", "6", "7", "8"]
    executing = [f["json"]["data"]["node"] for f in frames if frame_type(f) == "executing"]
    assert executing == ["9", None]
    entry = wait_history(standin.url, post["prompt_id"])
    assert entry["outputs"]["9"]["images"] == [{"filename": "out_00001_.png", "subfolder": "jobs/42", "type": "output"}]
    assert (standin.output_dir / "jobs" / "42" / "out_00001_.png").is_file()


@pytest.mark.parametrize("name", sorted(p.stem for p in WORKFLOWS.glob("*.json")))
def test_every_recorded_workflow_runs(standin: StandinProcess, name: str) -> None:
    graph = workflow(name)
    if name == "loadimage_invert":
        buffer = io.BytesIO()
        Image.new("RGB", (40, 30), (10, 20, 30)).save(buffer, format="PNG")
        upload = requests.post(
            f"{standin.url}/upload/image", files={"image": ("probe_upload.png", buffer.getvalue())}, timeout=10
        )
        assert upload.status_code == 200
    post = post_prompt(standin.url, graph)
    assert post["node_errors"] == {}
    entry = wait_history(standin.url, post["prompt_id"])
    if name.startswith("runtime_error"):
        assert entry["status"]["status_str"] == "error"
        assert entry["status"]["messages"][-1][0] == "execution_error"
        return
    assert entry["status"] == {**entry["status"], "status_str": "success", "completed": True}
    for node_id in entry["outputs"]:
        path = saved_file(standin, entry, node_id)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if name == "save_512":
            assert png_size(path) == (512, 512)
        if name == "loadimage_invert":
            assert png_size(path) == (40, 30)
            assert Image.open(path).convert("RGB").getpixel((0, 0)) == (245, 235, 225)
    if name == "ws_progress_SaveImageWebsocket":
        assert entry["outputs"] == {}


def test_pixels_follow_emptyimage_color_and_invert(standin: StandinProcess) -> None:
    graph = workflow("invert")
    graph["1"]["inputs"].update(width=8, height=4, color=0x102030)
    entry = wait_history(standin.url, post_prompt(standin.url, graph)["prompt_id"])
    with Image.open(saved_file(standin, entry, "3")) as image:
        assert image.size == (8, 4)
        assert image.convert("RGB").getpixel((3, 2)) == (255 - 0x10, 255 - 0x20, 255 - 0x30)


def test_control_route_and_injected_failures(standin: StandinProcess) -> None:
    url = standin.url
    assert requests.get(f"{url}/standin/control", timeout=10).json() == {
        "fail": "none", "node_seconds": 0.01, "sampler_step_seconds": 0.002, "ws_silent": False,
    }  # fmt: skip
    assert requests.post(f"{url}/standin/control", json={"fail": "bogus"}, timeout=10).status_code == 400
    assert requests.post(f"{url}/standin/control", json={"node_seconds": -1}, timeout=10).status_code == 400

    assert control(standin, fail="execution_error")["fail"] == "execution_error"
    entry = wait_history(url, post_prompt(url, txt2img())["prompt_id"])
    error = entry["status"]["messages"][-1]
    assert entry["status"]["status_str"] == "error" and error[0] == "execution_error"
    assert (error[1]["node_id"], error[1]["node_type"], error[1]["exception_type"]) == ("3", "KSampler", "RuntimeError")
    assert set(error[1]) >= {"traceback", "current_inputs", "current_outputs", "executed", "exception_message"}
    # Every prompt fails, even one identical to an earlier success.
    assert wait_history(url, post_prompt(url, txt2img())["prompt_id"])["status"]["status_str"] == "error"

    control(standin, fail="oom")
    with WsCollector(standin.ws_url, "oom") as ws:
        ws.recv(5)
        post = post_prompt(url, workflow("invert"), "oom")
        ws.until_done(post["prompt_id"])
        oom = next(f["json"]["data"] for f in ws.frames if frame_type(f) == "execution_error")
    assert oom["exception_type"] == "torch.OutOfMemoryError"
    assert oom["exception_message"].startswith("CUDA out of memory. Tried to allocate")
    assert oom["node_type"] == "ImageInvert"

    control(standin, fail="http_500")
    response = requests.post(f"{url}/prompt", json={"prompt": workflow("invert")}, timeout=10)
    assert (response.status_code, response.headers["Content-Type"]) == (500, "text/plain; charset=utf-8")
    assert response.text == "500 Internal Server Error\n\nServer got itself in trouble"

    control(standin, fail="none", node_seconds=0.0)
    assert wait_history(url, post_prompt(url, workflow("blur"))["prompt_id"])["status"]["status_str"] == "success"


def test_drop_closes_the_socket_but_the_prompt_finishes(standin: StandinProcess) -> None:
    control(standin, fail="drop")
    with WsCollector(standin.ws_url, "dropped") as ws:
        ws.recv(5)
        post = post_prompt(standin.url, workflow("invert"), "dropped")
        # No close frame: the client just loses the connection, as when ComfyUI dies.
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            ws.read_until(lambda f: False, timeout=5)
        assert types(ws.frames)[-1] == "execution_start"
    entry = wait_history(standin.url, post["prompt_id"])
    assert entry["status"]["status_str"] == "success"
    assert saved_file(standin, entry, "3").is_file()


def test_interrupt_between_sampler_steps(tmp_path: Path) -> None:
    with StandinProcess(tmp_path, node_seconds=0.01, sampler_step_seconds=0.05) as standin, \
            WsCollector(standin.ws_url, "steps") as ws:  # fmt: skip
        ws.recv(5)
        post = post_prompt(standin.url, txt2img(steps=100), "steps")
        ws.read_until(lambda f: frame_type(f) == "progress" and f["json"]["data"]["value"] == 2)
        requests.post(f"{standin.url}/interrupt", json={"prompt_id": post["prompt_id"]}, timeout=10)
        ws.until_done(post["prompt_id"], timeout=5)
        interrupted = next(f["json"]["data"] for f in ws.frames if frame_type(f) == "execution_interrupted")
    assert (interrupted["node_id"], interrupted["node_type"]) == ("3", "KSampler")
    steps = [f["json"]["data"]["value"] for f in ws.frames if frame_type(f) == "progress"]
    assert 3 <= len(steps) < 10


def test_cli_options_checkpoints_and_fail_mode(tmp_path: Path) -> None:
    with StandinProcess(tmp_path, checkpoints=["a.safetensors", "b.safetensors"], fail="oom") as standin:
        names = ["a.safetensors", "b.safetensors"]
        info = requests.get(f"{standin.url}/object_info/CheckpointLoaderSimple", timeout=10).json()
        assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == names
        assert requests.get(f"{standin.url}/models/checkpoints", timeout=10).json() == names
        rejected = requests.post(f"{standin.url}/prompt", json={"prompt": txt2img()}, timeout=10)
        assert rejected.status_code == 400
        error = rejected.json()["node_errors"]["4"]["errors"][0]
        assert error["type"] == "value_not_in_list"
        assert error["details"] == f"ckpt_name: 'v1-5-pruned-emaonly.safetensors' not in {names}"
        graph = txt2img()
        graph["4"]["inputs"]["ckpt_name"] = "b.safetensors"
        entry = wait_history(standin.url, post_prompt(standin.url, graph)["prompt_id"])
        assert entry["status"]["messages"][-1][1]["exception_type"] == "torch.OutOfMemoryError"


def test_output_counter_continues_across_restarts(tmp_path: Path) -> None:
    options: dict[str, Any] = {"node_seconds": 0.0, "output_dir": tmp_path / "out", "input_dir": tmp_path / "in"}
    names = []
    for color in (1, 2):
        with StandinProcess(tmp_path, **options) as standin:
            graph = workflow("invert")
            graph["1"]["inputs"]["color"] = color
            entry = wait_history(standin.url, post_prompt(standin.url, graph)["prompt_id"])
            names.append(entry["outputs"]["3"]["images"][0]["filename"])
    assert names == ["probe_invert_00001_.png", "probe_invert_00002_.png"]


@pytest.mark.parametrize("entry_point", ["module", "console_script"])
def test_entry_points_announce_and_stop_on_sigint(tmp_path: Path, entry_point: str) -> None:
    if entry_point == "module":
        command = [sys.executable, "-m", "comfyq.standin"]
    else:
        command = [str(Path(sys.executable).with_name("comfyui-standin"))]
    process = subprocess.Popen(
        [*command, "--port", "0", "--output-dir", str(tmp_path / "o"), "--input-dir", str(tmp_path / "i")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("comfyui-standin listening on http://127.0.0.1:")
        url = line.split()[-1]
        assert requests.get(f"{url}/system_stats", timeout=10).status_code == 200
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=5) == 0
        assert time.monotonic() - started < 2.0
        assert process.stdout.read() == ""  # exactly one line on stdout
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_history_cap_and_heap_order_in_process() -> None:
    async def scenario() -> None:
        state = PromptState()
        for number in (5, -3, 2):
            state.put([number, f"p{number}", {}, {}, []])
        assert [(await state.get())[0] for _ in range(3)] == [-3, 2, 5]
        for index in range(MAX_HISTORY + 5):
            state.task_done([index, f"h{index}", {}, {}, []], {"n": index})
        assert len(state.history) == MAX_HISTORY
        assert next(iter(state.history)) == "h5"

    asyncio.run(scenario())


def test_malformed_graph_shapes_do_not_break_the_server(standin: StandinProcess) -> None:
    url = standin.url
    cases: list[tuple[Any, int]] = [
        ({"prompt": []}, 400),
        ({"prompt": {"1": 5}}, 500),
        ({"prompt": {"1": {"class_type": "SaveImage"}}}, 400),
        ({"prompt": {"1": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "x"}}}}, 400),
        ({"prompt": {"1": {"class_type": "SaveImage", "inputs": {"images": ["1", 7], "filename_prefix": "x"}}}}, 400),
    ]
    for body, status in cases:
        response = requests.post(f"{url}/prompt", json=body, timeout=10)
        assert response.status_code == status, (body, response.text)
    direct = requests.post(f"{url}/prompt", json=cases[3][0], timeout=10).json()
    assert direct["error"]["type"] == "prompt_outputs_failed_validation"
    assert direct["node_errors"]["1"]["errors"][0]["type"] == "exception_during_validation"
    assert json.loads(requests.get(f"{url}/queue", timeout=10).text) == {"queue_running": [], "queue_pending": []}
    assert wait_history(url, post_prompt(url, workflow("invert"))["prompt_id"])["status"]["status_str"] == "success"
