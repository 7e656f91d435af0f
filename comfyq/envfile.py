"""`comfyq init`: writes the compose stack's .env from .env.example with a fresh random value for every secret
still empty or a placeholder, so `docker compose up -d` starts on the first try. Standard library only, so
`python3 -m comfyq.envfile` works in a checkout before anything is installed. Values already set are kept: it can
run again after a new .env.example adds keys."""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import sys
from collections.abc import Callable
from pathlib import Path

PLACEHOLDER = re.compile(r"^(change-me.*)?$")
LINE = re.compile(r"^(?P<key>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")


def _password() -> str:
    return secrets.token_urlsafe(24)


def _api_token() -> str:
    return "cq_" + secrets.token_urlsafe(32)  # the format of comfyq.tokens.generate(); stored hashed by migrate


def _webhook_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


# The secrets of the stack and how each is made. Keys not listed here are settings with defaults: left alone.
GENERATED: dict[str, Callable[[], str]] = {
    "POSTGRES_PASSWORD": _password,
    "COMFYQ_API_TOKEN": _api_token,
    "COMFYQ_METRICS_TOKEN": lambda: secrets.token_urlsafe(32),
    "COMFYQ_EVENTS_STREAM_SECRET": lambda: secrets.token_urlsafe(48),
    "MINIO_ROOT_PASSWORD": _password,
    "COMFYQ_CALLBACK_SECRET": _webhook_secret,
    "GRAFANA_ADMIN_PASSWORD": _password,
    "GRAFANA_DB_PASSWORD": _password,
    "N8N_ENCRYPTION_KEY": lambda: secrets.token_hex(32),
    "COMFYQ_N8N_WEBHOOK_KEY": _password,
    "COMFYQ_N8N_OWNER_PASSWORD": _password,
    "COMFYQ_N8N_API_TOKEN": _api_token,
    "COMFYQ_N8N_ADMIN_TOKEN": _api_token,
}


def render(example: str, existing: dict[str, str]) -> tuple[str, list[str]]:
    """The example's lines with existing values kept and missing secrets generated; also the keys generated."""
    lines, generated = [], []
    for line in example.splitlines():
        match = LINE.match(line)
        if match is None:
            lines.append(line)
            continue
        key, value = match["key"], existing.get(match["key"], match["value"])
        if key in GENERATED and PLACEHOLDER.match(value):
            value = GENERATED[key]()
            generated.append(key)
        lines.append(f"{key}={value}")
    kept = [f"{key}={value}" for key, value in existing.items() if key not in {
        m["key"] for m in (LINE.match(line) for line in example.splitlines()) if m}]
    if kept:
        lines += ["", "# Set by hand (not in .env.example):", *kept]
    return "\n".join(lines) + "\n", generated


def read_env(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            match = LINE.match(line)
            if match:
                values[match["key"]] = match["value"]
    return values


def init_env(env_file: Path, example: Path) -> list[str]:
    """Write env_file (mode 0600); returns the keys that got new random values."""
    text, generated = render(example.read_text(encoding="utf-8"), read_env(env_file))
    fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file that existed (`cp .env.example .env`) keeps its mode through open(): 0644, say
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    return generated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="comfyq init", description=__doc__)
    parser.add_argument("--env-file", type=Path, default=Path(".env"), help="the file to write (default: ./.env)")
    parser.add_argument("--example", type=Path, default=Path(".env.example"),
                        help="the template (default: ./.env.example, in the checkout's root)")
    args = parser.parse_args(argv)
    if not args.example.is_file():
        parser.error(f"{args.example} not found: run this in the checkout's root, or pass --example")
    generated = init_env(args.env_file, args.example)
    names = ", ".join(generated) if generated else "nothing (every secret was already set)"
    sys.stdout.write(f"wrote {args.env_file}; generated {names}. Keep the file private: it holds the secrets.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
