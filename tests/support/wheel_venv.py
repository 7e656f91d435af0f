"""The package as a user installs it: a wheel built from the checkout, installed into a new virtualenv. Shared by
the tests that run comfyq's commands from outside the checkout (tests/test_wheel.py, test_container_commands.py).

The new virtualenv reuses the project's installed dependencies (a .pth line naming their site-packages) so the
tests need no network; comfyq itself comes only from the wheel."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from comfyq.settings import PROJECT_ROOT


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                    "-w", str(out), str(PROJECT_ROOT)], check=True, timeout=300)
    [built] = out.glob("comfyq-*.whl")
    return built


@pytest.fixture(scope="session")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a new virtualenv holding the wheel (and, through a .pth line, the already installed deps)."""
    root = tmp_path_factory.mktemp("venv")
    venv.create(root, with_pip=True)
    site = subprocess.run([str(root / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(root / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--quiet", str(wheel)],
                   check=True, timeout=300)
    return root / "bin"
