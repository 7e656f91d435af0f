"""Files comfyq ships and reads at run time (migrations, queries, templates, the API's gunicorn config), found
through the installed packages, so an installed comfyq works from any working directory."""

from __future__ import annotations

import importlib.resources
from pathlib import Path


def package_path(package: str) -> Path:
    """The folder of an installed (or checked-out, editable) package of comfyq's."""
    return Path(str(importlib.resources.files(package)))


def gunicorn_config() -> Path:
    return package_path("comfyq.api") / "gunicorn_conf.py"
