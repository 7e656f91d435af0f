"""GET /metrics: request counts by endpoint and status added up across gunicorn's worker processes, the
submitted-jobs counter, the multiprocess folder prepared by comfyq/api/gunicorn_conf.py, and the metrics token
(COMFYQ_METRICS_TOKEN) that keeps the scrape to Prometheus."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from comfyq.api.app import create_app
from comfyq.api.metrics import count_submitted, init_metrics
from comfyq.processes import ManagedProcess
from comfyq.settings import Settings
from tests.apps.metrics_app import access_lines, start_metrics_api, worker_pids
from tests.e2e_support import wait_until

TOKEN = "metrics-token-0123456789abcdefghijklmnop"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
METRICS_TOKEN = "scrape-only-0123456789abcdef"
SCRAPE = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [(dict(s.labels), s.value) for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name]


def request_counts(text: str) -> Counter[tuple[str, str]]:
    """{(endpoint, status): requests} from the latency histogram's _count series, summed over methods."""
    counts: Counter[tuple[str, str]] = Counter()
    for labels, value in samples(text, "comfyq_api_http_request_duration_seconds_count"):
        counts[(labels["endpoint"], labels["status"])] += int(value)
    return counts


def test_metrics_with_the_flask_test_client(db_url: str) -> None:
    count_submitted(5)  # outside an app: ignored, never an error
    app = create_app(Settings(database_url=db_url, api_token=TOKEN))
    assert init_metrics(app) is init_metrics(app)  # idempotent: safe once create_app calls it too
    try:
        with app.test_client() as client:
            assert client.get("/jobs/999", headers=AUTH).status_code == 404
            assert client.get("/jobs/999").status_code == 401
            assert client.get("/healthz").status_code == 200
            with app.app_context():
                count_submitted(3)
                count_submitted(0)
            response = client.get("/metrics")  # no COMFYQ_METRICS_TOKEN: open
            assert response.status_code == 200
            text = response.get_data(as_text=True)
    finally:
        services = app.extensions.get("comfyq")
        if services is not None:
            services.db.close()
    assert request_counts(text) == {("jobs.get_job", "404"): 1, ("jobs.get_job", "401"): 1}
    assert samples(text, "comfyq_api_jobs_submitted_total") == [({}, 3.0)]


def test_a_metrics_token_keeps_the_scrape_to_its_holder(db_url: str) -> None:
    app = create_app(Settings(database_url=db_url, api_token=TOKEN, metrics_token=METRICS_TOKEN))
    try:
        client = app.test_client()
        for headers in ({}, AUTH, {"Authorization": f"Bearer {METRICS_TOKEN[:-1]}"},
                        {"Authorization": METRICS_TOKEN}, {"Authorization": f"Basic {METRICS_TOKEN}"}):
            refused = client.get("/metrics", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.headers["WWW-Authenticate"] == 'Bearer realm="comfyq"'
            assert refused.get_json()["error"]["code"] == "unauthorized"
        scraped = client.get("/metrics", headers={"Authorization": f"bearer {METRICS_TOKEN} "})
        assert scraped.status_code == 200
        assert samples(scraped.get_data(as_text=True), "comfyq_queue_scrape_ok") == [({}, 1.0)]
        assert client.get("/jobs/1", headers=SCRAPE).status_code == 401  # it opens /metrics, nothing else
    finally:
        app.extensions["comfyq"].db.close()


def test_the_metrics_token_setting() -> None:
    assert Settings(metrics_token="").metrics_token is None  # empty is unset, as in a .env line `KEY=`
    with pytest.raises(ValidationError, match="metrics_token"):
        Settings(metrics_token="short")  # a typo or a placeholder, not a secret


@pytest.fixture
def api_procs() -> Iterator[list[ManagedProcess]]:
    procs: list[ManagedProcess] = []
    try:
        yield procs
    finally:
        for proc in procs:
            proc.stop(timeout=15)


@pytest.mark.slow
def test_metrics_add_up_across_gunicorn_workers(tmp_path: Path, db_url: str,
                                                api_procs: list[ManagedProcess]) -> None:
    prom_dir = tmp_path / "prometheus"
    prom_dir.mkdir()
    (prom_dir / "counter_4242.db").write_bytes(b"values of a previous run")
    (prom_dir / "keep.txt").write_text("not prometheus_client's")
    proc, api = start_metrics_api(tmp_path / "logs", {"DATABASE_URL": db_url, "COMFYQ_API_TOKEN": TOKEN,
                                                      "COMFYQ_METRICS_TOKEN": METRICS_TOKEN,
                                                      "PROMETHEUS_MULTIPROC_DIR": str(prom_dir)}, workers=2)
    api_procs.append(proc)
    assert not (prom_dir / "counter_4242.db").exists() and (prom_dir / "keep.txt").exists()
    pids = worker_pids(proc)
    assert len(pids) == 2

    plan = [("/healthz", {}), ("/jobs/999", AUTH), ("/jobs/999", AUTH), ("/jobs/999", {}), ("/readyz", {})]
    sent: Counter[tuple[str, str]] = Counter()
    served_by: set[int] = set()

    def call(item: tuple[str, dict[str, str]]) -> tuple[str, int]:
        path, headers = item
        return path, requests.get(api + path, headers=headers, timeout=10).status_code

    def logged_at_least(n: int) -> bool:
        return len(access_lines(proc)) >= n

    total = 0
    with ThreadPoolExecutor(max_workers=8) as pool:
        # Concurrent batches until both workers have answered (sync workers take one request at a time, so
        # the kernel hands the rest to the idle one); bounded, so a broken spread fails instead of looping.
        for _ in range(30):
            for path, status in pool.map(call, plan * 8):
                total += 1
                if path != "/healthz":  # excluded from request metrics
                    sent[({"/jobs/999": "jobs.get_job", "/readyz": "health.readyz"}[path], str(status))] += 1
            wait_until(partial(logged_at_least, total), 10, "the access log of every request")
            served_by = {int(m.group(3)) for m in access_lines(proc)}
            if served_by >= pids:
                break
    assert served_by == pids, f"requests never reached both workers {pids}: {served_by}"
    assert set(sent) == {("jobs.get_job", "404"), ("jobs.get_job", "401"), ("health.readyz", "200")}

    for headers in ({}, AUTH, {"Authorization": "Bearer wrong"}):  # neither none, nor an API token, nor a guess
        refused = requests.get(f"{api}/metrics", headers=headers, timeout=10)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        assert "comfyq_" not in refused.text
    text = requests.get(f"{api}/metrics", headers=SCRAPE, timeout=10).text
    assert request_counts(text) == sent  # every worker's requests, whichever worker answered the scrape
    by_status: Counter[str] = Counter()
    for labels, value in samples(text, "comfyq_api_http_request_total"):
        by_status[labels["status"]] += int(value)
    assert by_status == Counter({"404": sent[("jobs.get_job", "404")], "401": sent[("jobs.get_job", "401")],
                                 "200": sent[("health.readyz", "200")]})
    assert samples(text, "comfyq_api_jobs_submitted_total") == [({}, 0.0)]
    assert {int(path.stem.rsplit("_", 1)[1]) for path in prom_dir.glob("counter_*.db")} == pids  # a file each
    # Neither the scrape nor the refused ones are counted.
    assert request_counts(requests.get(f"{api}/metrics", headers=SCRAPE, timeout=10).text) == sent


@pytest.mark.slow
def test_gunicorn_makes_and_removes_a_metrics_dir_when_none_is_given(
        tmp_path: Path, db_url: str, api_procs: list[ManagedProcess]) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        pytest.skip("PROMETHEUS_MULTIPROC_DIR is set in this environment")
    proc, api = start_metrics_api(tmp_path / "logs", {"DATABASE_URL": db_url, "COMFYQ_API_TOKEN": TOKEN},
                                  workers=1)
    api_procs.append(proc)
    prom_dir = Path(proc.wait_for(r"prometheus multiprocess dir: (\S+)", 10).group(1))
    assert prom_dir.is_dir()
    assert requests.get(f"{api}/jobs/1", headers=AUTH, timeout=10).status_code == 404
    assert request_counts(requests.get(f"{api}/metrics", timeout=10).text) == {("jobs.get_job", "404"): 1}
    assert proc.stop(timeout=15) == 0
    assert not prom_dir.exists()


def test_queue_gauges_come_from_postgres_at_scrape_time(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from comfyq.db import Database  # noqa: PLC0415
    from comfyq.jobs import JobQueue, NewJob  # noqa: PLC0415
    from tests.conftest import SQL_DIR  # noqa: PLC0415

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    db = Database(db_url, SQL_DIR)
    queue = JobQueue(db)
    queue.enqueue_many([NewJob(graph={"1": {"class_type": "X", "inputs": {}}}) for _ in range(3)])
    assert queue.claim("w") is not None
    db.close()
    app = create_app(Settings(database_url=db_url))
    text = app.test_client().get("/metrics").get_data(as_text=True)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("comfyq_queue_jobs", (("status", "queued"),))] == 2
    assert samples[("comfyq_queue_jobs", (("status", "running"),))] == 1
    assert samples[("comfyq_queue_scrape_ok", ())] == 1
    assert samples[("comfyq_queue_longest_wait_seconds", ())] >= 0
    app.extensions["comfyq"].db.close()
