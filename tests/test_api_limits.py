"""What a security review found at the API's door, each checked: bodies measured before they are parsed (size,
values, batch items) and refused with bounded answers, ids beyond a bigint, 405 answers with their Allow header,
and requests the OpenAPI document allows that the code refused."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import requests
from flask.testing import FlaskClient
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder, run_wsgi_app

from comfyq.api.json_shape import JsonShape, ShapeExceeded, ShapeLimits
from comfyq.settings import Settings
from comfyq.stack import start_api
from tests.e2e_support import Stack
from tests.support.api_app import api_app
from tests.test_api import count_jobs

TOKEN = "limits-token-0123456789abcdefghijklmnop"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JOB = {"workflow": "txt2img", "params": {"prompt": "a fox"}}
GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
MIB = 1_048_576


@pytest.fixture
def client(db_url: str) -> Iterator[FlaskClient]:
    with api_app(database_url=db_url, api_token=TOKEN, max_body_bytes=64 * 1024, max_batch_jobs=600,
                 max_batch_body_bytes=1 * MIB) as app:
        yield app.test_client()


class ServerBody:
    """A request body as gunicorn hands a chunked one over: it ends by itself, and has read() but no readinto()."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._data.read(size)


def raw_post(client: FlaskClient, path: str, stream: Any, length: int | None = None) -> Any:
    """A POST whose body stream is handed over as a server would: with a Content-Length, or without one
    (Transfer-Encoding: chunked, the stream ending by itself). The test client would measure the stream."""
    environ = EnvironBuilder(path=path, method="POST", headers={**AUTH, "Content-Type": "application/json"}
                             ).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    if length is None:
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    else:
        environ["CONTENT_LENGTH"] = str(length)
    environ.update({"wsgi.input": stream, "wsgi.input_terminated": True})
    app_iter, status, headers = run_wsgi_app(client.application, environ, buffered=True)
    return client.application.response_class(app_iter, status, headers)


def chunked(client: FlaskClient, path: str, data: bytes) -> Any:
    return raw_post(client, path, ServerBody(data))


def error(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = response.get_json()["error"]
    return body


# Batches: counted before they are validated ----------------------------------------------------------------
def test_a_batch_of_non_objects_over_the_item_limit_is_413_before_any_item_is_validated(
        client: FlaskClient, sql: Any) -> None:
    """2M integers answered 2.67 GB and 172 MB of errors: now the count is checked first."""
    response = client.post("/jobs/batch", json={"jobs": list(range(601))}, headers=AUTH)
    assert response.status_code == 413 and error(response)["code"] == "batch_too_large"
    assert error(response)["details"] == {"jobs": 601, "limit": 600}  # short enough to be counted whole
    assert len(response.get_data()) < 1000
    assert count_jobs(sql) == 0


def test_invalid_batch_items_are_listed_up_to_100_with_their_count(client: FlaskClient, sql: Any) -> None:
    bad = {"workflow": "nope"}
    response = client.post("/jobs/batch", json={"jobs": [JOB, *[bad] * 150, JOB]}, headers=AUTH)
    assert response.status_code == 422, response.get_data(as_text=True)[:300]
    details = error(response)["details"]
    assert len(details["items"]) == 100 and details["invalid"] == 150
    assert [item["index"] for item in details["items"]] == list(range(1, 101))
    assert error(response)["message"] == "150 item(s) are invalid (the first 100 are listed); nothing was written"
    non_objects = client.post("/jobs/batch", json={"jobs": [JOB, *range(500)]}, headers=AUTH)
    assert non_objects.status_code == 422 and error(non_objects)["code"] == "validation_error"
    assert len(error(non_objects)["details"]) == 101
    assert error(non_objects)["details"][-1]["problem"] == "400 more problems are not listed"
    assert count_jobs(sql) == 0


def test_validation_errors_are_capped(client: FlaskClient) -> None:
    """Every unknown key was its own error: a body of many keys answered as many error objects."""
    body = {**JOB, **{f"x{i}": 1 for i in range(2000)}}
    response = client.post("/jobs", json=body, headers=AUTH)
    assert response.status_code == 422 and error(response)["code"] == "validation_error"
    details = error(response)["details"]
    assert len(details) == 101 and details[-1] == {"field": "(body)", "type": "too_many_errors",
                                                   "problem": "1900 more problems are not listed"}
    assert all(item["type"] == "extra_forbidden" for item in details[:100])


def test_bodies_packed_with_tiny_values_are_refused_before_they_are_parsed(client: FlaskClient) -> None:
    """A value per 8 bytes of the limit: `{}` and `1` cost 30 times their size once parsed."""
    packed = b'{"jobs": [{"graph": {"1": {"class_type": "X", "inputs": {"a": [' + b"1," * 200_000 + b"1]}}}}]}"
    response = client.post("/jobs/batch", data=packed, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 413 and error(response)["code"] == "request_entity_too_large"
    assert error(response)["details"] == {"max_values": 1 * MIB // 8}
    single = b'{"workflow": "txt2img", "params": {"prompt": [' + b",".join([b"0"] * 9000) + b"]}}"
    response = client.post("/jobs", data=single, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 413 and error(response)["details"] == {"max_values": 64 * 1024 // 8}


# Chunked bodies ---------------------------------------------------------------------------------------------
def test_a_chunked_body_over_the_limit_is_413_not_invalid_json(client: FlaskClient, sql: Any) -> None:
    over = b'{"workflow": "txt2img", "params": {"prompt": "' + b"a" * (64 * 1024) + b'"}}'
    response = chunked(client, "/jobs", over)
    assert response.status_code == 413 and error(response)["code"] == "request_entity_too_large"
    batch_over = b'{"jobs": [' + b" " * MIB + b"]}"
    assert chunked(client, "/jobs/batch", batch_over).status_code == 413
    assert chunked(client, "/jobs", b'{"workflow": "txt2img", "params": {"prompt": "x"}}').status_code == 202
    assert count_jobs(sql) == 1


def test_a_body_of_exactly_the_limit_is_read_and_judged(client: FlaskClient, sql: Any) -> None:
    """gunicorn ends every body itself: a read past a Content-Length of exactly the limit must not count as more."""
    at_limit = b'{"workflow": "txt2img", "params": {"prompt": "' + b"a" * (64 * 1024 - 49) + b'"}}'
    assert len(at_limit) == 64 * 1024
    for length in (len(at_limit), None):
        response = raw_post(client, "/jobs", ServerBody(at_limit), length)
        assert response.status_code == 422 and error(response)["code"] == "invalid_params"  # the prompt's length
    assert count_jobs(sql) == 0


def test_a_body_over_its_content_length_limit_is_refused_unread(client: FlaskClient) -> None:
    class Unreadable:
        def read(self, _: int = -1) -> bytes:
            raise AssertionError("the body was read")

    response = raw_post(client, "/jobs", Unreadable(), 64 * 1024 + 1)
    assert response.status_code == 413 and error(response)["code"] == "request_entity_too_large"


# Ids --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path, method", [("/jobs/{}", "GET"), ("/jobs/{}/cancel", "POST"), ("/jobs/{}/retry", "POST"),
                                          ("/jobs/{}/outputs/0", "GET"), ("/jobs/1/outputs/{}", "GET")])
@pytest.mark.parametrize("job_id", [2**63, 2**64 + 5, 10**30, -1, 0])
def test_ids_beyond_a_bigint_or_below_one_are_404(client: FlaskClient, path: str, method: str, job_id: int) -> None:
    response = client.open(path.format(job_id), method=method, headers=AUTH)
    assert response.status_code == 404, response.get_data(as_text=True)
    assert error(response)["code"] == "not_found"


def test_the_largest_bigint_is_an_ordinary_unknown_job(client: FlaskClient) -> None:
    response = client.get(f"/jobs/{2**63 - 1}", headers=AUTH)
    assert response.status_code == 404 and error(response)["code"] == "not_found"


# 405 --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, path, allowed", [("DELETE", "/jobs", {"GET", "POST"}),
                                                   ("PUT", "/jobs/1", {"GET"}),
                                                   ("GET", "/jobs/batch", {"POST"})])
def test_405_answers_keep_their_allow_header(client: FlaskClient, method: str, path: str, allowed: set[str]) -> None:
    response = client.open(path, method=method, headers=AUTH)
    assert response.status_code == 405 and error(response)["code"] == "method_not_allowed"
    assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}
    assert response.mimetype == "application/json"


# What the document allows ----------------------------------------------------------------------------------
def test_an_empty_cursor_is_the_first_page(client: FlaskClient) -> None:
    client.post("/jobs", json=JOB, headers=AUTH)
    response = client.get("/jobs?cursor=", headers=AUTH)
    assert response.status_code == 200 and len(response.get_json()["jobs"]) == 1


def test_graph_node_ids_may_not_be_empty(client: FlaskClient) -> None:
    response = client.post("/jobs", json={"graph": {"": {"class_type": "X"}}}, headers=AUTH)
    assert response.status_code == 422 and error(response)["code"] == "invalid_graph"
    assert error(response)["details"] == {"": "has an empty node id"}


# The scanner ------------------------------------------------------------------------------------------------
def shape(body: bytes, chunk: int, **limits: Any) -> JsonShape:
    scanner = JsonShape(ShapeLimits(**{"max_values": 10**9, "max_list_items": 10**9, **limits}))
    for start in range(0, len(body), chunk):
        scanner.feed(body[start:start + chunk])
    return scanner


def outside_strings(body: bytes) -> bytes:
    """The body's bytes that are not inside a string, one character at a time (the slow, obvious way)."""
    out, in_string, escaped = bytearray(), False, False
    for byte in body:
        if in_string:
            in_string = escaped or byte != ord('"')
            escaped = not escaped and byte == ord("\\")
        elif byte == ord('"'):
            in_string = True
        else:
            out.append(byte)
    return bytes(out)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 10**6])
def test_the_scanner_counts_the_same_however_the_body_is_cut(chunk: int) -> None:
    body = (b'{"jobs": [{"graph": {"1": {"class_type": "a\\"b,[{", "inputs": {"x": ["1", 0], "y": "\\\\"}}}},'
            b' {"workflow": "t", "params": {"p": "]]]},,,\\\\\\""}}, 3, [], {}], "other": [1, 2]}')
    plain = outside_strings(body)
    assert plain.count(b",") < body.count(b",")  # the strings do hide brackets and commas
    scanner = shape(body, chunk)
    assert scanner.values == 1 + plain.count(b"{") + plain.count(b"[") + plain.count(b",")
    if chunk < 16:  # the lists span chunks, so they are counted (within one chunk the caller counts them)
        assert scanner.depth == 0 and scanner.list_items == 1  # the last list under the top level: "other"
        with pytest.raises(ShapeExceeded) as refused:
            shape(body, chunk, max_list_items=4)  # the five jobs
        assert refused.value.limit == "list_items"
    assert shape(body, chunk, max_list_items=5).values == scanner.values
    with pytest.raises(ShapeExceeded):
        shape(body, chunk, max_values=scanner.values - 1)
    assert shape(body, chunk, max_values=scanner.values).values == scanner.values


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(st.sampled_from('a"\\,[]{}\u00e9'), max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(st.sampled_from('k"\\,[{'), max_size=3),
                                                              inner, max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(value=JSON_VALUES, cuts=st.lists(st.integers(1, 9), min_size=1, max_size=40))
def test_the_scanner_agrees_with_a_plain_count_on_any_json(value: Any, cuts: list[int]) -> None:
    body = json.dumps({"jobs": value}, ensure_ascii=False).encode()
    plain = outside_strings(body)
    scanner = JsonShape(ShapeLimits(max_values=10**9, max_list_items=10**9))
    start, index = 0, 0
    while start < len(body):
        size = cuts[index % len(cuts)]
        scanner.feed(body[start:start + size])
        start, index = start + size, index + 1
    assert scanner.values == 1 + plain.count(b"{") + plain.count(b"[") + plain.count(b",")


def test_the_scanner_stops_at_the_item_limit_early() -> None:
    body = b'{"jobs": [' + b",".join([b"{}"] * 1_000_000) + b"]}"
    scanner = JsonShape(ShapeLimits(max_values=10**9, max_list_items=10_000))
    fed = 0
    with pytest.raises(ShapeExceeded):
        for fed in range(0, len(body), 65536):
            scanner.feed(body[fed:fed + 65536])
    assert fed < 100_000


# Under gunicorn: time and memory of one worker ------------------------------------------------------------
class RssPeak:
    """The highest resident set size of a process while the block runs, sampled every few milliseconds."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.002)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


@pytest.mark.slow
def test_a_64_mib_batch_of_small_items_costs_a_worker_little(stack: Stack, record_figure: Any) -> None:
    proc, api = start_api(stack.log_dir, {"DATABASE_URL": stack.db_url, "COMFYQ_API_TOKEN": TOKEN}, workers=1)
    stack.processes.append(proc)
    [worker] = psutil.Process(proc.pid).children()
    session = requests.Session()
    session.headers.update({**AUTH, "Content-Type": "application/json"})
    assert session.post(f"{api}/jobs/batch", json={"jobs": [JOB]}, timeout=30).status_code == 202  # warm

    limit = Settings().max_batch_body_bytes
    bodies = {  # the review's two bodies, then 64 MiB of {} items and of integers in one job's graph
        "2M integers (3.8 MiB)": b'{"jobs": [' + b"1," * 1_999_999 + b"1]}",
        "5M {} (14 MiB)": b'{"jobs": [' + b"{}," * 4_999_999 + b"{}]}",
        "64 MiB of {}": b'{"jobs": [' + b"{}," * ((limit - 14) // 3) + b"{}]}",
        "64 MiB of integers in a graph": b'{"jobs": [{"graph": {"1": {"inputs": {"a": ['
                                         + b"1," * ((limit - 60) // 2) + b"1]}}}}]}"}
    for name, body in bodies.items():
        assert len(body) <= limit
        before = worker.memory_info().rss
        with RssPeak(worker.pid) as rss:
            started = time.monotonic()
            response = session.post(f"{api}/jobs/batch", data=body, timeout=60)
            seconds = time.monotonic() - started
        growth = (rss.peak - before) / MIB
        record_figure(f"POST /jobs/batch, {name}: answer, worker RSS growth",
                      f"{response.status_code} {response.json()['error']['code']} in {seconds:.2f} s, "
                      f"+{growth:.1f} MiB")
        assert response.status_code == 413, response.text[:300]
        assert seconds < 1.0 and growth < 50, (seconds, growth)
        assert len(response.content) < 1000

    def chunks() -> Iterator[bytes]:  # no Content-Length: 1 KiB more than the limit, sent in 1 MiB pieces
        yield b'{"jobs": ['
        for _ in range(limit // MIB):
            yield b" " * MIB
        yield b" " * 1024 + b"]}"

    started = time.monotonic()
    chunked_over = session.post(f"{api}/jobs/batch", data=chunks(), timeout=60)
    record_figure("POST /jobs/batch, chunked, 1 KiB over 64 MiB: answer",
                  f"{chunked_over.status_code} in {time.monotonic() - started:.2f} s")
    assert chunked_over.status_code == 413 and chunked_over.json()["error"]["code"] == "request_entity_too_large"
