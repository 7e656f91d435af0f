"""comfyq.node_limits against real ComfyUI: every validation error recorded from ComfyUI 0.3.64
(tests/fixtures/comfyui/captures/errors.json) is replayed through validate_graph with the real /object_info entries
(tests/fixtures/comfyui/object_info_core.json), and the verdict must be ComfyUI's, field by field."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from comfyq.node_limits import input_limits, short_messages, types_compatible, validate_graph
from comfyq.settings import PROJECT_ROOT
from comfyq.workflows import load_workflows

SHARED = Path(__file__).resolve().parent / "fixtures" / "comfyui"

# Validation errors the door cannot reproduce, with the reason. LoadImage checks that the file exists in
# ComfyUI's input folder (its own VALIDATE_INPUTS); the worker uploads input images just before it submits.
NOT_CHECKED_AT_THE_DOOR = {"loadimage_missing_file": "custom_validation_failed"}
# Refused before any graph validation (no prompt key, not JSON, prompt not an object): the API's request
# schema and graph shape checks cover those.
NOT_GRAPH_VALIDATION = {"no_prompt_key", "malformed_json", "prompt_is_list"}


@cache
def captures() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SHARED / "captures" / "errors.json").read_text(encoding="utf-8"))
    return data


def core() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SHARED / "object_info_core.json").read_text(encoding="utf-8"))
    return data


def validation_cases() -> list[str]:
    """Captures where ComfyUI judged a graph and found it (partly) invalid: a 400 with an error, or a 200
    with node_errors (some outputs skipped)."""
    names = []
    for name, case in captures().items():
        body = case.get("body")
        prompt = (case.get("request") or {}).get("prompt") if isinstance(case.get("request"), dict) else None
        if not isinstance(prompt, dict) or not isinstance(body, dict):
            continue
        if body.get("error") or body.get("node_errors"):
            names.append(name)
    return names


def test_the_replayed_captures_cover_every_kind_of_refusal() -> None:
    replayed = set(validation_cases()) - set(NOT_CHECKED_AT_THE_DOOR)
    assert set(captures()) == replayed | set(NOT_CHECKED_AT_THE_DOOR) | NOT_GRAPH_VALIDATION | {"runtime_error"}
    kinds = set()
    for name in replayed:
        body = captures()[name]["body"]
        kinds.add(body["error"]["type"] if body.get("error") else "partial")
        kinds |= {e["type"] for entry in body["node_errors"].values() for e in entry["errors"]}
    assert kinds >= {"invalid_prompt", "prompt_no_outputs", "prompt_outputs_failed_validation", "partial",
                     "required_input_missing", "value_smaller_than_min", "value_bigger_than_max",
                     "invalid_input_type", "value_not_in_list", "return_type_mismatch",
                     "exception_during_inner_validation"}


def assert_same_reason(got: dict[str, Any], expected: dict[str, Any]) -> None:
    assert got["type"] == expected["type"]
    assert got["message"] == expected["message"]
    assert got["details"] == expected["details"]
    assert set(got["extra_info"]) == set(expected["extra_info"])
    for key, value in expected["extra_info"].items():
        if key != "traceback":  # ComfyUI's own source lines; ours is an empty list
            assert got["extra_info"][key] == value, key


@pytest.mark.parametrize("name", [n for n in validation_cases() if n not in NOT_CHECKED_AT_THE_DOOR])
def test_validation_errors_match_comfyui(name: str) -> None:
    case = captures()[name]
    graph = copy.deepcopy(case["request"]["prompt"])
    error, node_errors = validate_graph(graph, core())
    assert graph == case["request"]["prompt"]  # the caller's graph is not touched

    expected_error = case["body"].get("error")
    if expected_error is None:
        assert case["status"] == 200 and error is None  # partly valid: ComfyUI runs the good outputs
    else:
        assert error is not None
        assert_same_reason(error, expected_error)
        assert error["extra_info"] == expected_error["extra_info"]

    expected_nodes = case["body"]["node_errors"]
    assert set(node_errors) == set(expected_nodes)
    for node_id, expected in expected_nodes.items():
        got = node_errors[node_id]
        assert got["class_type"] == expected["class_type"]
        assert got["dependent_outputs"] == expected["dependent_outputs"]
        assert [e["type"] for e in got["errors"]] == [e["type"] for e in expected["errors"]]
        for got_reason, expected_reason in zip(got["errors"], expected["errors"], strict=True):
            assert_same_reason(got_reason, expected_reason)


@pytest.mark.parametrize("name", sorted(NOT_CHECKED_AT_THE_DOOR))
def test_checks_only_comfyui_can_make_are_left_to_it(name: str) -> None:
    case = captures()[name]
    [entry] = case["body"]["node_errors"].values()
    assert [e["type"] for e in entry["errors"]] == [NOT_CHECKED_AT_THE_DOOR[name]]
    assert validate_graph(case["request"]["prompt"], core()) == (None, {})


@pytest.mark.parametrize("path", sorted((SHARED / "workflows").glob("*.json")), ids=lambda p: p.stem)
def test_graphs_that_ran_on_comfyui_pass(path: Path) -> None:
    assert validate_graph(json.loads(path.read_text(encoding="utf-8")), core()) == (None, {})


def test_a_graph_that_passed_validation_and_failed_at_run_time_passes() -> None:
    assert validate_graph(captures()["runtime_error"]["request"]["prompt"], core()) == (None, {})


def txt2img(**params: Any) -> dict[str, Any]:
    workflow = load_workflows(PROJECT_ROOT / "workflows")["txt2img"]
    return workflow.render(workflow.resolve_params({"prompt": "a red fox", "seed": 1, **params}))


def test_txt2img_is_valid_but_for_the_checkpoint_that_was_not_installed() -> None:
    # The real catalogue was recorded with no weights installed: its checkpoint list is empty, and that is
    # the only thing ComfyUI would object to. A fully valid txt2img is in test_object_info_publish.py.
    error, node_errors = validate_graph(txt2img(), core())
    assert error is not None and error["type"] == "prompt_outputs_failed_validation" and error["details"] == ""
    assert list(node_errors) == ["4"]
    [reason] = node_errors["4"]["errors"]
    assert reason["type"] == "value_not_in_list"
    assert reason["details"] == "ckpt_name: 'v1-5-pruned-emaonly.safetensors' not in []"
    assert node_errors["4"]["dependent_outputs"] == ["9"]


def with_checkpoints(names: list[str]) -> dict[str, Any]:
    catalogue = core()
    catalogue["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] = names
    return catalogue


def test_long_choice_lists_are_not_echoed() -> None:
    names = [f"model_{i}.safetensors" for i in range(21)]
    _, node_errors = validate_graph(txt2img(checkpoint="other.safetensors"), with_checkpoints(names))
    [reason] = node_errors["4"]["errors"]
    assert reason["details"] == "ckpt_name: 'other.safetensors' not in (list of length 21)"
    assert reason["extra_info"]["input_config"] is None
    assert validate_graph(txt2img(checkpoint="model_20.safetensors"), with_checkpoints(names)) == (None, {})


def test_float_limits_and_v3_combo_options() -> None:
    graph = txt2img()
    graph["3"]["inputs"]["cfg"] = -1
    graph["10"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "x4.pth"}}
    graph["11"] = {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["10", 0], "image": ["8", 0]}}
    graph["12"] = {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "up"}}
    error, node_errors = validate_graph(graph, with_checkpoints(["v1-5-pruned-emaonly.safetensors"]))
    assert error is not None
    [cfg] = node_errors["3"]["errors"]
    assert cfg["message"] == "Value -1.0 smaller than min of 0.0" and cfg["details"] == "cfg"
    assert node_errors["3"]["dependent_outputs"] == ["9", "12"]
    [model] = node_errors["10"]["errors"]
    assert model["details"] == "model_name: 'x4.pth' not in []"
    assert model["extra_info"]["input_config"] == ["COMBO", {"multiselect": False, "options": []}]


def test_a_missing_output_slot_is_an_exception_like_in_comfyui() -> None:
    graph = json.loads((SHARED / "workflows" / "invert.json").read_text(encoding="utf-8"))
    inverts = [i for i, n in graph.items() if n["class_type"] == "ImageInvert"]
    saves = [i for i, n in graph.items() if n["class_type"] == "SaveImage"]
    graph[inverts[0]]["inputs"]["image"][1] = 3
    error, node_errors = validate_graph(graph, core())
    assert error is not None
    [reason] = node_errors[inverts[0]]["errors"]
    assert reason["type"] == "exception_during_inner_validation"
    assert reason["details"] == "tuple index out of range" and reason["extra_info"]["exception_type"] == "IndexError"

    graph[saves[0]]["inputs"]["images"] = [inverts[0], 1]  # on the output node itself: caught at the top
    error, node_errors = validate_graph(graph, core())
    assert error is not None and error["details"] == "Exception when validating node: tuple index out of range"
    assert node_errors[saves[0]]["errors"][0]["type"] == "exception_during_validation"


def custom_node_graph(width: int) -> dict[str, Any]:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": width, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "MyCustomSave", "inputs": {"images": ["1", 0], "quality": 90}}}


def test_unknown_classes_are_refused_only_by_a_complete_catalogue() -> None:
    error, _ = validate_graph(custom_node_graph(8), core())
    assert error == {"type": "invalid_prompt", "message": "Cannot execute because node MyCustomSave does not exist.",
                     "details": "Node ID '#2'", "extra_info": {}}
    assert validate_graph(custom_node_graph(8), core(), complete=False) == (None, {})
    # The known nodes upstream of an unknown one are still checked.
    error, node_errors = validate_graph(custom_node_graph(-5), core(), complete=False)
    assert error is not None and node_errors["1"]["errors"][0]["type"] == "value_smaller_than_min"
    assert node_errors["1"]["dependent_outputs"] == ["2"]
    # A graph of known classes only is judged in full either way.
    assert validate_graph({"1": custom_node_graph(8)["1"]}, core(), complete=False)[0]["type"] == "prompt_no_outputs"


def test_short_messages_name_the_node_and_the_problem() -> None:
    error, node_errors = validate_graph(captures()["value_below_min"]["request"]["prompt"], core())
    assert short_messages(node_errors, error) == {"1": "EmptyImage: width: Value -5 smaller than min of 1"}
    error, node_errors = validate_graph(captures()["unknown_class"]["request"]["prompt"], core())
    assert short_messages(node_errors, error) == {
        "graph": "Cannot execute because node NoSuchNode does not exist. (Node ID '#2')"}
    error, node_errors = validate_graph(captures()["link_to_missing_node"]["request"]["prompt"], core())
    assert short_messages(node_errors, error) == {
        "2": "ImageInvert: Exception when validating inner node: KeyError '42'"}


def test_types_compatible_follows_comfyui() -> None:
    assert types_compatible("IMAGE", "IMAGE") and types_compatible("*", "MASK") and types_compatible("LATENT", "*")
    assert types_compatible("IMAGE,MASK", "MASK") and not types_compatible("MASK", "IMAGE")
    assert not types_compatible(["a", "b"], "STRING")


def test_input_limits_describe_what_comfyui_accepts() -> None:
    assert input_limits(core(), "EmptyLatentImage", "width") == {
        "class_type": "EmptyLatentImage", "input": "width", "type": "INT", "min": 16, "max": 16384, "step": 8}
    assert input_limits(core(), "ImageScale", "upscale_method")["choices"] == [  # type: ignore[index]
        "nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
    assert "choices" not in input_limits(core(), "LoadImage", "image")  # type: ignore[operator]
    assert input_limits(core(), "EmptyLatentImage", "nope") is None
    assert input_limits(core(), "NoSuchNode", "width") is None


def chain(length: int) -> dict[str, Any]:
    graph: dict[str, Any] = {"0": {"class_type": "EmptyImage",
                                   "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}}
    for i in range(1, length):
        graph[str(i)] = {"class_type": "ImageInvert", "inputs": {"image": [str(i - 1), 0]}}
    graph["out"] = {"class_type": "SaveImage", "inputs": {"images": [str(length - 1), 0], "filename_prefix": "x"}}
    return graph


def test_a_chain_too_deep_to_walk_raises_instead_of_being_refused() -> None:
    assert validate_graph(chain(200), core()) == (None, {})
    with pytest.raises(RecursionError):
        validate_graph(chain(500), core())
