"""The web console: server-rendered pages under /ui/ for people (sign in with an API token, submit a template job,
watch it live, list, cancel and retry), on the API's own code paths. Not API operations: the OpenAPI document
leaves them out, and they need a console session, never a bearer token."""

from __future__ import annotations

from flask import Flask, redirect, url_for
from werkzeug.wrappers import Response

from comfyq.api.console.session import ConsoleSessionInterface, console_secret
from comfyq.api.console.views import bp
from comfyq.settings import Settings

ENDPOINT_PREFIX = "console."  # every console route's endpoint, / included; tests/test_openapi.py leaves them out


def init_console(app: Flask, settings: Settings) -> None:
    """Mount the console at /ui/ and redirect / to it. Without a secret every worker would sign cookies with a
    key of its own, so the pages then only say how to turn the console on (views.before_request)."""
    app.secret_key = console_secret(settings)
    app.session_interface = ConsoleSessionInterface()
    app.config.update(SESSION_COOKIE_NAME="comfyq_console", SESSION_COOKIE_PATH="/ui/",
                      SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict")
    app.register_blueprint(bp)

    def root() -> Response:
        return redirect(url_for("console.home"))

    app.add_url_rule("/", endpoint=f"{ENDPOINT_PREFIX}root", view_func=root)
