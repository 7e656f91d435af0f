"""The package's shape, checked: the import contracts of pyproject.toml hold (lint-imports) and cover every core
module, named SQL stays in the core (the API and the worker use its facades), and the API's modules share no
private names. Each scanner is also run on a small bad example, so a check that could never fail is caught."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "comfyq"
# comfyq/*.py that are entry points or tooling, not core: they may import anything, and the core none of them.
TOOLING = frozenset({"cli", "cli_admin", "cli_api", "cli_watch", "client", "event_stream", "demo", "stack", "envfile",
                     "__main__"})
SQL_METHODS = frozenset({"fetch_one", "fetch_all", "execute", "listener"})
# Known exceptions, (path, imported name), each waiting for its own change: an entry that no longer matches fails
# the test, so the list only shrinks. The public name is comfyq.api.request_body.json_body.
PENDING_PRIVATE: frozenset[tuple[str, str]] = frozenset()


def importlinter_config() -> dict[str, Any]:
    config: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return config


def core_contract(config: dict[str, Any]) -> dict[str, Any]:
    """The forbidden contract whose sources are the core modules (it forbids comfyq.api)."""
    [contract] = [c for c in config["contracts"] if c["type"] == "forbidden" and "comfyq.api" in c["forbidden_modules"]]
    return contract


def contract_coverage_problems(module_names: Iterable[str], contract: dict[str, Any]) -> list[str]:
    """Every comfyq/*.py module (bar the package root) is either core, listed in the contract, or tooling,
    forbidden by it; never both, and the contract names no module that does not exist."""
    names = set(module_names) - {"__init__"}
    core = {source.removeprefix("comfyq.") for source in contract["source_modules"]}
    forbidden = set(contract["forbidden_modules"])
    problems = [f"comfyq/{name}.py is neither in the core contract's source_modules nor in TOOLING"
                for name in sorted(names - core - TOOLING)]
    problems += [f"comfyq/{name}.py is both core and tooling" for name in sorted(names & core & TOOLING)]
    problems += [f"the core contract lists comfyq.{name}, which does not exist" for name in sorted(core - names)]
    problems += [f"the core contract does not forbid the tooling module comfyq.{name}"
                 for name in sorted((names & TOOLING) - {"__main__"}) if f"comfyq.{name}" not in forbidden]
    return problems


def python_files(*folders: Path) -> Iterator[Path]:
    for folder in folders:
        yield from sorted(folder.rglob("*.py"))


def named_sql_calls(source: str) -> list[str]:
    """Query names passed as string literals to fetch_one/fetch_all/execute/listener (on a Database, a Session
    or anything else: outside the core only the facades may name queries)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SQL_METHODS:
            candidates = node.args[:1] + [kw.value for kw in node.keywords if kw.arg in ("name", "listen_query")]
            found += [arg.value for arg in candidates if isinstance(arg, ast.Constant) and isinstance(arg.value, str)]
    return found


def private_api_imports(source: str, module: str) -> list[str]:
    """Private names (a part starting with `_`, dunders aside) that `module` imports from another comfyq.api
    module, as dotted paths."""
    package = module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        paths: list[str] = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            paths = [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            paths = [alias.name for alias in node.names]
        for path in paths:
            if not path.startswith("comfyq.api.") or path.startswith(f"{module}."):
                continue
            if any(part.startswith("_") and not part.startswith("__") for part in path.split(".")):
                found.append(path)
    return found


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# (i) ------------------------------------------------------------------------------------------------------
def test_every_core_module_is_under_the_contract() -> None:
    modules = [path.stem for path in PACKAGE.glob("*.py")]
    assert contract_coverage_problems(modules, core_contract(importlinter_config())) == []


def test_the_package_root_imports_nothing_of_its_own() -> None:
    """comfyq/__init__.py cannot be a source of the core contract (that would take in the sub-packages), so it
    stays free of comfyq imports instead."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert not [ast.unparse(node) for node in imports if "comfyq" in ast.unparse(node) or
                (isinstance(node, ast.ImportFrom) and node.level)]


def test_contract_coverage_check_catches_a_module_left_out() -> None:
    contract = {"source_modules": ["comfyq.db", "comfyq.gone"], "forbidden_modules": ["comfyq.api"]}
    assert contract_coverage_problems(["__init__", "db", "new_module", "cli"], contract) == [
        "comfyq/new_module.py is neither in the core contract's source_modules nor in TOOLING",
        "the core contract lists comfyq.gone, which does not exist",
        "the core contract does not forbid the tooling module comfyq.cli"]


# (ii) -----------------------------------------------------------------------------------------------------
def test_named_sql_stays_in_the_core() -> None:
    found = [(relative(path), name) for path in python_files(PACKAGE / "api", PACKAGE / "worker", PACKAGE / "events")
             for name in named_sql_calls(path.read_text())]
    assert found == [], "name queries in a core facade (comfyq/*.py), not here"


def test_named_sql_scan_finds_query_names() -> None:
    source = ('db.fetch_one("a", {})\nsession.fetch_all("b")\nself.db.execute(name="c")\nx.listener("d")\n'
              'db.fetch_one(query)\nqueue.get("e")\n')
    assert named_sql_calls(source) == ["a", "b", "c", "d"]


# (iii) ----------------------------------------------------------------------------------------------------
def test_api_modules_share_no_private_names() -> None:
    found = {(relative(path), name) for path in python_files(PACKAGE / "api")
             for name in private_api_imports(path.read_text(), f"comfyq.api.{path.stem}")}
    assert sorted(found - PENDING_PRIVATE) == [], "make the name public (or move it to a shared module)"
    assert sorted(PENDING_PRIVATE - found) == [], "these are gone: remove them from PENDING_PRIVATE"


def test_private_import_scan_finds_private_names() -> None:
    source = ("from comfyq.api.jobs_api import _json_body, json_body\nfrom .auth import _cache\n"
              "from comfyq.api import _helpers\nimport comfyq.api._internal\nfrom comfyq.jobs import _private\n"
              "from comfyq.api.app import __doc__\n")
    assert private_api_imports(source, "comfyq.api.stats_api") == [
        "comfyq.api.jobs_api._json_body", "comfyq.api.auth._cache", "comfyq.api._helpers", "comfyq.api._internal"]
    assert private_api_imports("from comfyq.api.stats_api import _own\n", "comfyq.api.stats_api") == []


# (iv) -----------------------------------------------------------------------------------------------------
def test_import_contracts_hold() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.exists(), "install the dev extra: pip install -e '.[dev]'"
    result = subprocess.run([str(lint_imports), "--no-cache", "--no-logo"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
