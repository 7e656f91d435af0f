"""Workers publish ComfyUI's /object_info to the database: a real stand-in, a real migrated database, and the
published catalogue judging graphs as the stand-in's own POST /prompt does."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from comfyq.db import Database
from comfyq.node_limits import validate_graph
from comfyq.settings import PROJECT_ROOT
from comfyq.worker.comfy_client import ComfyClient
from comfyq.worker.object_info_publisher import ObjectInfoPublisher, catalogue_problem, publish_object_info
from comfyq.workflows import load_workflows
from tests.conftest import SQL_DIR
from tests.e2e_support import free_port
from tests.support.standin import StandinProcess

pytestmark = pytest.mark.slow

STANDIN_CHECKPOINTS = ["v1-5-pruned-emaonly.safetensors", "sd_xl_base_1.0.safetensors"]


def txt2img(**params: Any) -> dict[str, Any]:
    workflow = load_workflows(PROJECT_ROOT / "workflows")["txt2img"]
    return workflow.render(workflow.resolve_params({"prompt": "a red fox", "seed": 7, "steps": 2, **params}))


def post_prompt(standin: StandinProcess, graph: dict[str, Any]) -> requests.Response:
    return requests.post(f"{standin.url}/prompt", json={"prompt": graph, "client_id": "t", "prompt_id":
                                                         uuid.uuid4().hex}, timeout=10)


def test_published_catalogue_judges_graphs_like_comfyui(db: Database, tmp_path: Path) -> None:
    with StandinProcess(tmp_path) as standin:
        comfy = ComfyClient(standin.url, client_id="publisher-test")
        assert db.fetch_one("object_info_latest") is None
        assert publish_object_info(db, comfy, standin.url, "w-1") is True

        row = db.fetch_one("object_info_latest")
        assert row is not None
        served = requests.get(f"{standin.url}/object_info", timeout=10).json()
        assert row["object_info"] == served
        assert row["comfyui_url"] == standin.url and row["worker_id"] == "w-1"
        assert row["node_count"] == len(served) and len(row["content_hash"]) == 64

        # An unknown checkpoint: refused with the stand-in's list, exactly as the stand-in's /prompt refuses it.
        graph = txt2img(checkpoint="no_such_model.safetensors")
        error, node_errors = validate_graph(graph, row["object_info"])
        assert error is not None and error["type"] == "prompt_outputs_failed_validation"
        [reason] = node_errors["4"]["errors"]
        assert reason["type"] == "value_not_in_list"
        assert reason["details"] == f"ckpt_name: 'no_such_model.safetensors' not in {STANDIN_CHECKPOINTS}"
        assert reason["extra_info"]["input_config"][0] == STANDIN_CHECKPOINTS
        answer = post_prompt(standin, graph)
        assert answer.status_code == 400
        assert answer.json() == {"error": error, "node_errors": node_errors}

        # A valid txt2img passes, and the stand-in runs it.
        assert validate_graph(txt2img(), row["object_info"]) == (None, {})
        accepted = post_prompt(standin, txt2img())
        assert accepted.status_code == 200 and accepted.json()["node_errors"] == {}


def test_republishing_keeps_one_row_per_instance_and_moves_the_time(db: Database, tmp_path: Path) -> None:
    with StandinProcess(tmp_path) as standin:
        comfy = ComfyClient(standin.url, client_id="publisher-test")
        assert publish_object_info(db, comfy, standin.url, "w-1")
        first = db.fetch_one("object_info_latest_version")
        assert publish_object_info(db, comfy, standin.url, "w-2")
        second = db.fetch_one("object_info_latest")
        assert first is not None and second is not None
        assert second["content_hash"] == first["content_hash"] and second["fetched_at"] > first["fetched_at"]
        assert second["worker_id"] == "w-2"
        # Another instance publishing later becomes the latest.
        assert publish_object_info(db, comfy, "http://comfy-b:8188", "w-3")
        latest = db.fetch_one("object_info_latest_version")
        assert latest is not None and latest["comfyui_url"] == "http://comfy-b:8188"


def test_failures_are_logged_never_raised(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    down = ComfyClient(f"http://127.0.0.1:{free_port()}", client_id="t", connect_timeout=1)
    assert publish_object_info(db, down, down.base_url, "w-1") is False
    assert db.fetch_one("object_info_latest") is None
    assert "could not publish the object_info" in caplog.text

    no_db = Database("postgresql://nobody@127.0.0.1:1/none", SQL_DIR, connect_timeout=1)
    try:
        assert publish_object_info(no_db, down, down.base_url, "w-1") is False
    finally:
        no_db.close()


def test_publisher_waits_for_a_comfyui_that_starts_late(db: Database, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    publisher = ObjectInfoPublisher(db, ComfyClient(url, client_id="t", connect_timeout=1), url, "w-1",
                                    retry_seconds=0.1, retry_max_seconds=0.2, refresh_seconds=60).start()
    try:
        time.sleep(0.5)
        assert publisher.published == 0 and db.fetch_one("object_info_latest") is None
        with StandinProcess(tmp_path, port=port):
            deadline = time.monotonic() + 20
            while publisher.published == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert publisher.published == 1
        row = db.fetch_one("object_info_latest_version")
        assert row is not None and row["comfyui_url"] == url
    finally:
        publisher.stop()
    assert not publisher._thread.is_alive()


def test_bodies_that_are_not_a_catalogue_are_not_published() -> None:
    assert catalogue_problem({}) == "it lists no node classes"
    assert catalogue_problem({"EmptyImage": {"input": {}}, "x": 3}) == "1 entries are not node descriptions (e.g. 'x')"
    assert catalogue_problem({"EmptyImage": {"input": {}, "output": ["IMAGE"]}}) is None
