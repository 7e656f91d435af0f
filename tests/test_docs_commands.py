"""Every command the docs and the README show works as written: each is checked against what it names.

Commands are the lines of sh/bash/console code blocks (continuation lines joined) and inline code spans that start
with a program's name. Each is checked by its program: `comfyq ...` parses with comfyq's own argument parser, `make
X` names a Makefile target, `python -m mod` / `python file.py` name a module or file of the project, `curl` names
a path and method of the API's OpenAPI document (or an n8n webhook a workflow defines), `docker compose` names
services and profiles of docker-compose.yml, environment assignments name settings comfyq reads, file arguments
exist. A program without a check fails the test, so a new kind of command cannot slip through unchecked. The
commands that matter most also run for real elsewhere: `make demo` and `make test` in CI, `comfyq migrate / token
create / api` from the wheel (test_wheel.py), every container command (test_container_commands.py), `comfyq
init` (test_envfile.py)."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import itertools
import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from comfyq.api.openapi import build_document
from comfyq.cli import build_parser
from comfyq.events.app import ROUTES as EVENTS_ROUTES
from comfyq.settings import PROJECT_ROOT, Settings

DOCS = [*sorted((PROJECT_ROOT / "docs").glob("*.md")), PROJECT_ROOT / "README.md"]
SHELL_FENCES = {"sh", "bash", "shell", "console"}

# Programs that are not comfyq's, with why a check of their own is not needed: the line is still parsed, and its
# relative file arguments must exist.
EXTERNAL = {
    "pg_dump": "PostgreSQL's backup tool, against $DATABASE_URL",
    "pg_restore": "PostgreSQL's restore tool",
    "kill": "a signal to a process the operator names",
    "git": "the operator's own checkout",
    "npm": "installing the pinned n8n (n8n/package-lock.json)",
    "n8n": "n8n's own CLI, named in prose",
    "sed": "reads a value out of a file the docs name",
    "psql": "PostgreSQL's shell",
    "pip": "installing comfyq itself",
    "pytest": "the project's tests; the test files it names must exist",
}
# Files a documented command reads that an earlier command writes, with the code that writes them.
WRITTEN_AT_RUN_TIME = {"n8n/data/secrets.env": "n8n/n8nctl.py"}
INLINE_PROGRAMS = {"comfyq", "make", "python", "python3", "curl", "docker", "promtool", "gunicorn", "pip", "psql",
                   "pg_dump", "pg_restore", "kill", "git", "npm", "n8n"}


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    text: str
    inline: bool = False  # a span in prose: `comfyq token create` may name a command rather than run it

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def commands() -> Iterator[Command]:
    for path in DOCS:
        fence: str | None = None
        pending = ""
        start = 0
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            opened = re.match(r"^\s*```(\w*)", line)
            if opened:
                fence = None if fence is not None else opened.group(1)
                continue
            if fence is not None:
                if fence not in SHELL_FENCES:
                    continue
                text = re.sub(r"\s+#\s.*$", "", line).strip()  # a trailing comment
                if not text or text.startswith("#"):
                    continue
                if not pending:
                    start = number
                pending = f"{pending} {text}".strip()
                if pending.endswith("\\"):
                    pending = pending[:-1].strip()
                    continue
                yield Command(path.name, start, pending.removesuffix("&").strip())
                pending = ""
                continue
            for span in re.findall(r"`([^`]+)`", line):
                words = span.split()
                if len(words) > 1 and words[0].removeprefix(".venv/bin/") in INLINE_PROGRAMS:
                    yield Command(path.name, number, span, inline=True)


ALL = list(commands())


def placeholders(text: str) -> str:
    """Sample values for the docs' placeholders, so the line can be parsed."""
    text = re.sub(r"<[^>]+>", "1", text)
    return text.replace("...", "x")


def words_of(command: Command) -> list[str]:
    try:
        return shlex.split(placeholders(command.text))
    except ValueError as exc:
        raise AssertionError(f"{command}: not a valid shell line ({exc})") from None


def known_settings() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names |= {str(a) for a in getattr(alias, "choices", ())} or {f"COMFYQ_{name.upper()}"}
    return names | {"DATABASE_URL", "COMFYUI_URL", "QUEUE_BACKEND", "REDIS_URL", "TEST_DATABASE_URL", "KEY",
                    "TOKEN", "COMFYQ_FUZZ_EXAMPLES"}  # the last one: the test suite's fuzz budget (security.md)


def check_assignments(words: list[str], command: Command) -> list[str]:
    """Leading VAR=value words (and `export VAR=value`) name variables comfyq reads; returns the rest."""
    if words and words[0] == "export":
        words = words[1:]
    settings = known_settings()
    while words and re.fullmatch(r"[A-Z][A-Z0-9_]*=.*", words[0]):
        name = words[0].split("=", 1)[0]
        assert name in settings or name in compose_env_names(), f"{command}: {name} is no setting comfyq reads"
        words = words[1:]
    return words


def compose_env_names() -> set[str]:
    text = (PROJECT_ROOT / "docker-compose.yml").read_text()
    return set(re.findall(r"\$\{([A-Z0-9_]+)", text))


def check_comfyq(args: list[str], command: Command) -> None:
    if len(args) == 1 and "/" in args[0]:  # "comfyq submit/status/jobs": a list of subcommands
        for name in args[0].split("/"):
            check_comfyq([name, "--help"], command)
        return
    if command.inline and not any(a.startswith("-") for a in args):
        args = [*args, "--help"]  # a command named in prose: it must exist, its arguments are elsewhere
    parser = build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(args)
    except SystemExit as exc:
        assert exc.code == 0, f"{command}: comfyq refuses it: {err.getvalue().strip()}"


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([a-zA-Z0-9_-]+):", (PROJECT_ROOT / "Makefile").read_text(), re.MULTILINE))


def check_python(args: list[str], command: Command) -> None:
    if args[:1] == ["-m"]:
        module = args[1]
        assert importlib.util.find_spec(module) is not None, f"{command}: no module {module}"
        return
    script = args[0]
    if script == "main.py":  # ComfyUI's own entry point, in the operator's ComfyUI checkout
        return
    candidates = [PROJECT_ROOT / script, PROJECT_ROOT / "worker" / script]
    assert any(path.is_file() for path in candidates), f"{command}: no file {script}"


def openapi_routes() -> list[tuple[str, re.Pattern[str]]]:
    document: dict[str, Any] = build_document()
    routes = []
    for path, methods in document["paths"].items():
        pattern = re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$")
        routes += [(method.upper(), pattern) for method in methods]
    return routes


def events_routes() -> list[tuple[str, re.Pattern[str]]]:
    """The routes of the events process (comfyq events, docs/events.md), which the API's document leaves out."""
    return [(method, re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path)) + "$"))
            for method, path, _ in EVENTS_ROUTES]


def n8n_webhooks() -> set[str]:
    paths = set()
    for export in (PROJECT_ROOT / "n8n-workflows").glob("*.json"):
        for node in json.loads(export.read_text()).get("nodes", []):
            if node.get("type") == "n8n-nodes-base.webhook":
                paths.add(str(node["parameters"].get("path", "")))
    return paths


def check_curl(args: list[str], command: Command) -> None:
    urls = [a for a in args if re.match(r"^(https?://)?[\w.-]+:\d+/", a) or a.startswith("<")]
    if not urls:
        return  # a flag named in prose (`curl -C -`)
    method = "GET"
    for flag, value in itertools.pairwise(args):
        if flag in ("-X", "--request"):
            method = value.upper()
    if "-d" in args or "--data" in args:
        method = "POST" if method == "GET" else method
    url = re.sub(r"^https?://", "", urls[0])
    host, _, path = url.partition("/")
    path = "/" + path.split("?")[0]
    if host.endswith(":5678"):
        webhook = path.removeprefix("/webhook/")
        assert webhook in n8n_webhooks(), f"{command}: no n8n workflow serves /webhook/{webhook}"
        return
    if path == "/system_stats":  # ComfyUI's own endpoint, to check a worker's ComfyUI by hand
        return
    assert any(m == method and pattern.match(path) for m, pattern in openapi_routes() + events_routes()), (
        f"{command}: neither the API nor the events process has {method} {path}")


def check_docker(args: list[str], command: Command) -> None:
    if args[:2] == ["buildx", "imagetools"]:  # reads an image's digest from its registry
        return
    assert args[:1] == ["compose"], f"{command}: only `docker compose` (and imagetools) is documented"
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    services = set(compose["services"])
    profiles = {p for s in compose["services"].values() for p in s.get("profiles", [])}
    rest = args[1:]
    while rest and rest[0] == "--profile":
        assert rest[1] in profiles, f"{command}: no profile {rest[1]}"
        rest = rest[2:]
    verb, rest = rest[0], rest[1:]
    assert verb in {"up", "logs", "exec", "run", "stop", "restart", "ps", "config", "down", "pull", "build"}, (
        f"{command}: docker compose {verb}?")
    if verb == "exec":  # docker compose exec SERVICE COMMAND...: the command runs in that service's image
        service, inner = rest[0], rest[1:]
        assert service in services, f"{command}: no service {service}"
        if inner and inner[0] == "comfyq":
            check_comfyq(inner[1:], command)
        return
    named = [w for w in rest if not w.startswith("-") and not re.fullmatch(r"\d+", w)]
    for flag, value in itertools.pairwise(rest):
        if flag in ("--scale", "-e", "--tail"):
            with contextlib.suppress(ValueError):
                named.remove(value)
            if flag == "--scale":
                assert value.split("=")[0] in services, f"{command}: no service {value}"
    for word in named:
        assert word in services, f"{command}: no service {word}"


def check(command: Command) -> None:
    substituted = re.fullmatch(r"[A-Z][A-Z0-9_]*=\$\((.*)\)", command.text)
    if substituted:  # VAR=$(command): check the command
        check(Command(command.doc, command.line, substituted.group(1)))
        return
    words = check_assignments(words_of(command), command)
    if not words:
        return
    program, args = words[0], words[1:]
    program = re.sub(r"^\.(bench-)?venv/bin/", "", program)
    if program == "comfyq":
        check_comfyq(args, command)
    elif program == "comfyui-standin":
        from comfyq.standin.server import parse_args  # noqa: PLC0415

        parse_args(args)
    elif program == "make":
        for target in args:
            if re.fullmatch(r"[A-Z][A-Z0-9_]*=\S*", target):  # a make variable (FORCE=1)
                name = target.split("=", 1)[0]
                assert f"$({name})" in (PROJECT_ROOT / "Makefile").read_text(), f"{command}: make ignores {name}"
                continue
            assert target in makefile_targets() or target == "&", f"{command}: no make target {target}"
    elif program in ("python", "python3"):
        check_python(args, command)
    elif program == "gunicorn":
        config = args[args.index("-c") + 1]
        assert (PROJECT_ROOT / config).is_file(), f"{command}: no {config}"
    elif program == "curl":
        check_curl(args, command)
    elif program == "docker":
        check_docker(args, command)
    elif program == "promtool":
        assert (PROJECT_ROOT / args[-1]).is_file(), f"{command}: no {args[-1]}"
    elif program in EXTERNAL:
        for arg in args:
            if re.fullmatch(r"[\w.-]+/[\w./-]+", arg) and not arg.startswith("comfyq"):
                if arg in WRITTEN_AT_RUN_TIME:
                    writer = PROJECT_ROOT / WRITTEN_AT_RUN_TIME[arg]
                    assert Path(arg).name in writer.read_text(), f"{command}: {writer} no longer writes {arg}"
                    continue
                assert (PROJECT_ROOT / arg).exists() or "*" in arg, f"{command}: no {arg}"
    else:
        raise AssertionError(f"{command}: no check knows the program {program!r} (add one)")


def test_the_docs_show_commands() -> None:
    assert len(ALL) > 80  # the extraction itself works: the docs hold well over 80 commands
    assert {c.doc for c in ALL} >= {"README.md", "operations.md", "deployment.md", "api.md", "n8n.md"}


@pytest.mark.parametrize("command", ALL, ids=str)
def test_each_documented_command_is_valid(command: Command) -> None:
    check(command)


@pytest.mark.parametrize("bad", [
    "comfyq tokens create", "make no-such-target", "python -m comfyq.nothing", "curl localhost:8000/nope",
    "docker compose logs nosuchservice", "COMFYQ_NO_SUCH_SETTING=1 comfyq status", "rm -rf /",
])
def test_the_check_refuses_a_wrong_command(bad: str) -> None:
    with pytest.raises(AssertionError):
        check(Command("example.md", 1, bad))


def test_parsers_used_here_are_the_real_ones() -> None:
    assert isinstance(build_parser(), argparse.ArgumentParser)
