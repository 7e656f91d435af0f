#!/usr/bin/env python3
"""Normalise n8n workflow exports for the repository: keep the fields that define a workflow (fixed ids and
webhookIds included), drop the volatile ones n8n adds on every save (updatedAt, versionId, meta.instanceId,
pinData, staticData, tags, sharing...), sort nodes by name and every key, two-space indent, one trailing newline.

    python3 n8n/normalise.py n8n-workflows/*.json          # rewrite in place
    python3 n8n/normalise.py --check n8n-workflows/*.json  # exit 1 if a file is not normalised
    python3 n8n/normalise.py --from export.json --out n8n-workflows   # split an `n8n export:workflow` file

Standard library only: it runs with any python3.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

# The top-level fields a workflow file keeps; everything else n8n writes (createdAt, updatedAt, versionId,
# activeVersionId, versionCounter, triggerCount, pinData, staticData, meta, tags, shared, isArchived,
# parentFolder, homeProject, scopes...) is volatile or instance-specific.
WORKFLOW_KEYS = ("id", "name", "description", "active", "nodes", "connections", "settings")
# Settings that name things in one instance only (errorWorkflow is kept: it names comfyqErrors0001, a fixed id).
VOLATILE_SETTINGS = ("timeSavedPerExecution",)


def normalise_workflow(workflow: dict[str, Any]) -> dict[str, Any]:
    """The normalised form of one workflow (a new dict; the input is left alone)."""
    if not isinstance(workflow, dict) or "nodes" not in workflow or "connections" not in workflow:
        raise ValueError("not an n8n workflow (no nodes/connections)")
    if not workflow.get("id"):
        raise ValueError(f"workflow {workflow.get('name')!r} has no id: give it a fixed one before committing")
    out: dict[str, Any] = {key: workflow[key] for key in WORKFLOW_KEYS if workflow.get(key) not in (None, "")}
    out["active"] = False  # import deactivates anyway; activation is `n8nctl.py up`'s job
    nodes = []
    for node in workflow["nodes"]:
        node = json.loads(json.dumps(node))  # a deep copy
        for creds in (node.get("credentials") or {}).values():
            if isinstance(creds, dict):  # keep the reference only, never anything else n8n put there
                for key in list(creds):
                    if key not in ("id", "name"):
                        del creds[key]
        nodes.append(node)
    out["nodes"] = sorted(nodes, key=lambda n: str(n.get("name")))
    settings = {key: value for key, value in (workflow.get("settings") or {}).items()
                if key not in VOLATILE_SETTINGS}
    out["settings"] = settings
    return out


def dumps(workflow: dict[str, Any]) -> str:
    return json.dumps(workflow, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def normalised_text(text: str) -> str:
    """A file's normalised text: an object, or an export array holding exactly one workflow."""
    data = json.loads(text)
    if isinstance(data, list):
        if len(data) != 1:
            raise ValueError("an export array with several workflows: split it with --from/--out")
        data = data[0]
    return dumps(normalise_workflow(data))


def file_name(workflow: dict[str, Any], existing: dict[str, Path]) -> str:
    """Keep the file an id already lives in; otherwise a slug of the name."""
    if workflow["id"] in existing:
        return existing[workflow["id"]].name
    slug = re.sub(r"[^a-z0-9]+", "-", str(workflow.get("name", workflow["id"])).lower()).strip("-")
    return f"{slug or workflow['id']}.json"


def split_export(source: Path, out_dir: Path) -> list[Path]:
    """Write each workflow of an export (array, object, or a folder of --separate files) into out_dir."""
    paths = sorted(source.glob("*.json")) if source.is_dir() else [source]
    workflows: list[dict[str, Any]] = []
    for path in paths:
        data = json.loads(path.read_text(encoding="utf-8"))
        workflows.extend(data if isinstance(data, list) else [data])
    existing = {}
    for path in out_dir.glob("*.json"):
        try:
            existing[json.loads(path.read_text(encoding="utf-8"))["id"]] = path
        except (ValueError, KeyError, TypeError):
            continue
    written = []
    for workflow in workflows:
        normalised = normalise_workflow(workflow)
        target = out_dir / file_name(normalised, existing)
        target.write_text(dumps(normalised), encoding="utf-8")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path, help="workflow files to normalise in place")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is not normalised")
    parser.add_argument("--from", dest="source", type=Path, help="an n8n export (file or --separate folder)")
    parser.add_argument("--out", type=Path, help="with --from: the folder to write the workflows to")
    args = parser.parse_args(argv)
    if args.source is not None:
        if args.out is None:
            parser.error("--from needs --out")
        for path in split_export(args.source, args.out):
            print(f"wrote {path}")
        return 0
    if not args.files:
        parser.error("name the workflow files (or use --from)")
    dirty = []
    for path in args.files:
        text = path.read_text(encoding="utf-8")
        try:
            wanted = normalised_text(text)
        except ValueError as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            return 2
        if wanted != text:
            dirty.append(path)
            if not args.check:
                path.write_text(wanted, encoding="utf-8")
    for path in dirty:
        print(f"{'not normalised' if args.check else 'normalised'}: {path}")
    return 1 if dirty and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
