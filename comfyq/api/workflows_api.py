"""Template routes: list the templates (GET /workflows) and describe one (GET /workflows/<name>), with each
param's type, default and range, so callers can build a valid request without reading the manifests."""

from __future__ import annotations

from flask import Blueprint, Response

from comfyq.api.api_errors import ApiError
from comfyq.api.auth import require_token
from comfyq.api.node_check import workflow_node_limits
from comfyq.api.responses import Workflow, WorkflowList, answer
from comfyq.api.services import services

bp = Blueprint("workflows", __name__)


@bp.get("/workflows")
def list_workflows() -> Response:
    require_token()
    workflows = services().workflows
    return answer(WorkflowList, {"workflows": [workflows[name].describe() for name in sorted(workflows)]})


@bp.get("/workflows/<name>")
def get_workflow(name: str) -> Response:
    """The template's description; each param also gets `node_limits`, what ComfyUI itself accepts at the
    inputs the param fills (type, min/max/step, choices such as the installed checkpoints), when a worker has
    published ComfyUI's node catalogue."""
    require_token()
    workflow = services().workflows.get(name)
    if workflow is None:
        raise ApiError(404, "not_found", f"no workflow named {name!r}", {"known": sorted(services().workflows)})
    body = workflow.describe()
    for param, limits in workflow_node_limits(workflow).items():
        body["params"][param]["node_limits"] = limits
    return answer(Workflow, body)
