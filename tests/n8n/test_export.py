"""Re-exporting from a running n8n (what an operator does after editing in the editor) gives back the committed
files byte for byte once normalised: the import/export round trip loses and adds nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from n8n import n8nctl
from tests.n8n.conftest import N8n

pytestmark = [pytest.mark.n8n, pytest.mark.slow]


def test_export_of_the_imported_workflows_matches_the_committed_files(n8n: N8n, tmp_path: Path) -> None:
    committed = sorted(n8nctl.WORKFLOWS_DIR.glob("*.json"))
    for path in committed:  # placeholders holding only the id, so each export lands in the file it has here
        workflow_id = json.loads(path.read_text(encoding="utf-8"))["id"]
        (tmp_path / path.name).write_text(json.dumps({"id": workflow_id}), encoding="utf-8")
    written = n8nctl.export(n8n.env, tmp_path)
    assert sorted(p.name for p in written) == [p.name for p in committed]
    for path in written:
        assert path.read_text(encoding="utf-8") == (n8nctl.WORKFLOWS_DIR / path.name).read_text(encoding="utf-8")
