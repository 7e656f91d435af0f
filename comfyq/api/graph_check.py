"""Shape checks for raw API-format graphs, so a malformed graph is refused at the door, not on the GPU."""

from __future__ import annotations

from typing import Any


def graph_problems(graph: dict[str, Any], max_nodes: int) -> dict[str, str]:
    """Problems keyed by node id ('graph' for the whole); empty when the graph is well formed."""
    if not graph:
        return {"graph": "has no nodes"}
    if len(graph) > max_nodes:
        return {"graph": f"has {len(graph)} nodes; the limit is {max_nodes}"}
    problems: dict[str, str] = {}
    for node_id, node in graph.items():
        if not node_id:  # ComfyUI links name nodes by id: an empty one cannot be linked to or reported
            problems[node_id] = "has an empty node id"
            continue
        if not isinstance(node, dict):
            problems[node_id] = "is not an object"
            continue
        if not isinstance(node.get("class_type"), str) or not node["class_type"]:
            problems[node_id] = "has no class_type"
            continue
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            problems[node_id] = "inputs is not an object"
            continue
        for name, value in inputs.items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int) and not isinstance(
                    value[1], bool):
                if str(value[0]) not in graph:
                    problems[node_id] = f"input {name!r} links to missing node {value[0]!r}"
    return problems
