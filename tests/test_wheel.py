"""The installed package stands on its own: a wheel built from the checkout, installed into a new virtualenv, runs
`comfyq migrate`, `comfyq token create` and `comfyq api` from a directory that is not the checkout, against a
fresh database. Migrations, queries, templates and the gunicorn config come from inside the package.
The wheel and its virtualenv: tests/support/wheel_venv.py."""

from __future__ import annotations

import os
import re
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from comfyq.processes import ManagedProcess
from comfyq.settings import PROJECT_ROOT
from tests.conftest import scratch_database
from tests.e2e_support import free_port, wait_until

pytestmark = pytest.mark.slow


def test_the_wheel_carries_the_sql_the_templates_and_the_gunicorn_config(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "comfyq_sql/migrations/0001_initial.sql" in names and "comfyq_sql/queries/jobs.sql" in names
    assert any(re.fullmatch(r"comfyq_workflows/txt2img/.*\.json", n) for n in names)
    assert "comfyq/api/gunicorn_conf.py" in names
    # The web console: its code, templates and assets (a package missing from pyproject's list stops the API).
    assert {"comfyq/api/console/views.py", "comfyq/api/console/templates/job.html",
            "comfyq/api/console/static/console.js", "comfyq/api/console/static/console.css"} <= set(names)


@pytest.fixture
def elsewhere(tmp_path: Path, server_url: str, template_db: str) -> Iterator[tuple[Path, dict[str, str]]]:
    """A working directory outside the checkout and the environment of an operator there (a fresh database)."""
    with scratch_database(server_url) as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYQ_") and k != "PYTHONPATH"}
        env.update(DATABASE_URL=url, PYTHONUNBUFFERED="1")
        yield tmp_path, env


def test_operator_commands_work_from_any_directory(installed: Path, elsewhere: tuple[Path, dict[str, str]]) -> None:
    cwd, env = elsewhere

    def comfyq(*args: str) -> str:
        done = subprocess.run([str(installed / "comfyq"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    where = subprocess.run([str(installed / "python"), "-c", "import comfyq, comfyq_sql; print(comfyq.__file__, "
                            "comfyq_sql.__file__)"], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    assert str(PROJECT_ROOT) not in where.stdout  # the wheel's copy, not the checkout
    comfyq("migrate")
    secret = comfyq("token", "create", "--database", "--tenant", "default", "--role", "admin").strip()
    assert secret and "\n" not in secret
    port = free_port()
    api = ManagedProcess("api-from-wheel", [str(installed / "comfyq"), "api", "--bind", f"127.0.0.1:{port}"],
                         env=env, log_path=cwd / "api.log", cwd=cwd)
    try:
        api.start(r"Listening at: http://", timeout=60)
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200, 30,
                   "/readyz from the installed API")
        answer = requests.post(f"http://127.0.0.1:{port}/jobs", timeout=10,
                               headers={"Authorization": f"Bearer {secret}"},
                               json={"workflow": "txt2img", "params": {"prompt": "a lighthouse"}})
        assert answer.status_code == 202, answer.text  # the template shipped in the wheel
    finally:
        api.stop(timeout=15)
    assert not (cwd / "sql").exists() and not list(cwd.glob("var/pg*"))  # nothing started or read from here
