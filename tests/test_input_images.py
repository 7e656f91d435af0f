"""LoadImage URLs are fetched from a real HTTP server through the address guard, checked (size, type, magic
bytes), uploaded to a real stand-in process and replaced by the name it stored; each failure is classified."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from comfyq.errors import PermanentFailure, TransientFailure
from comfyq.netguard import AddressGuard
from comfyq.worker.comfy_client import ComfyClient
from comfyq.worker.input_images import (
    InputImageRejected,
    InputImageUnavailable,
    localize_images,
    looks_like,
    upload_name,
)
from tests.e2e_support import free_port
from tests.http_servers import BLUE, RED, image_bytes
from tests.support.standin import StandinProcess

MAX_BYTES = 100_000


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandinProcess]:
    with StandinProcess(tmp_path_factory.mktemp("standin")) as process:
        yield process


@pytest.fixture
def comfy(standin: StandinProcess) -> ComfyClient:
    return ComfyClient(standin.url, "test-client")


GUARD = AddressGuard("127.0.0.1")


def load_image(url: str, node: str = "1") -> dict[str, Any]:
    return {node: {"class_type": "LoadImage", "inputs": {"image": url}},
            "9": {"class_type": "SaveImage", "inputs": {"images": [node, 0], "filename_prefix": "t"}}}


def localize(graph: dict[str, Any], comfy: ComfyClient, guard: AddressGuard = GUARD, **kwargs: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"max_bytes": MAX_BYTES, "timeout": 5.0, **kwargs}
    return localize_images(graph, comfy, guard, **options)


def test_a_url_is_uploaded_and_replaced_by_the_stored_name(image_host: tuple[str, Counter[str]],
                                                           comfy: ComfyClient, standin: StandinProcess) -> None:
    base, _ = image_host
    graph = load_image(f"{base}/red/cat.png")
    graph["2"] = {"class_type": "LoadImage", "inputs": {"image": "already-there.png"}}
    localized = localize(graph, comfy)
    name = localized["1"]["inputs"]["image"]
    assert name == "cat.png"
    assert (Path(standin.input_dir) / name).read_bytes() == RED
    assert localized["2"] == graph["2"] and localized["9"] == graph["9"]
    assert graph["1"]["inputs"]["image"] == f"{base}/red/cat.png"  # the input graph is not modified


def test_a_clashing_name_uses_the_name_comfyui_chose(image_host: tuple[str, Counter[str]], comfy: ComfyClient,
                                                     standin: StandinProcess) -> None:
    base, _ = image_host
    first = localize(load_image(f"{base}/red/cat.png"), comfy)["1"]["inputs"]["image"]
    second = localize(load_image(f"{base}/blue/cat.png"), comfy)["1"]["inputs"]["image"]
    assert first == "cat.png" and second == "cat (1).png"
    assert (Path(standin.input_dir) / second).read_bytes() == BLUE
    assert (Path(standin.input_dir) / first).read_bytes() == RED


def test_one_url_in_two_nodes_is_fetched_once(image_host: tuple[str, Counter[str]], comfy: ComfyClient,
                                              standin: StandinProcess) -> None:
    base, hits = image_host
    before = hits["/photo.jpg"]
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": f"{base}/photo.jpg?size=8"}},
             "2": {"class_type": "LoadImage", "inputs": {"image": f"{base}/photo.jpg?size=8"}}}
    localized = localize(graph, comfy)
    assert localized["1"]["inputs"]["image"] == localized["2"]["inputs"]["image"] == "photo.jpg"
    assert hits["/photo.jpg"] == before + 1
    assert looks_like("image/jpeg", (Path(standin.input_dir) / "photo.jpg").read_bytes())


@pytest.mark.parametrize("path, reason", [
    ("/huge.png", "too_large"),
    ("/declared-huge.png", "too_large"),
    ("/note.txt", "content_type"),
    ("/fake.png", "not_an_image"),
    ("/missing.png", "http_status"),
    ("/to-metadata.png", "unsafe_url"),
])
def test_bad_images_are_permanent_failures(image_host: tuple[str, Counter[str]], comfy: ComfyClient,
                                           path: str, reason: str) -> None:
    base, _ = image_host
    started = time.monotonic()
    with pytest.raises(InputImageRejected) as info:
        localize(load_image(base + path), comfy)
    assert time.monotonic() - started < 3  # the 6.5 GB body is not read to its end
    failure = info.value
    assert isinstance(failure, PermanentFailure) and not failure.retryable
    assert failure.error_type == "input_image_rejected"
    assert failure.details["url"] == base + path and failure.details["reason"] == reason
    if path == "/missing.png":
        assert failure.details["status"] == 404


@pytest.mark.parametrize("path, reason, timeout", [
    ("/broken.png", "http_status", 5.0),
    ("/slow.png", "timeout", 0.5),
])
def test_unreachable_images_are_transient_failures(image_host: tuple[str, Counter[str]], comfy: ComfyClient,
                                                   path: str, reason: str, timeout: float) -> None:
    base, _ = image_host
    with pytest.raises(InputImageUnavailable) as info:
        localize(load_image(base + path), comfy, timeout=timeout)
    failure = info.value
    assert isinstance(failure, TransientFailure) and failure.retryable
    assert failure.to_record()["type"] == "input_image_unavailable"
    assert failure.details["reason"] == reason


def test_a_refused_connection_is_transient(comfy: ComfyClient) -> None:
    with pytest.raises(InputImageUnavailable, match="could not be fetched"):
        localize(load_image(f"http://127.0.0.1:{free_port()}/x.png"), comfy)


def test_loopback_without_the_allowlist_is_refused(image_host: tuple[str, Counter[str]],
                                                   comfy: ComfyClient) -> None:
    base, hits = image_host
    before = sum(hits.values())
    with pytest.raises(InputImageRejected) as info:
        localize(load_image(f"{base}/red/cat.png"), comfy, guard=AddressGuard(""))
    assert "refusing 127.0.0.1: loopback address" in info.value.message
    assert info.value.details["reason"] == "unsafe_url"
    assert info.value.to_record()["retryable"] is False
    assert sum(hits.values()) == before  # nothing was sent


def test_other_url_schemes_are_refused(comfy: ComfyClient) -> None:
    with pytest.raises(InputImageRejected, match="only http and https"):
        localize(load_image("file:///etc/passwd"), comfy)


def test_upload_names_are_safe_and_match_the_content() -> None:
    assert upload_name("https://x.test/a/My%20Cat!.jpeg?v=1", RED, "image/png") == "My_Cat.png"
    assert upload_name("https://x.test/a/..%2F..%2Fetc%2Fpasswd", RED, "image/gif") == "passwd.gif"
    assert upload_name("https://x.test/", RED, "image/webp").startswith("input-")
    assert upload_name("https://x.test/", RED, "image/webp").endswith(".webp")


@pytest.mark.parametrize("fmt, content_type", [("PNG", "image/png"), ("JPEG", "image/jpeg"),
                                               ("GIF", "image/gif"), ("WEBP", "image/webp")])
def test_magic_numbers(fmt: str, content_type: str) -> None:
    data = image_bytes((1, 2, 3), fmt)
    assert looks_like(content_type, data)
    others = {"image/png", "image/jpeg", "image/gif", "image/webp"} - {content_type}
    assert not any(looks_like(other, data) for other in others)
