"""webhook-api: the HTTP front door that validates and writes jobs and reports their status."""

from comfyq_api.app import create_app

__all__ = ["create_app"]
