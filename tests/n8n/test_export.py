"""The round trip an operator makes (docs/n8n.md, "Editing a workflow"): the committed files are in the form n8n's
editor saves (filling every parameter's default, Filter/If type validation, settings.binaryMode), so importing
them, opening every node and exporting again gives them back byte for byte; and `make n8n` refuses to replace a
workflow changed in the editor unless forced, while an exported change goes through."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from n8n import n8nctl
from tests.n8n.conftest import Prepared

pytestmark = [pytest.mark.n8n, pytest.mark.slow]


def _placeholders(folder: Path) -> None:
    """Files holding only the ids, so each export lands in the file it has in the repository."""
    for path in sorted(n8nctl.WORKFLOWS_DIR.glob("*.json")):
        workflow_id = json.loads(path.read_text(encoding="utf-8"))["id"]
        (folder / path.name).write_text(json.dumps({"id": workflow_id}), encoding="utf-8")


@pytest.fixture
def instance(tmp_path: Path, prepared: Prepared) -> dict[str, str]:
    """A user folder of the test's own (no server: the CLI imports and exports), prepared as `make n8n` does: a copy
    of the session's prepared one."""
    return prepared.copy(tmp_path / "user")


def test_import_then_export_gives_the_committed_files_back_byte_for_byte(instance: dict[str, str],
                                                                         tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    _placeholders(out)
    written = n8nctl.export(instance, out)
    committed = sorted(n8nctl.WORKFLOWS_DIR.glob("*.json"))
    assert sorted(p.name for p in written) == [p.name for p in committed]  # the settings workflow stays out
    for path in written:
        assert path.read_text(encoding="utf-8") == (n8nctl.WORKFLOWS_DIR / path.name).read_text(encoding="utf-8")
    # What the editor does when it opens every node is already in the files: an export made raw (no editor
    # form applied) is the same once normalised.
    raw = tmp_path / "raw"
    raw.mkdir()
    n8nctl.cli(n8nctl.runtime_env(instance), "export:workflow", "--all", "--separate", f"--output={raw}/")
    opened = [str(p) for p in raw.glob("*.json")]
    assert len(opened) == len(committed) + 1  # and the settings workflow, made from the environment
    n8nctl.node_script(instance, n8nctl.EDITOR_FORM_SCRIPT, "--check", *opened)  # raises when opening changes one


def test_make_n8n_refuses_to_replace_a_workflow_changed_in_the_editor(instance: dict[str, str],
                                                                      tmp_path: Path) -> None:
    assert n8nctl.changed_in_editor(instance) == []
    # An operator edits the cleanup's schedule in the editor (what n8n stores for a saved draft).
    edited = tmp_path / "edited"
    edited.mkdir()
    source = json.loads((n8nctl.WORKFLOWS_DIR / "cleanup.json").read_text(encoding="utf-8"))
    for node in source["nodes"]:
        if node["name"] == "Schedule":
            node["parameters"]["rule"]["interval"][0]["expression"] = "0 0 4 * * *"
    (edited / "cleanup.json").write_text(json.dumps(source), encoding="utf-8")
    n8nctl.import_workflows(n8nctl.runtime_env(instance), edited)

    assert n8nctl.changed_in_editor(instance) == ["comfyqCleanup001 (comfyq: daily cleanup)"]
    with pytest.raises(n8nctl.N8nError, match=r"changed in n8n's editor.*make n8n-export.*FORCE=1"):
        n8nctl.prepare(instance, force=False)

    # Exported (the operator keeps the change): importing that file is no loss, so it goes through.
    kept = tmp_path / "kept"
    shutil.copytree(n8nctl.WORKFLOWS_DIR, kept)
    n8nctl.export(instance, kept)
    assert "0 0 4 * * *" in (kept / "cleanup.json").read_text(encoding="utf-8")
    n8nctl.prepare(instance, force=False, workflows_dir=kept)

    # Forced: the committed files win and the record starts again from them.
    n8nctl.import_workflows(n8nctl.runtime_env(instance), edited)
    n8nctl.prepare(instance, force=True)
    assert n8nctl.changed_in_editor(instance) == []
