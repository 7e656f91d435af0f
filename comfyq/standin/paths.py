"""File-system rules shared by /view, /upload/image, LoadImage and SaveImage: which directory a `type`
names, ComfyUI's `name [output]` annotations, and refusing paths that escape their directory."""

from __future__ import annotations

import logging
import mimetypes
import os
from pathlib import Path

from comfyq.standin.config import Config

logger = logging.getLogger(__name__)

ANNOTATIONS = ("output", "input", "temp")


def directory_for_type(config: Config, kind: str | None) -> Path | None:
    """The directory behind a ComfyUI `type` (input/output/temp), or None for anything else."""
    return {"output": config.output_dir, "input": config.input_dir, "temp": config.temp_dir}.get(kind or "")


def split_annotation(name: str) -> tuple[str, str | None]:
    """`"x.png [output]"` -> `("x.png", "output")`; a name without annotation -> `(name, None)`."""
    for kind in ANNOTATIONS:
        suffix = f" [{kind}]"
        if name.endswith(suffix):
            return name[: -len(suffix)], kind
    return name, None


def is_inside(base: Path, candidate: str | os.PathLike[str]) -> bool:
    """True when `candidate` (after resolving `..`) is `base` or below it."""
    base_abs = os.path.abspath(base)
    return os.path.commonpath((base_abs, os.path.abspath(candidate))) == base_abs


def resolve_input_image(config: Config, name: str) -> Path | None:
    """The file LoadImage would read for `name` (default directory: input), or None if it is missing
    or points outside its directory."""
    bare, kind = split_annotation(name)
    base = directory_for_type(config, kind or "input")
    if base is None or not bare:
        return None
    path = base / bare
    if not is_inside(base, path) or not path.is_file():
        return None
    return path


def list_input_images(config: Config) -> list[str]:
    """Top-level files of the input directory that look like images, sorted (LoadImage's choices)."""
    try:
        entries = os.listdir(config.input_dir)
    except FileNotFoundError:
        return []
    names = []
    for entry in entries:
        if not (config.input_dir / entry).is_file():
            continue
        mime, _ = mimetypes.guess_type(entry)
        if mime is not None and mime.startswith("image/"):
            names.append(entry)
    return sorted(names)
