"""Graph validation against ComfyUI's node catalogue (`GET /object_info`), reproducing what POST /prompt
answers: the same error types, messages, details and extra_info keys as recorded from ComfyUI 0.3.64 in
shared/comfyui/captures/errors.json. The API runs it before a job is queued, so a graph that ComfyUI would
refuse is refused at the door with the detail ComfyUI would have given, not after a worker claimed it.

Pure functions over plain JSON: no database, no HTTP. The catalogue is the JSON that /object_info serves
({class_type: {"input": {"required": {...}, "optional": {...}}, "input_order": ..., "output": [...],
"output_node": bool, ...}}).

Deliberately kept separate from the stand-in's validator (comfyq/standin/validation.py): the stand-in is the test
oracle that plays ComfyUI, so the code under test must not share its logic, or one bug would pass both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Reason = dict[str, Any]
Verdict = tuple[bool, list[Reason], Any]
NodeErrors = dict[str, Any]

# Combo inputs whose list is the content of ComfyUI's input folder (LoadImage's "image", LoadAudio's "audio",
# ...) carry one of these flags. ComfyUI checks them with the node's own VALIDATE_INPUTS (the file must exist),
# which the door cannot reproduce: the worker uploads input images just before it submits. "remote" combos
# are filled by the front end from elsewhere. None of them is checked here.
_DYNAMIC_COMBO_FLAGS = ("image_upload", "audio_upload", "video_upload", "upload", "remote")

# ComfyUI hides choice lists longer than this in value_not_in_list (they are usually model file names).
MAX_LISTED_CHOICES = 20

SHORT_MESSAGE_CHARS = 300


def validate_graph(graph: Mapping[str, Any], object_info: Mapping[str, Any], *,
                   complete: bool = True) -> tuple[dict[str, Any] | None, NodeErrors]:
    """ComfyUI's verdict on an API-format graph: `(error, node_errors)` exactly as POST /prompt would give.

    - `(None, {})`: ComfyUI would accept the graph.
    - `(error, node_errors)`: ComfyUI would answer 400 with this body. error["type"] is `invalid_prompt`
      (missing or unknown class_type; node_errors is then empty), `prompt_no_outputs`, or
      `prompt_outputs_failed_validation` with per-node reasons (`required_input_missing`,
      `value_smaller_than_min`, `value_bigger_than_max`, `invalid_input_type`, `value_not_in_list`,
      `return_type_mismatch`, `bad_linked_input`, `exception_during_inner_validation` for a link to a missing
      node or a bad output slot, `exception_during_validation`).
    - `(None, node_errors)`: some outputs are valid and some are not. ComfyUI answers 200 and silently skips
      the invalid outputs; the worker treats that as a failure, so the API should refuse it too.

    `complete` says whether the catalogue is known to list every node class that ComfyUI has. A catalogue a
    worker fetched from a running ComfyUI's /object_info is complete. The cache is only a hint, though: pass
    `complete=False` when it may be out of date (old, or maybe from an instance with other custom nodes). Then
    a class the catalogue does not know is treated as an opaque custom node, not refused: its own inputs are
    not checked, a link out of it is not type-checked, it counts as a possible output node, and the nodes
    upstream of it are still checked. Limits of known classes are checked either way.

    Differences from ComfyUI that do not change the verdict: nodes, inputs and outputs are visited in graph
    and declaration order (ComfyUI walks sets, so its order is arbitrary); exception tracebacks are empty
    lists (ComfyUI shows its own source lines); the input values of `graph` are not converted in place.
    Raises RecursionError for a chain of nodes deeper than Python's recursion limit allows here (about 300
    nodes in a row), which ComfyUI may well accept: callers should then let the graph through unchecked.
    Not reproduced, so never refused here: the node-specific checks ComfyUI runs through VALIDATE_INPUTS
    (which /object_info does not reveal), apart from skipping the upload/remote combos described above.
    """
    checker = _GraphChecker(graph, object_info, complete)
    outputs: list[Any] = []
    for node_id, node in graph.items():
        if not isinstance(node, Mapping) or "class_type" not in node:
            return _error("invalid_prompt", "Cannot execute because a node is missing the class_type property.",
                          f"Node ID '#{node_id}'"), {}
        class_type = node["class_type"]
        info = checker.info(class_type)
        if info is None:
            if complete or not isinstance(class_type, str):
                return _error("invalid_prompt", f"Cannot execute because node {class_type} does not exist.",
                              f"Node ID '#{node_id}'"), {}
            outputs.append(node_id)  # an unknown custom node may be an output node
        elif info.get("output_node") is True:
            outputs.append(node_id)
    if not outputs:
        return _error("prompt_no_outputs", "Prompt has no outputs"), {}

    good: list[Any] = []
    failed: list[tuple[Any, list[Reason]]] = []
    node_errors: NodeErrors = {}
    for output_id in outputs:
        try:
            valid, reasons, _ = checker.check(output_id)
        except RecursionError:
            raise  # Python's limit, not ComfyUI's: see the docstring
        except Exception as exc:  # ComfyUI reports any exception raised while it walks the graph
            valid = False
            reasons = [{
                "type": "exception_during_validation",
                "message": "Exception when validating node",
                "details": str(exc),
                "extra_info": {"exception_type": _type_name(exc), "traceback": []},
            }]
            checker.validated[output_id] = (False, reasons, output_id)
        if valid:
            good.append(output_id)
            continue
        failed.append((output_id, reasons))
        # As ComfyUI: every node found invalid so far with reasons of its own is reported, and this output is
        # added to its dependent_outputs (nodes that are only invalid because of an upstream node are not).
        for node_id, (node_valid, node_reasons, _) in checker.validated.items():
            if node_valid or not node_reasons:
                continue
            entry = node_errors.get(node_id)
            if entry is None:
                entry = {"errors": node_reasons, "dependent_outputs": [],
                         "class_type": graph[node_id]["class_type"]}
                node_errors[node_id] = entry
            entry["dependent_outputs"].append(output_id)

    if good:
        return None, node_errors
    # The summary lists only the output nodes' own reasons: empty when the fault lies upstream.
    details = "\n".join(f"{r['message']}: {r['details']}" for _, reasons in failed for r in reasons)
    return _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details), node_errors


def short_messages(node_errors: Mapping[str, Any], error: Mapping[str, Any] | None = None) -> dict[str, str]:
    """One line per invalid node for an API error's details, e.g.
    `{"5": "EmptyLatentImage: width: Value 8 smaller than min of 16"}`. A graph-level error (unknown or missing
    class_type, no output node) comes under the key "graph" when no node has errors of its own."""
    messages: dict[str, str] = {}
    for node_id, entry in node_errors.items():
        if not isinstance(entry, Mapping):
            continue
        parts = [_reason_text(reason) for reason in entry.get("errors") or () if isinstance(reason, Mapping)]
        messages[str(node_id)] = _clip(f"{entry.get('class_type')}: {'; '.join(parts)}")
    if not messages and error:
        details = error.get("details")
        text = f"{error.get('message')} ({details})" if details else str(error.get("message"))
        messages["graph"] = _clip(text)
    return messages


def input_limits(object_info: Mapping[str, Any], class_type: str, input_name: str) -> dict[str, Any] | None:
    """What ComfyUI accepts for one input, for describing a template param: `{"class_type", "input", "type",
    "min"?, "max"?, "step"?, "choices"?}`; None when the catalogue does not describe that input."""
    info = object_info.get(class_type)
    if not isinstance(info, Mapping):
        return None
    for name, _category, input_type, extra in _input_specs(info):
        if name != input_name:
            continue
        is_combo = isinstance(input_type, list) or input_type == "COMBO"
        limits: dict[str, Any] = {"class_type": class_type, "input": input_name,
                                  "type": "COMBO" if is_combo else input_type}
        for key in ("min", "max", "step"):
            if key in extra:
                limits[key] = extra[key]
        if is_combo and not _dynamic_combo(extra):
            limits["choices"] = list(_combo_options(input_type, extra))
        return limits
    return None


def types_compatible(received: Any, expected: Any) -> bool:
    """ComfyUI's validate_node_input: may an output of type `received` feed an input declared `expected`?
    Equal types, a `*` wildcard on either side, or overlapping comma-separated unions."""
    if received == expected:
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got = {part.strip() for part in received.split(",")}
    want = {part.strip() for part in expected.split(",")}
    if "*" in got or "*" in want:
        return True
    return not got.isdisjoint(want)


class _GraphChecker:
    """ComfyUI's validate_inputs: checks a node and, recursively, the nodes it links from, remembering each
    node's verdict. Lookups that fail (a link to a missing node, a bad output slot) raise, and the exception is
    attributed exactly where ComfyUI attributes it: to the linked node, by the node that links to it."""

    def __init__(self, graph: Mapping[str, Any], object_info: Mapping[str, Any], complete: bool) -> None:
        self.graph = graph
        self.object_info = object_info
        self.complete = complete
        self.validated: dict[Any, Verdict] = {}

    def info(self, class_type: Any) -> Mapping[str, Any] | None:
        if not isinstance(class_type, str):
            return None
        info = self.object_info.get(class_type)
        return info if isinstance(info, Mapping) else None

    def check(self, node_id: Any) -> Verdict:
        if node_id in self.validated:
            return self.validated[node_id]
        node = self.graph[node_id]
        inputs = node["inputs"]
        info = self.info(node["class_type"])
        if info is None:
            return self._check_opaque(node_id, inputs)
        errors: list[Reason] = []
        valid = True
        for name, category, input_type, extra in _input_specs(info):
            input_config = [input_type, extra]
            if name not in inputs:
                if category == "required":
                    errors.append({"type": "required_input_missing", "message": "Required input is missing",
                                   "details": f"{name}", "extra_info": {"input_name": name}})
                continue
            value = inputs[name]
            if isinstance(value, list):
                reason, upstream_ok = self._check_link(name, value, input_type, input_config)
                if reason is not None:
                    errors.append(reason)
                valid = valid and upstream_ok
                continue
            reason = _check_literal(name, value, input_type, extra, input_config)
            if reason is not None:
                errors.append(reason)
        verdict: Verdict = (not errors and valid, errors, node_id)
        self.validated[node_id] = verdict
        return verdict

    def _check_link(self, name: str, link: list[Any], input_type: Any,
                    input_config: list[Any]) -> tuple[Reason | None, bool]:
        """(this input's own error or None, whether the linked node is valid)."""
        if len(link) != 2:
            return {"type": "bad_linked_input",
                    "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                    "details": f"{name}",
                    "extra_info": {"input_name": name, "input_config": input_config, "received_value": link}}, True
        source_id = link[0]
        # Not guarded, as in ComfyUI: a missing node (KeyError) or slot (IndexError) propagates to whoever
        # validates this node, which reports it against this node.
        source_info = self.info(self.graph[source_id]["class_type"])
        if source_info is not None:
            received_type = tuple(source_info.get("output") or ())[link[1]]
            if not types_compatible(received_type, input_type):
                return {"type": "return_type_mismatch", "message": "Return type mismatch between linked nodes",
                        "details": f"{name}, received_type({received_type}) mismatch input_type({input_type})",
                        "extra_info": {"input_name": name, "input_config": input_config,
                                       "received_type": received_type, "linked_node": link}}, True
        return None, self._check_upstream(source_id, name, input_config, link)

    def _check_upstream(self, source_id: Any, name: str, input_config: list[Any] | None, link: list[Any]) -> bool:
        try:
            return self.check(source_id)[0]
        except RecursionError:
            raise
        except Exception as exc:  # reported against the linked node, as ComfyUI does
            message = str(exc)
            self.validated[source_id] = (False, [{
                "type": "exception_during_inner_validation",
                "message": "Exception when validating inner node",
                "details": message,
                "extra_info": {"input_name": name, "input_config": input_config, "exception_message": message,
                               "exception_type": _type_name(exc), "traceback": [], "linked_node": link},
            }], source_id)
            return False

    def _check_opaque(self, node_id: Any, inputs: Any) -> Verdict:
        """A class the (incomplete) catalogue does not know: nothing of its own is checked, but the known
        nodes it links from are, so their errors are still found."""
        valid = True
        for name, value in (inputs.items() if isinstance(inputs, Mapping) else ()):
            if not (isinstance(value, list) and len(value) == 2):
                continue
            try:
                linked = value[0] in self.graph
            except TypeError:  # unhashable: not a node id
                continue
            if linked:
                valid = self._check_upstream(value[0], name, None, value) and valid
        verdict: Verdict = (valid, [], node_id)
        self.validated[node_id] = verdict
        return verdict


def _check_literal(name: str, value: Any, input_type: Any, extra: Mapping[str, Any],
                   input_config: list[Any]) -> Reason | None:
    if isinstance(value, dict) and "__value__" in value:
        value = value["__value__"]
    try:
        converted = _convert(value, input_type)
    except Exception as exc:  # whatever int()/float() raise is the reason ComfyUI gives
        return {"type": "invalid_input_type",
                "message": f"Failed to convert an input value to a {input_type} value",
                "details": f"{name}, {value}, {exc}",
                "extra_info": {"input_name": name, "input_config": input_config, "received_value": value,
                               "exception_message": str(exc)}}
    if _dynamic_combo(extra):
        return None
    if "min" in extra and converted < extra["min"]:
        return {"type": "value_smaller_than_min",
                "message": f"Value {converted} smaller than min of {extra['min']}", "details": f"{name}",
                "extra_info": {"input_name": name, "input_config": input_config, "received_value": converted}}
    if "max" in extra and converted > extra["max"]:
        return {"type": "value_bigger_than_max",
                "message": f"Value {converted} bigger than max of {extra['max']}", "details": f"{name}",
                "extra_info": {"input_name": name, "input_config": input_config, "received_value": converted}}
    if isinstance(input_type, list) or input_type == "COMBO":
        options = _combo_options(input_type, extra)
        if converted not in options:
            shown_config: list[Any] | None = input_config
            if len(options) > MAX_LISTED_CHOICES:
                listing = f"(list of length {len(options)})"
                shown_config = None
            else:
                listing = str(options)
            return {"type": "value_not_in_list", "message": "Value not in list",
                    "details": f"{name}: '{converted}' not in {listing}",
                    "extra_info": {"input_name": name, "input_config": shown_config, "received_value": converted}}
    return None


def _convert(value: Any, input_type: Any) -> Any:
    if input_type == "INT":
        return int(value)
    if input_type == "FLOAT":
        return float(value)
    if input_type == "STRING":
        return str(value)
    if input_type == "BOOLEAN":
        return bool(value)
    return value


def _combo_options(input_type: Any, extra: Mapping[str, Any]) -> list[Any]:
    options = input_type if isinstance(input_type, list) else extra.get("options", [])
    return list(options) if isinstance(options, list | tuple) else []


def _dynamic_combo(extra: Mapping[str, Any]) -> bool:
    return any(extra.get(flag) for flag in _DYNAMIC_COMBO_FLAGS)


def _input_specs(info: Mapping[str, Any]) -> list[tuple[str, str, Any, dict[str, Any]]]:
    """(name, category, input type, extra options) of the required then optional inputs, in declared order.
    Hidden inputs are filled by ComfyUI and never validated; malformed specs are skipped."""
    declared_all = info.get("input")
    order = info.get("input_order")
    declared_all = declared_all if isinstance(declared_all, Mapping) else {}
    order = order if isinstance(order, Mapping) else {}
    specs: list[tuple[str, str, Any, dict[str, Any]]] = []
    for category in ("required", "optional"):
        declared = declared_all.get(category)
        if not isinstance(declared, Mapping):
            continue
        names = [name for name in order.get(category) or [] if name in declared]
        names += [name for name in declared if name not in names]
        for name in names:
            spec = declared[name]
            if not isinstance(spec, list | tuple) or not spec:
                continue
            extra = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            specs.append((name, category, spec[0], extra))
    return specs


def _error(kind: str, message: str, details: str = "") -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": {}}


def _type_name(exc: BaseException) -> str:
    """ComfyUI's full_type_name: builtins by bare name, others module-qualified."""
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _reason_text(reason: Mapping[str, Any]) -> str:
    message = str(reason.get("message", ""))
    details = reason.get("details")
    extra = reason.get("extra_info")
    input_name = extra.get("input_name") if isinstance(extra, Mapping) else None
    if reason.get("type") in ("exception_during_inner_validation", "exception_during_validation") and isinstance(
            extra, Mapping):
        return f"{message}: {extra.get('exception_type')} {details}"
    if input_name is not None and details == input_name:
        return f"{input_name}: {message}"
    return f"{message}: {details}" if details else message


def _clip(text: str) -> str:
    return text if len(text) <= SHORT_MESSAGE_CHARS else text[:SHORT_MESSAGE_CHARS - 3] + "..."
