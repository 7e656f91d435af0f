"""A sweep on the submit form: one param varied over a range of whole numbers (seeds 1..N) or over a list of
texts (prompts, one per line), the rest of the form fixed. It becomes the body POST /jobs/batch would get, so
the batch's own validation, limits and messages judge it (jobs_api.submit_many); its item errors are then
spread over the fields they name, the swept param's under the sweep's own field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from werkzeug.datastructures import MultiDict

from comfyq.api.api_errors import ApiError
from comfyq.api.console import forms
from comfyq.api.request_body import too_many_items
from comfyq.workflows import Workflow

FIELD = "sweep"  # the error key of the sweep's own fields
RANGE, LINES = "range", "lines"
SHOWN_PROBLEMS = 5  # item errors named under the sweep field; the rest are counted


@dataclass(frozen=True)
class Sweep:
    param: str
    kind: str  # RANGE or LINES
    values: list[Any]

    def label(self, index: int) -> str:
        """How the page names one item: by its value for a range (seed 7), by its line for texts (line 3)."""
        return f"{self.param} {self.values[index]}" if self.kind == RANGE else f"line {index + 1}"


def sweepable(workflow: Workflow) -> dict[str, str]:
    """The params a sweep can vary, by name: integers over a range, strings one per line."""
    kinds = {"integer": RANGE, "string": LINES}
    return {name: kinds[spec.type] for name, spec in workflow.params.items() if spec.type in kinds}


def _whole(text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ApiError(422, "validation_error", f"{what} must be a whole number") from None


def parse(workflow: Workflow, form: MultiDict[str, str], max_jobs: int) -> Sweep | None:
    """The form's sweep, or None for a single job. A range longer than a batch may hold is refused with the
    batch's own error before its values are made (1..10^18 would not fit in memory)."""
    param = form.get(FIELD, "")
    if not param:
        return None
    kind = sweepable(workflow).get(param)
    if kind is None:
        raise ApiError(422, "validation_error", f"{param!r} is not a param of {workflow.name} a sweep can vary")
    if kind == RANGE:
        first, last = _whole(form.get("sweep_from", ""), "From"), _whole(form.get("sweep_to", ""), "To")
        if last < first:
            raise ApiError(422, "validation_error", "To must not be less than From")
        if last - first + 1 > max_jobs:
            raise too_many_items(last - first + 1, max_jobs)
        return Sweep(param, kind, list(range(first, last + 1)))
    values = [line.strip() for line in form.get("sweep_values", "").splitlines() if line.strip()]
    if not values:
        raise ApiError(422, "validation_error", "give at least one value, one per line")
    return Sweep(param, kind, values)  # too many: submit_many refuses it, as POST /jobs/batch would


def batch_body(job: dict[str, Any], sweep: Sweep) -> dict[str, Any]:
    """The POST /jobs/batch body: the form's job once per value of the swept param."""
    return {"jobs": [{**job, "params": {**job["params"], sweep.param: value}} for value in sweep.values]}


def batch_errors(exc: ApiError, sweep: Sweep) -> dict[str, str]:
    """The batch's refusal by field: a fixed field's error once (every item shares it), the swept param's per
    item under the sweep field, and errors that name no field with their item's label."""
    errors = {forms.GENERAL: exc.message}
    details = exc.details if isinstance(exc.details, dict) else {}
    if exc.code != "invalid_batch_items":
        if exc.code == "batch_too_large":
            errors[FIELD] = exc.message
        return errors
    swept: list[str] = []
    unnamed: list[str] = []
    for problem in details.get("items", []):
        index = int(problem.get("index", 0))
        item = forms.field_errors(ApiError(422, str(problem.get("code")), str(problem.get("message") or ""),
                                           problem.get("details")))
        general = item.pop(forms.GENERAL, "")
        if sweep.param in item:
            swept.append(f"{sweep.label(index)}: {item.pop(sweep.param)}")
        if not item and general:
            unnamed.append(f"{sweep.label(index)}: {general}")
        for name, message in item.items():
            errors.setdefault(name, message)
    if swept:
        more = len(swept) - SHOWN_PROBLEMS
        errors[FIELD] = "; ".join(swept[:SHOWN_PROBLEMS]) + (f"; {more} more item(s) are invalid" if more > 0 else "")
    if unnamed:
        errors[forms.GENERAL] += " (" + "; ".join(unnamed[:SHOWN_PROBLEMS]) + ")"
    return errors
