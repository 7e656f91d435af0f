"""The whole slice with real processes: HTTP submit to the API under gunicorn, a worker, the stand-in, and the
status read back over HTTP."""

from __future__ import annotations

import pytest
import requests

from comfyq.stack import start_api
from tests.e2e_support import Stack, wait_until

pytestmark = pytest.mark.slow


def test_prompt_submitted_over_http_comes_back_rendered(stack: Stack) -> None:
    stack.standin()
    token = "e2e-token-0123456789abcdefghijklmnop"
    api_proc, api = start_api(stack.log_dir, {"DATABASE_URL": stack.db_url, "COMFYQ_API_TOKEN": token}, workers=1)
    stack.processes.append(api_proc)
    stack.worker("w1")
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"

    response = session.post(f"{api}/jobs", json={"workflow": "txt2img", "priority": 3, "params": {
        "prompt": "a glass greenhouse in a pine forest", "steps": 4, "width": 64, "height": 64}}, timeout=10)
    assert response.status_code == 202, response.text
    location = api + response.headers["Location"]

    job = wait_until(lambda: (lambda j: j if j["status"] == "succeeded" else None)(
        session.get(location, timeout=10).json()), 60, "the job to succeed")
    assert job["attempts"] == 1 and job["progress"] == 1.0 and job["error"] is None
    assert job["started_at"] and job["finished_at"] and job["created_at"] <= job["started_at"]
    [output] = job["outputs"]
    assert (stack.storage_dir / output["key"]).read_bytes()[:4] == b"\x89PNG"

    bad = session.post(f"{api}/jobs", json={"workflow": "txt2img", "params": {"prompt": "x"}, "priority": 99999},
                       timeout=10)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"
    assert requests.get(location, timeout=10).status_code == 401
