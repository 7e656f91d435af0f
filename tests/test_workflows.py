"""Templates and manifests: params map to node inputs, and a broken manifest is refused when loaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from comfyq.errors import ConfigurationError
from comfyq.settings import PROJECT_ROOT
from comfyq.workflows import ParamError, load_workflows

WORKFLOWS = PROJECT_ROOT / "workflows"


def test_txt2img_renders_every_param_into_its_node() -> None:
    workflow = load_workflows(WORKFLOWS)["txt2img"]
    params = workflow.resolve_params({"prompt": "a fox", "negative_prompt": "blur", "seed": 9, "width": 640,
                                      "height": 384, "steps": 30, "cfg": 5.5, "checkpoint": "x.safetensors"})
    graph = workflow.render(params)
    assert graph["6"]["inputs"]["text"] == "a fox" and graph["7"]["inputs"]["text"] == "blur"
    assert graph["3"]["inputs"] | {"seed": 9, "steps": 30, "cfg": 5.5} == graph["3"]["inputs"]
    assert (graph["5"]["inputs"]["width"], graph["5"]["inputs"]["height"]) == (640, 384)
    assert graph["4"]["inputs"]["ckpt_name"] == "x.safetensors"
    assert workflow.graph["6"]["inputs"]["text"] == ""  # the template itself is untouched


def test_describe_lists_types_defaults_and_ranges() -> None:
    described = load_workflows(WORKFLOWS)["txt2img"].describe()["params"]
    assert described["steps"] == {"type": "integer", "required": False, "default": 20, "min": 1, "max": 150}
    assert described["seed"]["default"] == "random" and described["prompt"]["required"] is True


@pytest.mark.parametrize("params, problem", [
    ({}, {"prompt": "required"}),
    ({"prompt": 5}, {"prompt": "expected string, got int"}),
    ({"prompt": "x", "steps": True}, {"steps": "expected integer, got boolean"}),
    ({"prompt": "x", "cfg": 31}, {"cfg": "31 is bigger than the maximum 30.0"}),
    ({"prompt": "x", "seed": -1}, {"seed": "-1 is smaller than the minimum 0"}),
])
def test_bad_params_are_reported_by_name(params: dict[str, Any], problem: dict[str, str]) -> None:
    with pytest.raises(ParamError) as info:
        load_workflows(WORKFLOWS)["txt2img"].resolve_params(params)
    assert info.value.details == problem


def _broken_copy(tmp_path: Path, edit: Any) -> Path:
    shutil.copytree(WORKFLOWS / "txt2img", tmp_path / "txt2img")
    manifest_path = tmp_path / "txt2img" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    edit(manifest)
    manifest_path.write_text(json.dumps(manifest))
    return tmp_path


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["params"]["steps"]["targets"].__setitem__(0, {"node": "99", "input": "steps"}), "missing node"),
    (lambda m: m["params"]["steps"]["targets"].__setitem__(0, {"node": "3", "input": "nope"}), "does not have"),
    (lambda m: m["params"]["steps"]["targets"].__setitem__(0, {"node": "3", "input": "model"}), "overwrite a link"),
    (lambda m: m["params"]["steps"].__setitem__("default", 500), "default of 'steps' is invalid"),
    (lambda m: m["params"]["steps"].__setitem__("type", "tensor"), "unknown type"),
    (lambda m: m["params"]["steps"].__setitem__("targets", []), "has no targets"),
])
def test_broken_manifests_are_refused_at_load(tmp_path: Path, edit: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_workflows(_broken_copy(tmp_path, edit))
