"""The node catalogue: the real /object_info entries recorded from ComfyUI, with the choices that depend
on this server's state (checkpoint names, files in the input directory) filled in at request time."""

from __future__ import annotations

import copy
import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

from comfyq.standin.config import Config
from comfyq.standin.paths import list_input_images

logger = logging.getLogger(__name__)

OBJECT_INFO_FILE = Path(__file__).with_name("object_info_core.json")


@lru_cache(maxsize=1)
def _core() -> dict[str, Any]:
    with OBJECT_INFO_FILE.open(encoding="utf-8") as handle:
        data: dict[str, Any] = json.load(handle)
    return data


def known_classes() -> frozenset[str]:
    return frozenset(_core())


def node_info(config: Config, class_type: str) -> dict[str, Any] | None:
    """The /object_info entry of one class as the server would serve it now, or None if unknown."""
    base = _core().get(class_type)
    if base is None:
        return None
    info: dict[str, Any] = copy.deepcopy(base)
    required = info.get("input", {}).get("required", {})
    if class_type == "CheckpointLoaderSimple":
        required["ckpt_name"][0] = list(config.checkpoints)
    elif class_type == "LoadImage":
        required["image"][0] = list_input_images(config)
    return info


def all_node_info(config: Config) -> dict[str, Any]:
    return {name: node_info(config, name) for name in _core()}


def return_types(class_type: str) -> list[str]:
    return list(_core()[class_type].get("output", []))


def is_output_node(class_type: str) -> bool:
    return bool(_core()[class_type].get("output_node", False))


def input_specs(info: dict[str, Any]) -> list[tuple[str, str, list[Any]]]:
    """(name, category, spec) for the required then optional inputs, in the node's declared order."""
    inputs = info.get("input", {})
    order = info.get("input_order", {})
    specs: list[tuple[str, str, list[Any]]] = []
    for category in ("required", "optional"):
        declared = inputs.get(category, {})
        names = list(order.get(category, [])) or list(declared)
        names += [name for name in declared if name not in names]
        for name in names:
            if name in declared:
                specs.append((name, category, declared[name]))
    return specs
