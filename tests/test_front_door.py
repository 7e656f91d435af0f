"""The front door: nginx in front of the API's gunicorn (deploy/nginx/comfyq.conf.template, service `nginx` in
docker-compose.yml). gunicorn's sync workers serve one connection each, so clients that send their request slowly
pin every worker and the API stops answering; nginx reads whole requests before gunicorn sees them.

The real API (comfyq.stack.start_api) runs behind a real nginx (Debian's package, `make system-tools`) that loads
the very template compose mounts, with only its listen port and upstream address replaced, on ports chosen at run
time. The static half checks that compose publishes the API through nginx only and that nginx's limits are the
API's."""

from __future__ import annotations

import contextlib
import grp
import http.client
import json
import os
import pwd
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from comfyq.api import gunicorn_conf
from comfyq.db import Database
from comfyq.jobs import JobQueue, NewJob
from comfyq.processes import ManagedProcess, ProcessFailed
from comfyq.settings import PROJECT_ROOT, Settings
from comfyq.stack import start_api
from comfyq.storage import LocalStorage
from tests.e2e_support import free_port, wait_until
from tests.support.events_client import SseReader, WsReader, start_events

TEMPLATE = PROJECT_ROOT / "deploy" / "nginx" / "comfyq.conf.template"
# Where docker-compose.yml mounts the template: the image's entrypoint renders /etc/nginx/templates/*.template
# into /etc/nginx/conf.d/, and default.conf replaces the image's own welcome-page server.
TEMPLATE_MOUNT = "/etc/nginx/templates/default.conf.template"
VARIABLES = {"COMFYQ_NGINX_PORT", "COMFYQ_NGINX_UPSTREAM", "COMFYQ_NGINX_EVENTS_UPSTREAM"}
NO_EVENTS = "127.0.0.1:9"  # the events upstream of tests that do not start the events process: nothing listens
TOKEN = "front-door-test-token-0123456789abcdefghij"
SLOW_CLIENTS = 50
SLOW_BYTE_SECONDS = 2.0  # one header byte per connection this often
HEALTHZ_REQUESTS = 200
HEALTHZ_P99_LIMIT = 0.100
DIRECT_PROBE_TIMEOUT = 3.0


def _directive(name: str) -> str:
    """The value of the first server-level `name value;` in the template."""
    match = re.search(rf"^    {name} ([^;]+);", TEMPLATE.read_text(encoding="utf-8"), re.MULTILINE)
    assert match, f"{TEMPLATE.name} has no server-level {name}"
    return match.group(1)


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)?", value)
    assert match, value
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[match.group(2)]


def render(values: dict[str, str]) -> str:
    """The template as the nginx image's entrypoint renders it (envsubst of the listed variables only)."""
    text = TEMPLATE.read_text(encoding="utf-8")
    assert set(re.findall(r"\$\{(\w+)\}", text)) == set(values) == VARIABLES
    assert not re.search(r"\$COMFYQ_", text), "write the template's variables as ${NAME}"
    for name, value in values.items():
        text = text.replace(f"${{{name}}}", value)
    return text


def main_config(workdir: Path, site: Path) -> str:
    """A stand-in for the nginx image's own /etc/nginx/nginx.conf (worker_processes auto, 1024 connections per
    worker, the site included inside http {}), with every path in the test's folder."""
    user = ""
    if os.geteuid() == 0:  # workers would run as nobody, who may not enter pytest's private folders
        user = f"user {pwd.getpwuid(0).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
    temp_paths = "\n".join(f"    {kind}_temp_path {workdir / kind};"
                           for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""daemon off;
{user}
worker_processes auto;
pid {workdir / "nginx.pid"};
error_log stderr notice;
events {{
    worker_connections 1024;
}}
http {{
    default_type application/octet-stream;
    access_log {workdir / "access.log"};
    sendfile on;
    keepalive_timeout 65;
{temp_paths}
    include {site};
}}
"""


def nginx_binary() -> str:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if binary is None:
        pytest.fail("nginx not found: install Debian's nginx package (make system-tools)", pytrace=False)
    return binary


def start_nginx(workdir: Path, upstream: str, events_upstream: str = NO_EVENTS) -> tuple[ManagedProcess, int]:
    """nginx with the project's template on a free port. nginx cannot bind port 0 and tell, so a port is picked
    first; when something takes it in between, nginx exits and another port is tried."""
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(5):
        started = _start_nginx_once(workdir, upstream, events_upstream, attempt)
        if started is not None:
            return started
    raise ProcessFailed("nginx found no free port in 5 tries")


def _start_nginx_once(workdir: Path, upstream: str, events_upstream: str,
                      attempt: int) -> tuple[ManagedProcess, int] | None:
    """nginx running on a port of its own, or None when that port was taken meanwhile."""
    port = free_port()
    site = workdir / "comfyq.conf"
    site.write_text(render({"COMFYQ_NGINX_PORT": str(port), "COMFYQ_NGINX_UPSTREAM": upstream,
                            "COMFYQ_NGINX_EVENTS_UPSTREAM": events_upstream}))
    config = workdir / "nginx.conf"
    config.write_text(main_config(workdir, site))
    pid_file = workdir / "nginx.pid"
    pid_file.unlink(missing_ok=True)
    proc = ManagedProcess("nginx", [nginx_binary(), "-p", f"{workdir}/", "-c", str(config), "-e", "stderr"],
                          log_path=workdir / f"nginx-{attempt}.log")
    proc.start()
    try:
        # The pid file is written once the listening socket is bound.
        wait_until(lambda: not proc.running() or (pid_file.exists() and pid_file.read_text().strip()),
                   15, "nginx to start")
    except BaseException:
        proc.stop()
        raise
    if proc.running():
        assert int(pid_file.read_text()) == proc.pid
        return proc, port
    proc.stop()
    if not any("Address already in use" in line for line in proc.output()):
        raise ProcessFailed(f"nginx exited: {' | '.join(proc.output()[-5:])}")
    return None


@dataclass
class FrontDoor:
    api: ManagedProcess
    api_port: int
    nginx: ManagedProcess
    port: int
    storage_dir: Path


@pytest.fixture
def front_door(tmp_path: Path, db_url: str) -> Iterator[FrontDoor]:
    """The API (two sync workers, as in a small container) behind nginx; both stopped by PID afterwards."""
    storage_dir = tmp_path / "outputs"
    with contextlib.ExitStack() as stack:
        api, api_url = start_api(tmp_path / "logs", {"DATABASE_URL": db_url, "COMFYQ_API_TOKEN": TOKEN,
                                                     "COMFYQ_STORAGE_DIR": str(storage_dir)}, workers=2)
        stack.callback(api.stop)
        api_address = api_url.removeprefix("http://")
        nginx, port = start_nginx(tmp_path / "nginx", api_address)
        stack.callback(nginx.stop)
        yield FrontDoor(api, int(api_address.rsplit(":", 1)[1]), nginx, port, storage_dir)


# The clients ------------------------------------------------------------------------------------------------------
class SlowClients:
    """`count` connections that each send a request header one byte every `interval` seconds and never finish
    it. A connection the server closes is opened again at once, so the pressure lasts as long as they run."""

    HEADER = b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Slow: "

    def __init__(self, port: int, count: int, interval: float) -> None:
        self.port = port
        self.count = count
        self.interval = interval
        self.sockets: list[socket.socket | None] = [None] * count
        self.sent = [0] * count
        self.reopened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)

    def _open(self, index: int) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        sock.settimeout(1)
        self.sockets[index], self.sent[index] = sock, 0
        self._send_byte(index)

    def _send_byte(self, index: int) -> None:
        sock = self.sockets[index]
        assert sock is not None
        position = self.sent[index]
        sock.send(self.HEADER[position:position + 1] if position < len(self.HEADER) else b"a")
        self.sent[index] += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for index in range(self.count):
                try:
                    self._send_byte(index)
                except OSError:  # the server gave up on this one: open another in its place
                    self._close(index)
                    with contextlib.suppress(OSError):
                        self._open(index)
                        self.reopened += 1

    def _close(self, index: int) -> None:
        sock, self.sockets[index] = self.sockets[index], None
        if sock is not None:
            sock.close()

    def __enter__(self) -> SlowClients:
        try:
            for index in range(self.count):
                self._open(index)
        except BaseException:
            self.close()
            raise
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        for index in range(self.count):
            self._close(index)


def healthz_seconds(port: int, timeout: float) -> float:
    """One GET /healthz on a new connection, as a client that sends its request at once; the timeout when no
    answer comes in time."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (response.status, body)
    except TimeoutError:
        return timeout
    finally:
        conn.close()
    return time.perf_counter() - started


def request(port: int, method: str, path: str, body: bytes | None = None, *,
            content_length: int | None = None, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """One request; with content_length and no body, only the header is sent (a client announcing a body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path)
        conn.putheader("Authorization", f"Bearer {TOKEN}")
        conn.putheader("Content-Type", "application/json")
        length = content_length if content_length is not None else len(body or b"")
        if method == "POST":
            conn.putheader("Content-Length", str(length))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


# Slow clients ------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_slow_header_clients_do_not_block_the_api_behind_nginx(front_door: FrontDoor, record_figure: Any) -> None:
    header_timeout = _seconds(_directive("client_header_timeout"))
    for _ in range(10):  # each gunicorn worker's first request builds its app state (0.4-0.9 s): not measured
        healthz_seconds(front_door.port, timeout=10)
    with SlowClients(front_door.port, SLOW_CLIENTS, SLOW_BYTE_SECONDS) as slow:
        assert all(sock is not None for sock in slow.sockets)
        latencies = []
        for _ in range(HEALTHZ_REQUESTS):
            latencies.append(healthz_seconds(front_door.port, timeout=10))
            time.sleep(0.025)
        # nginx ends each slow header after client_header_timeout; the clients keep coming back meanwhile.
        wait_until(lambda: slow.reopened >= SLOW_CLIENTS, header_timeout + 4 * SLOW_BYTE_SECONDS + 5,
                   "nginx to cut the slow headers")
        reopened = slow.reopened
    through_nginx = p99(latencies)
    record_figure(f"GET /healthz through nginx, {SLOW_CLIENTS} slow-header clients: p99 "
                  f"(of {HEALTHZ_REQUESTS})", f"{through_nginx * 1000:.1f} ms (median "
                  f"{statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms)")
    record_figure("slow-header connections nginx cut after client_header_timeout",
                  f"{reopened} (client_header_timeout {header_timeout:g} s)")

    # The same load on gunicorn directly: the two sync workers each sit on one slow header and the rest queue
    # behind them, so a normal request waits until gunicorn kills the stuck workers (30 s) or the probe gives up.
    with SlowClients(front_door.api_port, SLOW_CLIENTS, SLOW_BYTE_SECONDS):
        time.sleep(1)
        with ThreadPoolExecutor(5) as pool:
            direct = list(pool.map(lambda _: healthz_seconds(front_door.api_port, DIRECT_PROBE_TIMEOUT), range(5)))
    timed_out = sum(seconds >= DIRECT_PROBE_TIMEOUT for seconds in direct)
    record_figure(f"GET /healthz on gunicorn directly, same {SLOW_CLIENTS} slow-header clients",
                  f"median {statistics.median(direct) * 1000:.0f} ms; {timed_out} of {len(direct)} probes gave up "
                  f"after {DIRECT_PROBE_TIMEOUT:g} s")

    assert through_nginx < HEALTHZ_P99_LIMIT, f"p99 {through_nginx * 1000:.1f} ms through nginx"
    assert statistics.median(direct) > max(1.0, 10 * through_nginx), direct


# Bodies and responses ----------------------------------------------------------------------------------------------
def _api_saw(front_door: FrontDoor, request_line: str) -> int:
    """How many requests gunicorn's access log shows with this method and path."""
    return sum(f'"{request_line} HTTP/1.1"' in line for line in front_door.api.output())


@pytest.mark.slow
def test_bodies_over_the_api_limits_stop_at_nginx(front_door: FrontDoor) -> None:
    settings = Settings.model_fields
    single = int(settings["max_body_bytes"].default)
    batch = int(settings["max_batch_body_bytes"].default)

    for path, limit in (("/jobs", single), ("/jobs/batch", batch)):
        status, headers, body = request(front_door.port, "POST", path, content_length=limit + 1)
        assert status == 413, body
        assert headers["Content-Type"].startswith("application/json")
        assert json.loads(body)["error"]["code"] == "request_entity_too_large"

    # A body of exactly the limit passes nginx and reaches the API, which reads and judges it.
    at_limit = b'{"workflow": "' + b"a" * (single - 16) + b'"}'
    assert len(at_limit) == single
    status, _, body = request(front_door.port, "POST", "/jobs", at_limit)
    assert status not in (413, 502, 503, 504), body
    assert json.loads(body)["error"]["code"] != "request_entity_too_large"
    # A batch larger than a single job's limit goes through on its own route.
    big_batch = b'{"jobs": []' + b" " * (2 * single) + b"}"
    status, _, body = request(front_door.port, "POST", "/jobs/batch", big_batch)
    assert status not in (413, 502, 503, 504), body

    # gunicorn logged the two that passed, and only those: nginx refused the oversized ones on its own.
    wait_until(lambda: _api_saw(front_door, "POST /jobs") and _api_saw(front_door, "POST /jobs/batch"), 10,
               "gunicorn's access log")
    assert _api_saw(front_door, "POST /jobs") == _api_saw(front_door, "POST /jobs/batch") == 1


@pytest.mark.slow
def test_output_links_point_at_the_front_door_and_large_responses_come_through(
        front_door: FrontDoor, db: Database, queue: JobQueue) -> None:
    """nginx passes the Host the client used (port included), so the API's absolute links lead back through
    nginx; a response larger than nginx's memory buffers is spooled and arrives whole."""
    db.execute("register_worker", {"id": "w1", "host": "h", "pid": 1, "comfyui_url": "http://comfy:8188"})
    job = queue.enqueue(NewJob(graph={"1": {}}))
    claimed = queue.claim("w1")
    assert claimed is not None and claimed.id == job["id"]
    data = os.urandom(3 * 1024 * 1024)
    stored = LocalStorage(front_door.storage_dir).put(f"{job['id']}/1/big.png", data, "image/png")
    assert queue.complete(claimed.lease, [{**stored.to_record(), "node_id": "9", "filename": "big.png"}])

    status, _, body = request(front_door.port, "GET", f"/jobs/{job['id']}")
    assert status == 200, body
    url = json.loads(body)["outputs"][0]["url"]
    assert url == f"http://127.0.0.1:{front_door.port}/jobs/{job['id']}/outputs/0"
    status, headers, body = request(front_door.port, "GET", url.split(str(front_door.port), 1)[1])
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert body == data


@pytest.fixture
def events_door(tmp_path: Path, db_url: str) -> Iterator[int]:
    """The API and the events process behind nginx; the port of nginx. Everything stopped by PID afterwards."""
    with contextlib.ExitStack() as stack:
        api, api_url = start_api(tmp_path / "logs", {"DATABASE_URL": db_url, "COMFYQ_API_TOKEN": TOKEN}, workers=1)
        stack.callback(api.stop)
        events, events_url = start_events(tmp_path / "logs", {
            "DATABASE_URL": db_url, "COMFYQ_API_TOKEN": TOKEN, "COMFYQ_EVENTS_HEARTBEAT_SECONDS": "0.3"})
        stack.callback(events.stop)
        nginx, port = start_nginx(tmp_path / "nginx", api_url.removeprefix("http://"),
                                  events_url.removeprefix("http://"))
        stack.callback(nginx.stop)
        yield port


@pytest.mark.slow
def test_streams_and_waits_go_to_the_events_process_unbuffered(events_door: int, queue: JobQueue) -> None:
    """Through the template's routes: SSE event by event (heartbeats of an idle stream arrive one by one, so
    nothing buffers them), a WebSocket upgrade, GET /jobs/{id} with `wait` held by the events process (202 when
    the wait ends) and without it answered by the API (200), and stream tokens."""
    base = f"http://127.0.0.1:{events_door}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    job_id = queue.enqueue(NewJob(graph={"1": {}}))["id"]
    stream = SseReader(f"{base}/jobs/{job_id}/events", auth, timeout=5)
    try:
        first = next(stream.events())
        assert first.event == "snapshot" and first.data["job"]["id"] == job_id
        started = time.monotonic()
        beats = 0
        while beats < 3:
            message = stream.next()
            assert message is not None
            beats += message.comment == "heartbeat"
        assert time.monotonic() - started < 4
    finally:
        stream.close()
    ws = WsReader(f"{base}/ws/jobs/{job_id}", auth, timeout=5)
    try:
        assert next(ws.events())["event"] == "snapshot"
    finally:
        ws.close()
    status, _, body = request(events_door, "GET", f"/jobs/{job_id}?wait=0.3")
    assert status == 202 and json.loads(body)["status"] == "queued"
    status, _, body = request(events_door, "GET", f"/jobs/{job_id}")
    assert status == 200 and json.loads(body)["status"] == "queued"
    status, _, body = request(events_door, "POST", "/events/token", b"")
    assert status == 200
    token = json.loads(body)["stream_token"]
    tenant_stream = SseReader(f"{base}/events?stream_token={token}", timeout=5)
    try:
        assert tenant_stream.response.status_code == 200
    finally:
        tenant_stream.close()


@pytest.mark.slow
def test_comfyq_watch_reads_the_stream_at_the_api_url_behind_nginx(
        events_door: int, queue: JobQueue, tmp_path: Path) -> None:
    """Only COMFYQ_API_URL set: the watch opens the stream at the front door, and a cancel ends it with 6."""
    job_id = queue.enqueue(NewJob(graph={"1": {}}))["id"]
    out = tmp_path / "watch.out"
    env = {"PATH": "/usr/bin:/bin", "COMFYQ_API_URL": f"http://127.0.0.1:{events_door}", "COMFYQ_API_TOKEN": TOKEN}
    with out.open("w") as stdout:
        watch = subprocess.Popen([sys.executable, "-m", "comfyq.cli", "watch", str(job_id)], env=env, stdout=stdout,
                                 stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: out.read_text(), 20, "the snapshot")
        queue.cancel(job_id, "default")
        assert watch.wait(30) == 6
        assert "(the API's URL)" in (watch.stderr.read() if watch.stderr else "")
        assert "  canceled  canceled" in out.read_text().splitlines()[-1]
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait(10)


@pytest.mark.slow
def test_nginx_answers_in_the_api_error_shape_when_the_api_is_down(front_door: FrontDoor) -> None:
    front_door.api.stop()
    status, headers, body = request(front_door.port, "GET", "/healthz")
    assert status == 503 and headers["Retry-After"] == "5"
    assert json.loads(body)["error"]["code"] == "api_unavailable"


# What compose runs -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text(encoding="utf-8")))


def test_compose_publishes_the_api_only_through_nginx(compose: dict[str, Any]) -> None:
    services = compose["services"]
    api, nginx = services["webhook-api"], services["nginx"]
    assert "ports" not in api, "gunicorn must not be reachable from outside but through nginx"
    env = nginx["environment"]
    assert set(re.findall(r"\$\{(\w+)\}", TEMPLATE.read_text(encoding="utf-8"))) == VARIABLES
    assert all(re.search(env["NGINX_ENVSUBST_FILTER"], name) for name in VARIABLES)
    for own in ("http_host", "remote_addr", "scheme", "comfyq_api", "proxy_add_x_forwarded_for"):
        assert not re.search(env["NGINX_ENVSUBST_FILTER"], own), f"the image would replace nginx's ${own}"
    listen = env["COMFYQ_NGINX_PORT"]
    assert nginx["ports"] == [f"${{COMFYQ_API_PORT:-8000}}:{listen}"]
    assert listen in " ".join(nginx["healthcheck"]["test"])
    dockerfile = (PROJECT_ROOT / "webhook-api" / "Dockerfile").read_text(encoding="utf-8")
    api_port = re.search(r'"--bind", "0\.0\.0\.0:(\d+)"', dockerfile)
    assert api_port and env["COMFYQ_NGINX_UPSTREAM"] == f"webhook-api:{api_port.group(1)}"
    events_bind = re.search(r"0\.0\.0\.0:(\d+)", " ".join(services["events"]["command"]))
    assert events_bind and env["COMFYQ_NGINX_EVENTS_UPSTREAM"] == f"events:{events_bind.group(1)}"
    assert "ports" not in services["events"], "the events process is reached through nginx only"
    assert f"./deploy/nginx/{TEMPLATE.name}:{TEMPLATE_MOUNT}:ro" in nginx["volumes"]
    assert nginx["depends_on"]["webhook-api"]["condition"] == "service_healthy"
    assert re.fullmatch(r"nginx:\d+\.\d+\.\d+-bookworm", nginx["image"])
    for name, service in services.items():
        for published in service.get("ports", []):
            assert not str(published).endswith(":8000"), f"{name} publishes gunicorn's port"


def test_nginx_limits_match_the_api_settings() -> None:
    text = TEMPLATE.read_text(encoding="utf-8")
    settings = Settings.model_fields
    batch_block = re.search(r"location = /jobs/batch \{(.*?)\}", text, re.DOTALL)
    assert batch_block
    mib = 1024 * 1024
    assert int(_directive("client_max_body_size").removesuffix("m")) * mib == settings["max_body_bytes"].default
    batch = re.search(r"client_max_body_size (\d+)m;", batch_block.group(1))
    assert batch and int(batch.group(1)) * mib == settings["max_batch_body_bytes"].default
    # gunicorn's own timeout ends a stuck request before nginx gives up on it.
    assert gunicorn_conf.timeout < _seconds(_directive("proxy_read_timeout"))
    assert _directive("proxy_request_buffering") == "on" and _directive("proxy_buffering") == "on"
