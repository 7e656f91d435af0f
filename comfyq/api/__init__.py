"""webhook-api: the HTTP front door that validates and writes jobs and reports their status (create_app in
comfyq.api.app)."""
