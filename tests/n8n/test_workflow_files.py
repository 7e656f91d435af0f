"""Every committed n8n workflow, checked without running n8n: it parses, is normalised (normalise.py changes
nothing) and already in the form n8n's editor gives it when it opens it (n8n/editor_form.cjs changes nothing), has
fixed ids, reads no $env, names the error workflow, uses only node types and versions the pinned n8n has (read
from n8n/node_modules), refers to credentials of the committed template only, holds no secret, and explains itself
in a sticky note. The credential template takes every secret from the environment."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from n8n import n8nctl, normalise

pytestmark = pytest.mark.n8n

WORKFLOW_FILES = sorted(n8nctl.WORKFLOWS_DIR.glob("*.json"))
WORKFLOW_ID = re.compile(r"^[A-Za-z0-9]{16}$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
# Literal secrets that must never be committed (expressions such as {{ $env.X }} are fine).
SECRET_PATTERNS = {
    "a Slack webhook URL": re.compile(r"hooks\.slack\.com/(services|workflows)/"),
    "a Slack token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{8,}"),
    "a comfyq API token": re.compile(r"\bcq_[A-Za-z0-9_-]{16,}"),
    "a literal bearer token": re.compile(r"Bearer\s+(?!\{\{)[A-Za-z0-9._~+/-]{8,}"),
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "credentials in a URL": re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@{}]+:[^/\s@{}]+@"),
}
SECRET_KEYS = re.compile(r"(password|passwd|secret|token|apikey|api_key|accesstoken|privatekey|authorization)$",
                         re.IGNORECASE)


def _strings(value: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [pair for key, item in value.items() for pair in _strings(item, f"{path}.{key}")]
    if isinstance(value, list):
        return [pair for index, item in enumerate(value) for pair in _strings(item, f"{path}[{index}]")]
    return [(path, value)] if isinstance(value, str) else []


def _versions(entry: Any) -> list[float]:
    return [float(v) for v in entry] if isinstance(entry, list) else [float(entry)]


@pytest.fixture(scope="module")
def node_types() -> dict[str, dict[float, set[str]]]:
    """type -> typeVersion -> credential types it declares, as the pinned n8n-nodes-base defines them."""
    assert n8nctl.is_installed(), (
        "n8n/node_modules is missing or not at the locked version and could not be installed: run "
        "`make n8n-install` (the static workflow checks read the node definitions from there)")
    types: dict[str, dict[float, set[str]]] = {}
    base = n8nctl.NODE_MODULES / "n8n-nodes-base" / "dist" / "types" / "nodes.json"
    for entry in json.loads(base.read_text(encoding="utf-8")):
        credentials = {c["name"] for c in entry.get("credentials") or []}
        for version in _versions(entry["version"]):
            types.setdefault(f"n8n-nodes-base.{entry['name']}", {})[version] = credentials
    assert len(types) > 300, f"only {len(types)} node types read from {base}"
    return types


@pytest.fixture(scope="module")
def credential_types() -> dict[str, dict[str, dict[str, Any]]]:
    """credential type -> property name -> property, from the pinned n8n-nodes-base."""
    assert n8nctl.is_installed(), "n8n/node_modules is missing: run `make n8n-install`"
    path = n8nctl.NODE_MODULES / "n8n-nodes-base" / "dist" / "types" / "credentials.json"
    return {entry["name"]: {p["name"]: p for p in entry["properties"]}
            for entry in json.loads(path.read_text(encoding="utf-8"))}


@pytest.fixture(scope="module")
def template() -> dict[str, dict[str, Any]]:
    entries = json.loads(n8nctl.CREDENTIALS_TEMPLATE.read_text(encoding="utf-8"))
    assert isinstance(entries, list), "n8n import:credentials needs a JSON array"
    by_id = {entry["id"]: entry for entry in entries}
    assert len(by_id) == len(entries), "credential ids repeat"
    return by_id


def test_the_expected_workflows_are_committed() -> None:
    names = {path.stem for path in WORKFLOW_FILES}
    assert {"submit", "monitor-alerts", "cleanup", "scheduled-batch", "errors"} <= names
    ids = [json.loads(path.read_text(encoding="utf-8"))["id"] for path in WORKFLOW_FILES]
    assert len(set(ids)) == len(ids), "workflow ids repeat"
    paths = n8nctl.webhook_paths()
    assert len(set(paths)) == len(paths) and "comfyq/jobs" in paths


def test_examples_are_imported_but_not_published() -> None:
    published = n8nctl.published_ids()
    assert "comfyqSchedBatch" not in published
    assert {"comfyqSubmit0001", "comfyqMonitor001", "comfyqCleanup001", "comfyqErrors0001"} <= set(published)


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=[p.name for p in WORKFLOW_FILES])
def test_workflow_file_is_normalised_with_fixed_ids(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    workflow = json.loads(text)
    assert normalise.normalised_text(text) == text, f"run: python3 n8n/normalise.py {path.relative_to(n8nctl.PROJECT)}"
    assert set(workflow) <= set(normalise.WORKFLOW_KEYS)
    assert WORKFLOW_ID.match(workflow["id"]), "give the workflow a fixed 16-character id"
    assert workflow["active"] is False and workflow["settings"]["executionOrder"] == "v1"
    node_ids = [node["id"] for node in workflow["nodes"]]
    names = [node["name"] for node in workflow["nodes"]]
    assert all(UUID.match(i) for i in node_ids) and len(set(node_ids)) == len(node_ids)
    assert len(set(names)) == len(names)
    for node in workflow["nodes"]:
        if node["type"] in ("n8n-nodes-base.webhook", "n8n-nodes-base.emailSend"):
            assert UUID.match(node.get("webhookId", "")), f"{node['name']}: give it a fixed webhookId"


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=[p.name for p in WORKFLOW_FILES])
def test_every_node_exists_in_the_pinned_n8n(path: Path, node_types: dict[str, dict[float, set[str]]],
                                             template: dict[str, dict[str, Any]]) -> None:
    workflow = json.loads(path.read_text(encoding="utf-8"))
    names = {node["name"] for node in workflow["nodes"]}
    for node in workflow["nodes"]:
        versions = node_types.get(node["type"])
        assert versions is not None, f"{node['name']}: no node type {node['type']} in n8n {n8nctl.pinned_version()}"
        assert float(node["typeVersion"]) in versions, (
            f"{node['name']}: {node['type']} has versions {sorted(versions)}, not {node['typeVersion']}")
        declared = versions[float(node["typeVersion"])]
        params = node.get("parameters", {})
        for cred_type, ref in (node.get("credentials") or {}).items():
            generic = ((params.get("authentication") == "genericCredentialType"
                        and params.get("genericAuthType") == cred_type)
                       or (params.get("authentication") == "predefinedCredentialType"
                           and params.get("nodeCredentialType") == cred_type))
            assert cred_type in declared or generic, f"{node['name']}: does not take {cred_type} credentials"
            assert set(ref) == {"id", "name"}, f"{node['name']}: a credential reference holds only id and name"
            entry = template.get(ref["id"])
            assert entry is not None, f"{node['name']}: credential {ref['id']} is not in credentials.template.json"
            assert (entry["type"], entry["name"]) == (cred_type, ref["name"])
    for source, outputs in workflow["connections"].items():
        assert source in names, f"connection from unknown node {source!r}"
        for branch in outputs["main"]:
            for target in branch or []:
                assert target["node"] in names, f"connection to unknown node {target['node']!r}"


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=[p.name for p in WORKFLOW_FILES])
def test_no_secret_in_a_workflow_file(path: Path) -> None:
    workflow = json.loads(path.read_text(encoding="utf-8"))
    for where, text in _strings(workflow):
        for what, pattern in SECRET_PATTERNS.items():
            assert not pattern.search(text), f"{path.name}{where}: looks like {what}"
        key = where.rsplit(".", 1)[-1]
        if SECRET_KEYS.search(key) and text:
            assert text.startswith("="), f"{path.name}{where}: a literal value for a secret-like field"
    for node in workflow["nodes"]:
        headers = node.get("parameters", {}).get("headerParameters", {}).get("parameters", [])
        assert all(h["name"].lower() != "authorization" for h in headers), (
            f"{node['name']}: send tokens through a credential, not a header parameter")


def test_credential_template_takes_every_secret_from_the_environment(
        template: dict[str, dict[str, Any]], credential_types: dict[str, dict[str, dict[str, Any]]]) -> None:
    for cred_id, entry in template.items():
        assert WORKFLOW_ID.match(cred_id) and set(entry) == {"id", "name", "type", "data"}
        properties = credential_types.get(entry["type"])
        assert properties is not None, f"{cred_id}: no credential type {entry['type']}"
        assert set(entry["data"]) <= set(properties), f"{cred_id}: fields {set(entry['data']) - set(properties)}"
        for name, value in entry["data"].items():
            secret = properties[name].get("typeOptions", {}).get("password") or SECRET_KEYS.search(name)
            if secret or name == "value":
                assert isinstance(value, dict) and ENV_NAME.match(value.get("$env", "")), (
                    f"{cred_id}.{name}: a secret comes from the environment: {{\"$env\": \"NAME\"}}")
            if isinstance(value, str):
                assert "$env" not in value, f"{cred_id}.{name}: n8n runs with $env blocked"
                for what, pattern in SECRET_PATTERNS.items():
                    assert not pattern.search(value), f"{cred_id}.{name}: looks like {what}"


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=[p.name for p in WORKFLOW_FILES])
def test_no_env_and_an_error_workflow_and_a_note(path: Path) -> None:
    workflow = json.loads(path.read_text(encoding="utf-8"))
    assert "$env" not in path.read_text(encoding="utf-8"), "n8n runs with $env blocked: use a credential or Settings"
    types = {node["type"] for node in workflow["nodes"]}
    if "n8n-nodes-base.errorTrigger" in types:
        assert "errorWorkflow" not in workflow["settings"]
    else:
        assert workflow["settings"]["errorWorkflow"] == "comfyqErrors0001"
    notes = [node for node in workflow["nodes"] if node["type"] == "n8n-nodes-base.stickyNote"]
    assert len(notes) == 1, "one sticky note says what the workflow does, what it needs and how to test it"
    content = notes[0]["parameters"]["content"]
    assert "**What it does**" in content and "**Needs**" in content and "**Test**" in content
    for node in workflow["nodes"]:
        if node["type"] == "n8n-nodes-base.scheduleTrigger":
            assert node["name"] == "Schedule", "a trigger's name must stay true when its rule changes"
        if node["type"] == "n8n-nodes-base.httpRequest" and "n8n-nodes-base.errorTrigger" not in types:
            assert node.get("onError", "stopWorkflow") in ("stopWorkflow", "continueErrorOutput"), (
                f"{node['name']}: an HTTP error must fail the run or take the error branch (the error workflow, "
                "which reports on both channels, is the one that carries on)")


def test_files_are_in_the_form_the_editor_gives_them() -> None:
    """Opening a workflow in n8n's editor fills every parameter's default, settles Filter/If type validation and
    adds settings.binaryMode; a file already in that form is saved back unchanged, so opening it changes nothing."""
    files = [str(p) for p in [*WORKFLOW_FILES, n8nctl.SETTINGS_TEMPLATE]]
    result = subprocess.run([str(n8nctl.NODE_BIN), str(n8nctl.EDITOR_FORM_SCRIPT), "--check", *files],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_normalise_drops_volatile_fields_and_keeps_ids() -> None:
    exported = json.loads(WORKFLOW_FILES[0].read_text(encoding="utf-8"))
    exported.update(updatedAt="2026-01-01T00:00:00.000Z", createdAt="2026-01-01T00:00:00.000Z", versionId="v-1",
                    activeVersionId="v-1", triggerCount=1, pinData={"x": []}, staticData={"node:x": {}},
                    meta={"instanceId": "abc", "templateCredsSetupCompleted": True}, tags=[], active=True,
                    shared=[{"role": "workflow:owner"}], isArchived=False)
    exported["nodes"] = list(reversed(exported["nodes"]))
    first = exported["nodes"][0]
    if first.get("credentials"):
        for ref in first["credentials"].values():
            ref["extra"] = "dropped"
    text = normalise.normalised_text(json.dumps([exported]))
    assert text == WORKFLOW_FILES[0].read_text(encoding="utf-8")
