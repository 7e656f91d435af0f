"""A workflow manifest as an HTML form, and back: the form's strings become the JSON a POST /jobs body would carry
(numbers where they parse as numbers), and the API's own validation (jobs_api.submit_one) judges them; its error
details are then spread over the fields they name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from werkzeug.datastructures import MultiDict

from comfyq.api.api_errors import ApiError
from comfyq.workflows import ParamSpec, Workflow

LONG_TEXT = 255  # strings that may be longer than this get a text area
GENERAL = ""  # the key of errors that belong to no single field


@dataclass
class Field:
    name: str
    kind: str  # textarea, text, number, checkbox
    label: str
    spec: ParamSpec
    value: str = ""
    help: str = ""
    choices: list[str] = field(default_factory=list)


def _choices(limits: list[dict[str, Any]]) -> list[str]:
    return [str(choice) for limit in limits for choice in limit.get("choices") or []]


def _help(spec: ParamSpec) -> str:
    parts = ["Required."] if spec.required else []
    parts += [spec.description] if spec.description else []
    if spec.random_default:
        parts.append("Empty: a random value, stored with the job.")
    elif spec.default not in (None, ""):
        parts.append(f"Default: {spec.default}.")
    if spec.minimum is not None or spec.maximum is not None:
        parts.append(f"From {spec.minimum if spec.minimum is not None else '-'} to "
                     f"{spec.maximum if spec.maximum is not None else '-'}"
                     + (f", a multiple of {spec.multiple_of}." if spec.multiple_of else "."))
    return " ".join(parts)


def fields(workflow: Workflow, node_limits: dict[str, list[dict[str, Any]]],
           form: MultiDict[str, str] | None = None) -> list[Field]:
    """One field per param, in manifest order, filled from a submitted form or with the defaults."""
    out = []
    for name, spec in workflow.params.items():
        if spec.type == "boolean":
            kind = "checkbox"
        elif spec.type in ("integer", "number"):
            kind = "number"
        else:
            kind = "textarea" if (spec.max_length or LONG_TEXT + 1) > LONG_TEXT else "text"
        default = "" if spec.random_default or spec.default is None else str(spec.default)
        if spec.type == "boolean":
            default = "on" if spec.default else ""
        value = form.get(name, "") if form is not None else default
        out.append(Field(name=name, kind=kind, label=name.replace("_", " ").capitalize(), spec=spec, value=value,
                         help=_help(spec), choices=_choices(node_limits.get(name, []))))
    return out


def _number(text: str) -> Any:
    """An int or float when the text is one; else the text itself, for the API to name the problem."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def job_body(workflow: Workflow, form: MultiDict[str, str]) -> dict[str, Any]:
    """The POST /jobs body the form stands for. An empty field is left out, so the manifest's default applies."""
    params: dict[str, Any] = {}
    for name, spec in workflow.params.items():
        if spec.type == "boolean":
            params[name] = name in form
            continue
        text = form.get(name, "")
        if text == "":
            continue
        params[name] = _number(text.strip()) if spec.type in ("integer", "number") else text
    body: dict[str, Any] = {"workflow": workflow.name, "params": params}
    priority = form.get("priority", "").strip()
    if priority:
        body["priority"] = _number(priority)
    return body


def field_errors(exc: ApiError) -> dict[str, str]:
    """The API's error by field name (params by their own name, `priority`); the rest under GENERAL."""
    errors: dict[str, str] = {}
    details = exc.details
    if isinstance(details, dict) and exc.code in ("invalid_params", "validation_error"):
        errors.update({str(key): str(value) for key, value in details.items()})
    elif isinstance(details, list):
        for item in details:
            if isinstance(item, dict) and "field" in item:
                name = str(item["field"]).removeprefix("params.")
                errors[name] = f"{errors[name]}; {item['problem']}" if name in errors else str(item["problem"])
    errors.setdefault(GENERAL, exc.message)
    return errors
