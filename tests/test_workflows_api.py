"""GET /workflows and GET /workflows/<name>, and the submission-time node check (node_limit_problems) against a
catalogue published in a real database."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from comfyq.api.app import create_app
from comfyq.api.node_check import catalogue_cache, node_limit_problems
from comfyq.api.workflows_api import bp as workflows_bp
from comfyq.db import Database
from comfyq.settings import PROJECT_ROOT, Settings
from comfyq.workflows import load_workflows

TOKEN = "test-token-workflows-0123456789abcdefghijkl"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SHARED = Path(__file__).resolve().parent / "fixtures" / "comfyui"
CHECKPOINTS = ["v1-5-pruned-emaonly.safetensors", "sd_xl_base_1.0.safetensors"]


def make_app(db_url: str, **overrides: Any) -> Flask:
    app = create_app(Settings(database_url=db_url, api_token=TOKEN, **overrides))
    if "workflows" not in app.blueprints:  # until app.py registers it
        app.register_blueprint(workflows_bp)
    return app


@pytest.fixture
def app(db_url: str) -> Iterator[Flask]:
    app = make_app(db_url)
    yield app
    services = app.extensions.get("comfyq")
    if services is not None:
        services.db.close()


def catalogue(checkpoints: list[str] = CHECKPOINTS) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SHARED / "object_info_core.json").read_text(encoding="utf-8"))
    data["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] = checkpoints
    return data


def publish(db: Database, object_info: dict[str, Any], url: str = "http://comfy-a:8188") -> None:
    text = json.dumps(object_info, sort_keys=True)
    db.execute("object_info_upsert", {"comfyui_url": url, "object_info": text, "node_count": len(object_info),
                                      "content_hash": hashlib.sha256(text.encode()).hexdigest(), "worker_id": "w"})


def txt2img(**params: Any) -> dict[str, Any]:
    workflow = load_workflows(PROJECT_ROOT / "workflows")["txt2img"]
    return workflow.render(workflow.resolve_params({"prompt": "a red fox", "seed": 1, **params}))


def test_list_needs_a_token(app: Flask) -> None:
    client = app.test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = client.get("/workflows", headers=headers)
        assert response.status_code == 401 and response.get_json()["error"]["code"] == "unauthorized"
        assert client.get("/workflows/txt2img", headers=headers).status_code == 401


def test_list_describes_every_param(app: Flask) -> None:
    body = app.test_client().get("/workflows", headers=AUTH).get_json()
    [txt2img_description] = [w for w in body["workflows"] if w["name"] == "txt2img"]
    assert txt2img_description == load_workflows(PROJECT_ROOT / "workflows")["txt2img"].describe()
    params = txt2img_description["params"]
    assert params["steps"] == {"type": "integer", "required": False, "default": 20, "min": 1, "max": 150}
    assert params["prompt"]["required"] is True and params["prompt"]["max_length"] == 10000
    assert params["seed"]["default"] == "random" and params["seed"]["max"] == 18446744073709551615
    assert params["cfg"]["type"] == "number" and params["cfg"]["default"] == 7.0


def test_list_is_sorted_by_name(db_url: str, tmp_path: Path) -> None:
    for name in ("zeta", "alpha", "mid"):
        shutil.copytree(PROJECT_ROOT / "workflows" / "txt2img", tmp_path / name)
        manifest = tmp_path / name / "manifest.json"
        manifest.write_text(manifest.read_text().replace('"name": "txt2img"', f'"name": "{name}"'))
    app = make_app(db_url, workflows_dir=tmp_path)
    body = app.test_client().get("/workflows", headers=AUTH).get_json()
    assert [w["name"] for w in body["workflows"]] == ["alpha", "mid", "zeta"]
    app.extensions["comfyq"].db.close()


def test_one_workflow_and_an_unknown_one(app: Flask) -> None:
    client = app.test_client()
    body = client.get("/workflows/txt2img", headers=AUTH).get_json()
    assert body == load_workflows(PROJECT_ROOT / "workflows")["txt2img"].describe()  # no catalogue: no node_limits
    missing = client.get("/workflows/nope", headers=AUTH)
    assert missing.status_code == 404
    assert missing.get_json() == {"error": {"code": "not_found", "message": "no workflow named 'nope'",
                                            "details": {"known": ["txt2img"]}}}


def test_one_workflow_shows_comfyuis_limits_once_published(app: Flask, db: Database) -> None:
    publish(db, catalogue())
    params = app.test_client().get("/workflows/txt2img", headers=AUTH).get_json()["params"]
    assert params["checkpoint"]["node_limits"] == [{"node": "4", "class_type": "CheckpointLoaderSimple",
                                                    "input": "ckpt_name", "type": "COMBO", "choices": CHECKPOINTS}]
    assert params["width"]["node_limits"] == [{"node": "5", "class_type": "EmptyLatentImage", "input": "width",
                                               "type": "INT", "min": 16, "max": 16384, "step": 8}]
    assert params["width"]["min"] == 64  # the template's own range is still there
    assert params["prompt"]["node_limits"][0]["type"] == "STRING"


def test_node_limit_problems(app: Flask, db: Database) -> None:
    with app.app_context():
        assert node_limit_problems(txt2img(checkpoint="nope.safetensors")) is None  # nothing published yet
        publish(db, catalogue())
        catalogue_cache().ttl = 0
        assert node_limit_problems(txt2img()) is None
        problems = node_limit_problems(txt2img(checkpoint="nope.safetensors"))
        assert problems is not None
        assert problems["error"]["type"] == "prompt_outputs_failed_validation"
        assert problems["node_errors"]["4"]["errors"][0]["type"] == "value_not_in_list"
        assert problems["nodes"] == {"4": f"CheckpointLoaderSimple: Value not in list: ckpt_name: "
                                          f"'nope.safetensors' not in {CHECKPOINTS}"}
        graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
                 "2": {"class_type": "MyCustomSave", "inputs": {"images": ["1", 0]}}}
        assert node_limit_problems(graph)["error"]["type"] == "invalid_prompt"  # type: ignore[index]


def test_the_cache_follows_newer_catalogues(app: Flask, db: Database) -> None:
    publish(db, catalogue(["a.safetensors"]))
    with app.app_context():
        cache = catalogue_cache()
        assert node_limit_problems(txt2img(checkpoint="a.safetensors")) is None
        publish(db, catalogue(["b.safetensors"]), url="http://comfy-b:8188")
        # Within the cache time the old catalogue still answers ...
        assert node_limit_problems(txt2img(checkpoint="b.safetensors")) is not None
        cache.ttl = 0
        # ... then the newer one is loaded.
        assert node_limit_problems(txt2img(checkpoint="b.safetensors")) is None
        assert cache.get() is not None and cache.get().comfyui_url == "http://comfy-b:8188"  # type: ignore[union-attr]


def test_a_stale_catalogue_no_longer_refuses_unknown_classes(app: Flask, db: Database, sql: Any) -> None:
    publish(db, catalogue())
    sql.execute("UPDATE comfyui_object_info SET fetched_at = now() - interval '3 days'")
    graph = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
             "2": {"class_type": "MyCustomSave", "inputs": {"images": ["1", 0]}}}
    with app.app_context():
        assert node_limit_problems(graph) is None
        graph["1"]["inputs"]["width"] = 0  # known classes are still checked
        problems = node_limit_problems(graph)
        assert problems is not None and problems["nodes"] == {"1": "EmptyImage: width: Value 0 smaller than min of 1"}


def test_a_graph_too_deep_to_check_is_let_through(app: Flask, db: Database) -> None:
    publish(db, catalogue())
    graph: dict[str, Any] = {"0": {"class_type": "EmptyImage",
                                   "inputs": {"width": 0, "height": 8, "batch_size": 1, "color": 0}}}
    for i in range(1, 500):
        graph[str(i)] = {"class_type": "ImageInvert", "inputs": {"image": [str(i - 1), 0]}}
    graph["out"] = {"class_type": "SaveImage", "inputs": {"images": ["499", 0], "filename_prefix": "x"}}
    with app.app_context():
        assert node_limit_problems(graph) is None


def test_a_database_outage_leaves_submissions_unchecked() -> None:
    app = make_app("postgresql://nobody@127.0.0.1:1/none", db_connect_timeout=1)
    with app.app_context():
        assert node_limit_problems(txt2img(checkpoint="nope.safetensors")) is None
