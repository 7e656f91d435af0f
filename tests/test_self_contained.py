"""The repository is self-contained: a user's clone has no folder beside it, so no test, script, Makefile or CI
file may read one. Fixtures recorded from real servers live in tests/fixtures/."""

from __future__ import annotations

import re
import subprocess

from comfyq.settings import PROJECT_ROOT

OUTSIDE = re.compile(r"""\.\./shared|parents\[\d\]\s*/\s*["']shared["']|parent\s*/\s*["']shared["']""")


def test_no_file_reads_a_folder_beside_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=PROJECT_ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    offenders = []
    for name in tracked:
        if not name.endswith((".py", ".sh", ".yml", ".yaml", ".toml", ".cfg", ".ini")) and name not in (
                "Makefile", ".ci/run"):
            continue
        path = PROJECT_ROOT / name
        if path.is_file() and OUTSIDE.search(path.read_text(encoding="utf-8", errors="replace")):
            offenders.append(name)
    assert offenders == [], f"files reading a folder outside the repository: {offenders}"


def test_the_fixtures_are_in_the_repository() -> None:
    fixtures = PROJECT_ROOT / "tests" / "fixtures"
    assert (fixtures / "comfyui" / "captures" / "errors.json").is_file()
    assert (fixtures / "comfyui" / "object_info_core.json").is_file()
    assert sorted(p.name for p in (fixtures / "comfyui" / "workflows").glob("*.json"))
    assert (fixtures / "compose" / "compose-spec.json").is_file()
