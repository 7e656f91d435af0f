"""Synchronous graph validation against the node catalogue, reproducing the error bodies ComfyUI returns
from POST /prompt (types, messages, details and extra_info as recorded in captures/errors.json)."""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field
from typing import Any

from comfyq.standin import object_info
from comfyq.standin.config import Config
from comfyq.standin.paths import resolve_input_image

logger = logging.getLogger(__name__)

# Inputs that a node checks itself instead of through the generic type/range/choice checks.
CUSTOM_VALIDATED_INPUTS: dict[str, tuple[str, ...]] = {"LoadImage": ("image",)}

Reason = dict[str, Any]
Verdict = tuple[bool, list[Reason], str]


@dataclass
class ValidationResult:
    ok: bool
    error: dict[str, Any] | None
    good_outputs: list[str]
    node_errors: dict[str, Any] = field(default_factory=dict)


def _error(kind: str, message: str, details: str = "") -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": {}}


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def types_compatible(received: Any, expected: Any) -> bool:
    """Whether an output of type `received` may feed an input declared as `expected`: equal, a `*`
    wildcard, or overlapping comma-separated unions."""
    if received == expected:
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got = {part.strip() for part in received.split(",")}
    want = {part.strip() for part in expected.split(",")}
    if "*" in got or "*" in want:
        return True
    return not got.isdisjoint(want)


def validate_prompt(config: Config, prompt: dict[str, Any]) -> ValidationResult:
    """Check a whole graph. Converts literal input values in place (e.g. "512" -> 512 for INT), as
    the stored graph in /queue and /history shows converted values. Raises on shapes ComfyUI itself
    chokes on (a node that is not an object), which the route turns into a 500."""
    known = object_info.known_classes()
    outputs: list[str] = []
    for node_id, node in prompt.items():
        if "class_type" not in node:
            return ValidationResult(
                False,
                _error(
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    f"Node ID '#{node_id}'",
                ),
                [],
            )
        class_type = node["class_type"]
        if not isinstance(class_type, str) or class_type not in known:
            return ValidationResult(
                False,
                _error(
                    "invalid_prompt",
                    f"Cannot execute because node {class_type} does not exist.",
                    f"Node ID '#{node_id}'",
                ),
                [],
            )
        if object_info.is_output_node(class_type):
            outputs.append(node_id)
    if not outputs:
        return ValidationResult(False, _error("prompt_no_outputs", "Prompt has no outputs"), [])

    checker = _GraphChecker(config, prompt)
    good: list[str] = []
    failed: list[tuple[str, list[Reason]]] = []
    node_errors: dict[str, Any] = {}
    for output_id in outputs:
        try:
            valid, reasons, _ = checker.check(output_id)
        except Exception as exc:  # a broken graph shape surfaced while walking it
            valid = False
            reasons = [
                {
                    "type": "exception_during_validation",
                    "message": "Exception when validating node",
                    "details": str(exc),
                    "extra_info": {
                        "exception_type": _type_name(exc),
                        "traceback": traceback.format_tb(exc.__traceback__),
                    },
                }
            ]
            checker.validated[output_id] = (False, reasons, output_id)
        if valid:
            good.append(output_id)
            continue
        logger.info("output %s failed validation: %s", output_id, reasons)
        failed.append((output_id, reasons))
        # Like ComfyUI: every node found invalid so far (with reasons of its own) is reported and
        # gets this output added to its dependent_outputs.
        for node_id, (node_valid, node_reasons, _) in checker.validated.items():
            if node_valid or not node_reasons:
                continue
            entry = node_errors.get(node_id)
            if entry is None:
                entry = {
                    "errors": node_reasons,
                    "dependent_outputs": [],
                    "class_type": prompt[node_id]["class_type"],
                }
                node_errors[node_id] = entry
            entry["dependent_outputs"].append(output_id)

    if not good:
        details = "\n".join(f"{r['message']}: {r['details']}" for _, reasons in failed for r in reasons)
        error = _error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details)
        return ValidationResult(False, error, [], node_errors)
    return ValidationResult(True, None, good, node_errors)


class _GraphChecker:
    """Validates nodes recursively along their links, remembering each node's verdict."""

    def __init__(self, config: Config, prompt: dict[str, Any]) -> None:
        self.config = config
        self.prompt = prompt
        self.validated: dict[str, Verdict] = {}

    def check(self, node_id: str) -> Verdict:
        if node_id in self.validated:
            return self.validated[node_id]
        node = self.prompt[node_id]
        inputs: dict[str, Any] = node["inputs"]
        class_type: str = node["class_type"]
        info = object_info.node_info(self.config, class_type)
        assert info is not None, class_type
        custom = CUSTOM_VALIDATED_INPUTS.get(class_type, ())
        errors: list[Reason] = []
        valid = True
        for name, category, spec in object_info.input_specs(info):
            input_type = spec[0]
            extra: dict[str, Any] = spec[1] if len(spec) > 1 else {}
            input_config = [input_type, extra]
            if name not in inputs:
                if category == "required":
                    errors.append(
                        {
                            "type": "required_input_missing",
                            "message": "Required input is missing",
                            "details": name,
                            "extra_info": {"input_name": name},
                        }
                    )
                continue
            value = inputs[name]
            if isinstance(value, list):
                reason, upstream_ok = self._check_link(name, value, input_type, input_config)
                if reason is not None:
                    errors.append(reason)
                if not upstream_ok:
                    valid = False
                continue
            reason = self._check_literal(inputs, name, input_type, extra, input_config, name in custom)
            if reason is not None:
                errors.append(reason)

        errors.extend(self._custom_checks(class_type, inputs))
        verdict: Verdict = (not errors and valid, errors, node_id)
        self.validated[node_id] = verdict
        return verdict

    def _check_link(
        self, name: str, link: list[Any], input_type: Any, input_config: list[Any]
    ) -> tuple[Reason | None, bool]:
        """Returns (own error or None, whether the upstream node is valid)."""
        if len(link) != 2:
            return {
                "type": "bad_linked_input",
                "message": "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                "details": name,
                "extra_info": {"input_name": name, "input_config": input_config, "received_value": link},
            }, True
        source_id = link[0]
        # Lookup failures here (missing node, bad slot) propagate to the caller, which reports them
        # against this node: that is how ComfyUI attributes a link to a missing node.
        source_class = self.prompt[source_id]["class_type"]
        received_type = object_info.return_types(source_class)[link[1]]
        if not types_compatible(received_type, input_type):
            return {
                "type": "return_type_mismatch",
                "message": "Return type mismatch between linked nodes",
                "details": f"{name}, received_type({received_type}) mismatch input_type({input_type})",
                "extra_info": {
                    "input_name": name,
                    "input_config": input_config,
                    "received_type": received_type,
                    "linked_node": link,
                },
            }, True
        try:
            upstream_ok = self.check(source_id)[0]
        except Exception as exc:
            self.validated[source_id] = (
                False,
                [
                    {
                        "type": "exception_during_inner_validation",
                        "message": "Exception when validating inner node",
                        "details": str(exc),
                        "extra_info": {
                            "input_name": name,
                            "input_config": input_config,
                            "exception_message": str(exc),
                            "exception_type": _type_name(exc),
                            "traceback": traceback.format_tb(exc.__traceback__),
                            "linked_node": link,
                        },
                    }
                ],
                source_id,
            )
            return None, False
        return None, upstream_ok

    def _check_literal(
        self,
        inputs: dict[str, Any],
        name: str,
        input_type: Any,
        extra: dict[str, Any],
        input_config: list[Any],
        custom: bool,
    ) -> Reason | None:
        value = inputs[name]
        if isinstance(value, dict) and "__value__" in value:
            value = value["__value__"]
            inputs[name] = value
        try:
            converted = _convert(value, input_type)
        except Exception as exc:
            return {
                "type": "invalid_input_type",
                "message": f"Failed to convert an input value to a {input_type} value",
                "details": f"{name}, {value}, {exc}",
                "extra_info": {
                    "input_name": name,
                    "input_config": input_config,
                    "received_value": value,
                    "exception_message": str(exc),
                },
            }
        inputs[name] = value = converted
        if custom:
            return None
        if "min" in extra and value < extra["min"]:
            return {
                "type": "value_smaller_than_min",
                "message": f"Value {value} smaller than min of {extra['min']}",
                "details": name,
                "extra_info": {"input_name": name, "input_config": input_config, "received_value": value},
            }
        if "max" in extra and value > extra["max"]:
            return {
                "type": "value_bigger_than_max",
                "message": f"Value {value} bigger than max of {extra['max']}",
                "details": name,
                "extra_info": {"input_name": name, "input_config": input_config, "received_value": value},
            }
        if isinstance(input_type, list) or input_type == "COMBO":
            options = input_type if isinstance(input_type, list) else extra.get("options", [])
            if value not in options:
                shown_config: list[Any] | None = input_config
                if len(options) > 20:
                    listing = f"(list of length {len(options)})"
                    shown_config = None
                else:
                    listing = str(options)
                return {
                    "type": "value_not_in_list",
                    "message": "Value not in list",
                    "details": f"{name}: '{value}' not in {listing}",
                    "extra_info": {"input_name": name, "input_config": shown_config, "received_value": value},
                }
        return None

    def _custom_checks(self, class_type: str, inputs: dict[str, Any]) -> list[Reason]:
        if class_type != "LoadImage":
            return []
        image = inputs.get("image")
        if image is None or isinstance(image, list):
            return []
        if resolve_input_image(self.config, str(image)) is not None:
            return []
        return [
            {
                "type": "custom_validation_failed",
                "message": "Custom validation failed for node",
                "details": f"image - Invalid image file: {image}",
                "extra_info": {"input_name": "image"},
            }
        ]


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
