"""A real small file system for storage tests: a tmpfs of its own gives a real ENOSPC when full and a real EROFS
once remounted read-only (as root, chmod stops nothing). Skipped where mounting is not allowed."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SIZE = "64k"


class SmallDisk:
    """One tmpfs mount; read_only() and writable() remount it in place."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mount(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)

    def read_only(self, within: float = 15.0) -> None:
        """Remount read-only. The kernel refuses (EBUSY) while a file is open for writing, which a busy worker
        often has for a few milliseconds, so this retries until the first moment no write is in flight."""
        deadline = time.monotonic() + within
        while True:
            result = self.mount("-o", "remount,ro", str(self.path))
            if result.returncode == 0 or "busy" not in result.stderr or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        assert result.returncode == 0, result.stderr

    def writable(self) -> None:
        result = self.mount("-o", "remount,rw", str(self.path))
        assert result.returncode == 0, result.stderr


@contextlib.contextmanager
def mounted_tmpfs(path: Path, size: str = SIZE) -> Iterator[SmallDisk]:
    """A tmpfs of `size` at path (created), unmounted on the way out (also when the test failed); skips the test
    where mounting is not allowed."""
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount/umount here")
    path.mkdir(parents=True, exist_ok=True)
    disk = SmallDisk(path)
    result = disk.mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "comfyq-test", str(path))
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        yield disk
    finally:
        unmounted = subprocess.run(["umount", str(path)], capture_output=True, text=True, timeout=30)
        if unmounted.returncode != 0:  # something still holds it open: detach now, freed when released
            subprocess.run(["umount", "-l", str(path)], capture_output=True, text=True, timeout=30, check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 64 KiB tmpfs under tmp_path, unmounted in teardown (also when the test failed)."""
    with mounted_tmpfs(tmp_path / "small-disk") as disk:
        yield disk
