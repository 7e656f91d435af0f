"""GET /openapi.json: the document is valid OpenAPI 3.1, names exactly the routes of the Flask app and of the events
process (each operation marked with the process that serves it) and every error code they raise, the API keeps to
its part under a property-based fuzz run (schemathesis, in process), and what a real events process sends keeps to
the events part."""

from __future__ import annotations

import ast
import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket
from flask import Flask
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from schemathesis.checks import not_a_server_error

from comfyq import tokens
from comfyq.api.app import create_app
from comfyq.api.console import ENDPOINT_PREFIX as CONSOLE_ENDPOINTS
from comfyq.api.openapi import OPERATION_ERRORS, PUBLIC_OPERATIONS, build_document
from comfyq.api.openapi_events import (
    API,
    EVENTS,
    EVENTS_OPERATION_ERRORS,
    MESSAGE_SCHEMA,
    NOT_DOCUMENTED,
    SERVED_BY,
    STREAM_SECURITY,
)
from comfyq.db import Database
from comfyq.events.app import ROUTES as EVENTS_ROUTES
from comfyq.jobs import JobQueue
from comfyq.settings import PROJECT_ROOT, Settings
from comfyq.stack import start_api
from tests.e2e_support import Stack, wait_until
from tests.support.api_app import bearer
from tests.support.events_client import SseReader, WsReader, start_events
from tests.support.openapi_fuzz import (
    CHECKS,
    GRAPH,
    GRAPH_JOB,
    NOT_FUZZED,
    close_app,
    contract,
    flask_schema,
    fuzz,
    header,
    make_app,
    seed_jobs,
    strategies,
)

API_DIR = PROJECT_ROOT / "comfyq" / "api"
EVENTS_APP = PROJECT_ROOT / "comfyq" / "events" / "app.py"


@pytest.fixture
def app(db_url: str, tmp_path: Path) -> Iterator[Flask]:
    application = make_app(db_url, tmp_path)
    yield application
    close_app(application)


def flask_operations(app: Flask) -> set[tuple[str, str]]:
    """(method, OpenAPI-style path) of every route, without the HEAD and OPTIONS that Flask adds."""
    found = set()
    for rule in app.url_map.iter_rules():
        # The web console's HTML pages (/ and /ui/...) are no API operations: left out of the document on purpose.
        if rule.endpoint == "static" or rule.endpoint.startswith(CONSOLE_ENDPOINTS):
            continue
        path = rule.rule
        for argument in rule.arguments:
            path = path.replace(f"<int:{argument}>", f"{{{argument}}}").replace(f"<{argument}>", f"{{{argument}}}")
        found |= {(method.lower(), path) for method in rule.methods or () if method not in ("HEAD", "OPTIONS")}
    return found


def events_operations() -> set[tuple[str, str]]:
    """(method, path) of every route of the events process (comfyq/events/app.py ROUTES) but its own liveness and
    metrics, which are not in the document (through nginx those paths are the API's)."""
    return {(method.lower(), path) for method, path, _ in EVENTS_ROUTES} - NOT_DOCUMENTED


def served_by(document: dict[str, Any], process: str) -> set[tuple[str, str]]:
    return {(method, path) for path, methods in document["paths"].items()
            for method, operation in methods.items() if process in operation[SERVED_BY]}


def raised_errors(sources: list[Path], function: str) -> set[tuple[int, str]]:
    """(status, code) of every `function(status, "code", ...)` written in the sources."""
    found = set()
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == function
                    and len(node.args) >= 2 and all(isinstance(a, ast.Constant) for a in node.args[:2])):
                found.add((node.args[0].value, node.args[1].value))
    return found


def raised_api_errors() -> set[tuple[int, str]]:
    """(status, code) of every `ApiError(status, "code", ...)` written in the route modules."""
    return raised_errors(list(API_DIR.glob("*.py")), "ApiError")


def documented_errors(document: dict[str, Any], operations: set[tuple[str, str]]) -> set[tuple[int, str]]:
    return {(int(status), code) for path, methods in document["paths"].items()
            for method, operation in methods.items() if (method, path) in operations
            for status, response in operation["responses"].items() if int(status) >= 400
            and "allOf" in response.get("content", {}).get("application/json", {}).get("schema", {})
            for code in response["content"]["application/json"]["schema"]["allOf"][1]["properties"]["error"][
                "properties"]["code"]["enum"]}


# The document ---------------------------------------------------------------------------------------------------
def test_the_document_is_valid_openapi_3_1(app: Flask) -> None:
    response = app.test_client().get("/openapi.json")  # no token
    assert response.status_code == 200 and response.mimetype == "application/json"
    document = response.get_json()
    assert document["openapi"] == "3.1.0"
    assert document["jsonSchemaDialect"] == "https://json-schema.org/draft/2020-12/schema"
    validate(document)
    assert "$defs" not in json.dumps(document)  # pydantic's $defs were moved into components
    refs = {ref for ref in _walk_refs(document)}
    assert refs <= {f"#/components/schemas/{name}" for name in document["components"]["schemas"]}


def _walk_refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref":
                yield item
            else:
                yield from _walk_refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk_refs(item)


def test_every_route_is_documented_and_nothing_else(app: Flask) -> None:
    """The operations the Flask app serves are its routes, those the events process serves are its ROUTES; each
    names its process, and the Flask app's part of the document (what the fuzz runs call) is its routes alone."""
    document = build_document(app.config["COMFYQ_SETTINGS"])
    documented = {(method, path) for path, methods in document["paths"].items() for method in methods}
    assert served_by(document, API) == flask_operations(app) == set(OPERATION_ERRORS)
    assert served_by(document, EVENTS) == events_operations() == set(EVENTS_OPERATION_ERRORS)
    assert documented == served_by(document, API) | served_by(document, EVENTS)
    both = served_by(document, API) & served_by(document, EVENTS)
    assert both == {("get", "/jobs/{job_id}"), ("post", "/jobs")}  # the events process with `wait` only
    assert NOT_DOCUMENTED <= flask_operations(app)  # the API's liveness and metrics are documented as its own
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            assert operation[SERVED_BY] in ([API], [EVENTS], [API, EVENTS]), (method, path)
            assert ("events" in operation["tags"]) == (EVENTS in operation[SERVED_BY]), (method, path)
    for method, path in both:
        operation = document["paths"][path][method]
        [wait] = [p for p in operation["parameters"] if p["name"] == "wait"]
        assert wait[SERVED_BY] == [EVENTS] and wait["schema"] == {"type": "number", "minimum": 0}
        assert "202" in operation["responses"]
    flask_only = build_document(app.config["COMFYQ_SETTINGS"], events=False)
    assert {(m, p) for p, methods in flask_only["paths"].items() for m in methods} == flask_operations(app)
    assert not [(m, p) for p, methods in flask_only["paths"].items() for m, operation in methods.items()
                if operation[SERVED_BY] != [API] or "wait" in {q["name"] for q in operation.get("parameters", [])}]
    assert "StreamToken" not in flask_only["components"]["schemas"]


def test_security_is_per_operation(app: Flask) -> None:
    """Public operations are public in the app; the others take the bearer token, and the events process's streams
    a stream token too (in the URL, for EventSource)."""
    document = build_document(app.config["COMFYQ_SETTINGS"])
    streams = set()
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            if (method, path) in PUBLIC_OPERATIONS:
                assert operation["security"] == []
                assert app.test_client().open(path, method=method.upper()).status_code == 200
                continue
            if any(MESSAGE_SCHEMA in answer for answer in operation["responses"].values()):
                streams.add((method, path))
                assert operation["security"] == STREAM_SECURITY
            else:
                assert operation["security"] == [{"bearerAuth": []}]
            assert "401" in operation["responses"] and "503" in operation["responses"]
    assert streams == {(m.lower(), p) for m, p, _ in EVENTS_ROUTES if p.endswith("/events") or p.startswith("/ws/")}
    assert document["components"]["securitySchemes"]["streamToken"]["name"] == "stream_token"


def test_every_error_code_the_routes_raise_is_documented(app: Flask) -> None:
    document = build_document(app.config["COMFYQ_SETTINGS"])
    missing = raised_api_errors() - documented_errors(document, served_by(document, API))
    assert not missing, f"raised but not in openapi.py's OPERATION_ERRORS: {sorted(missing)}"
    raised = raised_errors([EVENTS_APP], "_error")
    assert {(400, "invalid_wait"), (400, "invalid_filter"), (503, "api_unavailable")} <= raised  # the parse works
    missing = raised - documented_errors(document, served_by(document, EVENTS))
    assert not missing, f"raised by the events process but not in openapi_events.py's errors: {sorted(missing)}"


def test_the_examples_match_their_schemas(app: Flask) -> None:
    document = build_document(app.config["COMFYQ_SETTINGS"])
    registry = Registry().with_resource("urn:comfyq", Resource.from_contents(document, DRAFT202012))

    def check(schema: dict[str, Any], example: Any) -> None:
        Draft202012Validator(schema, registry=registry,
                             format_checker=Draft202012Validator.FORMAT_CHECKER).validate(example)

    checked = 0
    for name, schema in document["components"]["schemas"].items():
        for example in schema.get("examples", []):
            check({"$ref": f"urn:comfyq#/components/schemas/{name}"}, example)
            checked += 1
    for methods in document["paths"].values():
        for operation in methods.values():
            content = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            for example in content.get("examples", {}).values():
                schema = {"$ref": "urn:comfyq" + content["schema"]["$ref"]}
                check(schema, example["value"])
                checked += 1
    assert checked >= 12


def test_limits_of_the_settings_are_in_the_document(db_url: str) -> None:
    document = build_document(Settings(database_url=db_url, priority_min=-5, priority_max=5, list_page_max=20))
    priority = document["components"]["schemas"]["JobRequest"]["properties"]["priority"]
    assert (priority["minimum"], priority["maximum"]) == (-5, 5)
    [limit] = [p for p in document["paths"]["/jobs"]["get"]["parameters"] if p["name"] == "limit"]
    assert limit["schema"]["maximum"] == 20


# Fuzzing ------------------------------------------------------------------------------------------------------
@pytest.fixture
def fuzz_headers(db: Database) -> dict[str, str]:
    """An admin token of a tenant that may send raw graphs, so both kinds of submission get through."""
    db.fetch_one("tenant_upsert", {"name": "fuzz", "allow_raw_graphs": True, "max_queued_jobs": None,
                                   "rate_per_second": None, "rate_burst": None})
    return {"Authorization": f"Bearer {tokens.create(db, 'fuzz', 'admin').token}"}


@pytest.fixture
def operator_headers(db: Database) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.create(db, 'ops', 'operator').token}"}


@pytest.fixture
def api_schema(app: Flask, db: Database, fuzz_headers: dict[str, str]) -> Any:
    """The API loaded from its own /openapi.json, with jobs 1..4 in every kind of state to read, cancel, retry."""
    seed_jobs(db, "fuzz")
    return flask_schema(app)


# Read-only routes an admin token only gets 403 from: fuzzed with an operator token, so their answers are checked.
# (tests/test_security_matrix.py fuzzes as every role.)
AS_OPERATOR = {("GET", "/admin/workers"), ("GET", "/admin/tenants"), ("GET", "/admin/tokens")}


def test_the_api_keeps_to_its_document(api_schema: Any, fuzz_headers: dict[str, str],
                                       operator_headers: dict[str, str]) -> None:
    """schemathesis against the WSGI app: valid (positive) and invalid (negative) requests of every operation
    must answer a documented status with a documented content type, headers and body, and never a 5xx.

    The strategies are driven with Hypothesis directly rather than through schemathesis' pytest plugin
    (`from_fixture(...).parametrize()`), whose lazy loader sets `node._nodeid`, which pytest 9.2 no longer has."""
    failures: dict[str, str] = {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    # The Flask app's operations (schemathesis leaves out the document's own route); not the events process's,
    # which the app does not serve.
    assert {(operation.method.lower(), operation.path) for operation in operations} == flask_operations(
        api_schema.app) - {("get", "/openapi.json")}
    for operation in operations:
        if operation.path in NOT_FUZZED:
            continue
        headers = operator_headers if (operation.method.upper(), operation.path) in AS_OPERATOR else fuzz_headers
        for name, (strategy, max_examples) in strategies(operation).items():
            failure = fuzz(strategy, headers, max_examples)
            if failure is not None:
                failures[f"{operation.label} ({name})"] = failure
    assert not failures, "\n\n".join(f"== {label}\n{failure}" for label, failure in failures.items())


def test_documented_answers_by_example(app: Flask, db: Database, fuzz_headers: dict[str, str]) -> None:
    """The answers random requests rarely reach: replays, dedupe twins, conflicts, limits, each checked against
    the document (status, headers such as Location, Retry-After and WWW-Authenticate, body)."""
    call, auth = contract(app), fuzz_headers
    job = {"workflow": "txt2img", "params": {"prompt": "a fox", "seed": 1}, "dedupe": True}
    first = call("POST", "/jobs", 202, auth, body=job)
    assert header(first, "Location") == f"/jobs/{first.json()['id']}"
    keyed = {**auth, "Idempotency-Key": "order-1"}
    assert call("POST", "/jobs", 202, keyed, body=GRAPH_JOB).json()["status"] == "queued"
    assert call("POST", "/jobs", 200, keyed, body=GRAPH_JOB).json().keys() == {"id", "status"}
    call("POST", "/jobs", 409, keyed, body={**GRAPH_JOB, "priority": 1})
    call("POST", "/jobs", 400, {**auth, "Idempotency-Key": "x" * 256}, body=GRAPH_JOB)
    batch = {"jobs": [GRAPH_JOB, GRAPH_JOB]}
    assert call("POST", "/jobs/batch", 202, keyed | {"Idempotency-Key": "b-1"}, body=batch).json()["count"] == 2
    call("POST", "/jobs/batch", 200, keyed | {"Idempotency-Key": "b-1"}, body=batch)
    call("POST", "/jobs/batch", 422, auth, body={"jobs": [{**GRAPH_JOB, "dedupe": True}]})

    queue = JobQueue(db)
    claimed = queue.claim("w")
    assert claimed is not None and claimed.id == first.json()["id"]
    queue.complete(claimed.lease, [{"key": f"{claimed.id}/1/a.png", "size": 3, "content_type": "image/png",
                                    "location": "/var/a.png", "node_id": "9", "filename": "a.png"}])
    twin = call("POST", "/jobs", 200, auth, body=job).json()
    assert twin["deduplicated"] is True
    assert twin["outputs"][0]["url"].endswith(f"/jobs/{twin['id']}/outputs/0")  # local storage: served by the API
    assert twin["outputs"][0]["location"] == f"local:{claimed.id}/1/a.png"  # never a path on a host
    call("GET", "/jobs/{job_id}", 200, auth, path_parameters={"job_id": claimed.id})
    call("POST", "/jobs/{job_id}/cancel", 409, auth, path_parameters={"job_id": claimed.id})
    call("POST", "/jobs/{job_id}/retry", 409, auth, path_parameters={"job_id": claimed.id + 1})
    assert call("POST", "/jobs/{job_id}/cancel", 200, auth, path_parameters={"job_id": claimed.id + 1}).json()[
        "status"] == "canceled"
    call("POST", "/jobs/{job_id}/retry", 200, auth, path_parameters={"job_id": claimed.id + 1})
    call("GET", "/jobs", 200, auth, query={"status": "succeeded", "limit": 1})
    call("GET", "/workflows/{name}", 200, auth, path_parameters={"name": "txt2img"})
    call("GET", "/stats", 200, auth)

    unauthorized = call("GET", "/stats", 401)
    assert header(unauthorized, "WWW-Authenticate") == 'Bearer realm="comfyq"'
    call("POST", "/jobs", 415, auth, body="workflow=txt2img", media_type="text/plain")
    call("POST", "/admin/retention", 403, {"Authorization": f"Bearer {tokens.create(db, 'fuzz', 'submitter').token}"},
         body={"older_than_days": 1})
    db.fetch_one("tenant_upsert", {"name": "tight", "allow_raw_graphs": True, "max_queued_jobs": 0,
                                   "rate_per_second": 0.01, "rate_burst": 1})
    tight = {"Authorization": f"Bearer {tokens.create(db, 'tight', 'submitter').token}"}
    assert call("POST", "/jobs", 429, tight, body=GRAPH_JOB).json()["error"]["code"] == "quota_exceeded"
    limited = call("POST", "/jobs", 429, tight, body=GRAPH_JOB)
    assert limited.json()["error"]["code"] == "rate_limited" and int(header(limited, "Retry-After")) >= 1

    metrics = call("GET", "/metrics", 200)
    assert header(metrics, "Content-Type").startswith("text/plain") and "comfyq_api" in metrics.text


def test_a_refused_scrape_is_a_documented_401(db_url: str, tmp_path: Path) -> None:
    app = create_app(Settings(database_url=db_url, storage_dir=tmp_path / "out",
                              metrics_token="scrape-only-0123456789"))
    refused = contract(app)("GET", "/metrics", 401)
    assert header(refused, "WWW-Authenticate") == 'Bearer realm="comfyq"'
    assert "comfyq" not in app.extensions  # refused before anything opened the database


def test_a_database_outage_is_a_documented_503(tmp_path: Path) -> None:
    app = make_app("postgresql://nobody@127.0.0.1:1/none", tmp_path)
    call = contract(app, [check for check in CHECKS if check is not not_a_server_error])  # 503 is the point
    assert call("GET", "/readyz", 503).json() == {"status": "unavailable"}  # terse: no host, no driver error
    down = call("POST", "/jobs", 503, {"Authorization": "Bearer whatever"}, body=GRAPH_JOB)
    assert down.json()["error"]["code"] == "database_unavailable" and header(down, "Retry-After") == "5"


def test_retention_by_example(app: Flask, fuzz_headers: dict[str, str]) -> None:
    """Excluded from fuzzing (it deletes data): a few calls, checked against the document."""
    call = contract(app)
    assert call("POST", "/admin/retention", 200, fuzz_headers, body={"older_than_days": 30}).json()[
        "jobs_deleted"] == 0
    call("POST", "/admin/retention", 422, fuzz_headers, body={"older_than_days": 0})
    call("POST", "/admin/retention", 422, fuzz_headers, body={})
    # A number, as the document says: never a boolean or a numeric string.
    days = build_document(app.config["COMFYQ_SETTINGS"])["components"]["schemas"]["RetentionRequest"][
        "properties"]["older_than_days"]
    assert days["type"] == "number"
    for wrong in (True, "36500"):
        assert not Draft202012Validator(days).is_valid(wrong)
        call("POST", "/admin/retention", 422, fuzz_headers, body={"older_than_days": wrong})


def test_admin_routes_by_example(app: Flask, db: Database, fuzz_headers: dict[str, str],
                                 operator_headers: dict[str, str]) -> None:
    """Each admin route's answers for an operator, for a tenant's admin and across tenants, checked against the
    document."""
    call, admin, operator = contract(app), fuzz_headers, operator_headers
    db.execute("register_worker", {"id": "w1", "host": "h", "pid": 1, "comfyui_url": "http://c"})
    assert call("GET", "/admin/workers", 200, operator, query={"all": "true"}).json()["workers"][0]["id"] == "w1"
    call("GET", "/admin/workers", 403, admin)
    created = call("POST", "/admin/tokens", 201, admin, body={"role": "submitter", "description": "ci"}).json()
    assert created["tenant"] == "fuzz" and created["token"].startswith(created["token_prefix"])
    call("POST", "/admin/tokens", 403, admin, body={"role": "operator"})
    call("POST", "/admin/tokens", 403, admin, body={"tenant": "ops", "role": "submitter"})
    call("POST", "/admin/tokens", 422, admin, body={"role": "root"})
    call("POST", "/admin/tokens", 201, operator, body={"tenant": "other", "role": "admin"})
    assert len(call("GET", "/admin/tokens", 200, admin).json()["tokens"]) == 2  # fuzz's admin and submitter
    call("GET", "/admin/tokens", 403, admin, query={"tenant": "other"})
    assert len(call("GET", "/admin/tokens", 200, operator, query={"tenant": "other"}).json()["tokens"]) == 1
    call("DELETE", "/admin/tokens/{ref}", 404, admin, path_parameters={"ref": "424242"})
    revoked = call("DELETE", "/admin/tokens/{ref}", 200, admin, path_parameters={"ref": created["token_prefix"]})
    assert revoked.json()["revoked_at"] is not None
    tenant = call("PUT", "/admin/tenants/{name}", 200, operator, path_parameters={"name": "other"},
                  body={"allow_raw_graphs": True, "max_queued_jobs": 5}).json()
    assert tenant["max_queued_jobs"] == 5 and tenant["active_tokens"] == 1
    call("PUT", "/admin/tenants/{name}", 403, admin, path_parameters={"name": "fuzz"}, body={})
    call("PUT", "/admin/tenants/{name}", 422, operator, path_parameters={"name": "other"}, body={"rate_burst": 0})
    assert "other" in {t["name"] for t in call("GET", "/admin/tenants", 200, operator).json()["tenants"]}
    call("GET", "/admin/tenants", 403, admin)
    everyone = call("POST", "/admin/retention", 200, operator, body={"older_than_days": 30}).json()
    assert everyone["scope"] == "all tenants"
    call("POST", "/admin/retention", 403, admin, body={"older_than_days": 30, "tenant": "other"})


def test_callback_secret_routes_by_example(app: Flask, fuzz_headers: dict[str, str],
                                           operator_headers: dict[str, str]) -> None:
    call, admin, operator = contract(app), fuzz_headers, operator_headers
    secrets_path, one = "/admin/tenants/{name}/callback-secrets", "/admin/tenants/{name}/callback-secrets/{secret_id}"
    fuzz = {"name": "fuzz"}
    made = [call("POST", secrets_path, 201, admin, path_parameters=fuzz).json() for _ in range(3)]
    assert made[0]["secret"].startswith(made[0]["secret_prefix"])
    assert call("POST", secrets_path, 409, admin, path_parameters=fuzz).json()["error"]["code"] == \
        "too_many_callback_secrets"
    assert len(call("GET", secrets_path, 200, admin, path_parameters=fuzz).json()["callback_secrets"]) == 3
    retired = call("DELETE", one, 200, admin, path_parameters={**fuzz, "secret_id": made[0]["id"]}).json()
    assert retired["retired_at"] is not None
    call("DELETE", one, 404, admin, path_parameters={**fuzz, "secret_id": made[0]["id"]})
    call("GET", secrets_path, 403, admin, path_parameters={"name": "other"})
    call("POST", secrets_path, 404, operator, path_parameters={"name": "nobody"})
    assert call("GET", secrets_path, 200, operator, path_parameters=fuzz).json()["callback_secrets"][0][
        "retired_at"] is not None


# What the fuzz run found ----------------------------------------------------------------------------------------
# Each of these answered 500 (the database refused the value, or Python could not read it back).
def test_unstorable_strings_are_refused_with_422(app: Flask, fuzz_headers: dict[str, str], sql: Any) -> None:
    client = app.test_client()
    for body in ({"workflow": "txt2img", "params": {"prompt": "a\x00b"}},
                 {**GRAPH_JOB, "callback_url": "https://hooks.example/\x00"},
                 {"graph": {"1\x00": GRAPH["1"]}},
                 {"jobs": [GRAPH_JOB, {"workflow": "txt2img", "params": {"prompt": "\x00"}}]}):
        path = "/jobs/batch" if "jobs" in body else "/jobs"
        response = client.post(path, json=body, headers=fuzz_headers)
        assert response.status_code == 422, response.get_data(as_text=True)
        assert response.get_json()["error"]["details"][0]["type"] == "string_unstorable"
    surrogate = client.post("/jobs", data='{"workflow": "txt2img", "params": {"prompt": "\\ud800"}}',
                            content_type="application/json", headers=fuzz_headers)
    assert surrogate.status_code == 422
    nul_key = client.post("/jobs", json=GRAPH_JOB, headers={**fuzz_headers, "Idempotency-Key": "a\x00"})
    assert nul_key.status_code == 400 and nul_key.get_json()["error"]["code"] == "invalid_idempotency_key"
    assert client.get("/jobs?workflow=a%00", headers=fuzz_headers).status_code == 400
    sql.execute("SELECT count(*) FROM job_queue")
    assert sql.fetchone()[0] == 0


def test_numbers_that_are_not_finite_and_deep_bodies_are_400(app: Flask, fuzz_headers: dict[str, str]) -> None:
    client = app.test_client()
    for data in ('{"workflow": "txt2img", "params": {"prompt": "x", "cfg": NaN}}',
                 '{"graph": {"1": {"class_type": "X", "inputs": {"a": Infinity}}}}',
                 '{"graph": {"1": {"class_type": "X", "inputs": {"a": 1e400}}}}',
                 '{"graph": ' + "[" * 100_000 + "]" * 100_000 + "}",
                 '{"graph": {"1": {"class_type": "X", "inputs": {"a": ' + "[" * 900 + "]" * 900 + "}}}}"):
        response = client.post("/jobs", data=data, content_type="application/json", headers=fuzz_headers)
        assert response.status_code == 400 and response.get_json()["error"]["code"] == "invalid_json", data[:80]


def test_time_zones_and_years_postgres_or_python_cannot_take(app: Flask, fuzz_headers: dict[str, str],
                                                             sql: Any) -> None:
    client = app.test_client()
    far_east = client.post("/jobs", json={**GRAPH_JOB, "deadline": "2030-01-01T12:00:00+23:59"}, headers=fuzz_headers)
    assert far_east.status_code == 202  # stored in UTC
    sql.execute("SELECT deadline = '2029-12-31T12:01:00Z'::timestamptz FROM job_queue")
    assert sql.fetchone()[0] is True
    for deadline in ("0001-01-01T00:00:00+01:00", "9999-12-31T23:00:00-05:00"):
        response = client.post("/jobs", json={**GRAPH_JOB, "deadline": deadline}, headers=fuzz_headers)
        assert response.status_code == 422 and response.get_json()["error"]["details"][0]["field"] == "deadline"
    assert client.get("/jobs", headers=fuzz_headers).status_code == 200  # a year-0 deadline made this a 500
    for since in ("2020-01-01T00:00:00%2B23:00", "2020-01-01t00:00:00z"):
        assert client.get(f"/jobs?since={since}", headers=fuzz_headers).status_code == 200
    assert client.get("/jobs?since=0001-01-01T00:00:00%2B01:00", headers=fuzz_headers).status_code == 400
    beyond = base64.urlsafe_b64encode(f"id:{2**64}".encode()).decode().rstrip("=")
    response = client.get(f"/jobs?cursor={beyond}", headers=fuzz_headers)
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "invalid_cursor"


def test_a_fresh_idempotency_key_does_not_skip_the_quota(app: Flask, db: Database) -> None:
    """Found while documenting the quota: any new Idempotency-Key used to bypass it."""
    db.fetch_one("tenant_upsert", {"name": "small", "allow_raw_graphs": True, "max_queued_jobs": 1,
                                   "rate_per_second": None, "rate_burst": None})
    headers = {"Authorization": f"Bearer {tokens.create(db, 'small', 'submitter').token}"}
    client = app.test_client()
    assert client.post("/jobs", json=GRAPH_JOB, headers={**headers, "Idempotency-Key": "a"}).status_code == 202
    for path, body in (("/jobs", GRAPH_JOB), ("/jobs/batch", {"jobs": [GRAPH_JOB]})):
        over = client.post(path, json=body, headers={**headers, "Idempotency-Key": f"new-{path}"})
        assert over.status_code == 429 and over.get_json()["error"]["code"] == "quota_exceeded"
    # A repeat of the key that created the queued job is answered from it, quota or not.
    assert client.post("/jobs", json=GRAPH_JOB, headers={**headers, "Idempotency-Key": "a"}).status_code == 200


# Where the document and the code disagreed (a security review) -------------------------------------------------
def job_request_validator(app: Flask) -> Draft202012Validator:
    document = build_document(app.config["COMFYQ_SETTINGS"])
    registry = Registry().with_resource("urn:comfyq", Resource.from_contents(document, DRAFT202012))
    return Draft202012Validator({"$ref": "urn:comfyq#/components/schemas/JobRequest"}, registry=registry)


def test_the_document_refuses_what_the_code_refuses_in_a_job(app: Flask, fuzz_headers: dict[str, str]) -> None:
    """Both sources, and graphs with an empty node id or a node that is not an object, were valid by the
    document and refused by the code; the document now says what the code checks."""
    valid, client = job_request_validator(app), app.test_client()
    for body in ({"workflow": "txt2img", "params": {"prompt": "x"}, "graph": GRAPH},
                 {"workflow": "txt2img", "graph": GRAPH}, {"graph": {"": []}}, {"graph": {"": GRAPH["1"]}},
                 {"graph": {"1": []}}, {"graph": {"1": {"inputs": {}}}}, {"graph": {"1": {"class_type": ""}}}):
        assert not valid.is_valid(body), body
        assert client.post("/jobs", json=body, headers=fuzz_headers).status_code == 422, body
    for body in ({"workflow": "txt2img", "params": {"prompt": "x"}, "graph": None},
                 {"graph": GRAPH, "workflow": None}):
        assert valid.is_valid(body), body
        assert client.post("/jobs", json=body, headers=fuzz_headers).status_code == 202, body


def test_an_empty_cursor_is_the_first_page(app: Flask, fuzz_headers: dict[str, str]) -> None:
    call = contract(app)
    call("POST", "/jobs", 202, fuzz_headers, body=GRAPH_JOB)
    assert len(call("GET", "/jobs", 200, fuzz_headers, query={"cursor": ""}).json()["jobs"]) == 1


def test_an_undocumented_method_is_405_with_allow(app: Flask, fuzz_headers: dict[str, str]) -> None:
    """The JSON error answers dropped the Allow header that a 405 must carry (RFC 9110 15.5.6)."""
    client = app.test_client()
    for path, methods in build_document(app.config["COMFYQ_SETTINGS"], events=False)["paths"].items():
        url = re.sub(r"\{\w+\}", "1", path)  # every path parameter takes a 1: an id, an index or a name
        documented = {method.upper() for method in methods}
        for method in {"GET", "POST", "PUT", "DELETE", "PATCH"} - documented:
            response = client.open(url, method=method, headers=fuzz_headers)
            assert response.status_code == 405, (method, url)
            assert response.get_json()["error"]["code"] == "method_not_allowed"
            assert set(response.headers["Allow"].split(", ")) - {"HEAD", "OPTIONS"} == documented, (method, url)


# The events process -------------------------------------------------------------------------------------------
URN = "urn:comfyq"


def pointer(*parts: str) -> str:
    """A JSON pointer into the document (RFC 6901)."""
    return URN + "#/" + "/".join(part.replace("~", "~0").replace("/", "~1") for part in parts)


class Conformance:
    """Holds answers of a real process to the document: a documented status, a documented content type with a body
    that matches its schema, the documented required headers with values that match theirs."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.registry = Registry().with_resource(URN, Resource.from_contents(document, DRAFT202012))

    def validate(self, ref: str, value: Any) -> None:
        Draft202012Validator({"$ref": ref}, registry=self.registry,
                             format_checker=Draft202012Validator.FORMAT_CHECKER).validate(value)

    def answer(self, method: str, path: str, response: requests.Response, status: int) -> dict[str, Any]:
        """The documented answer `response` is (a stream's body is left unread)."""
        assert response.status_code == status, (method, path, response.status_code)
        documented: dict[str, Any] = self.document["paths"][path][method]["responses"][str(status)]
        content = documented.get("content", {})
        media = response.headers.get("Content-Type", "").split(";")[0].strip()
        if content:
            assert media in content, (method, path, status, media)
            if media == "application/json":
                self.validate(pointer("paths", path, method, "responses", str(status), "content", media, "schema"),
                              response.json())
        else:
            assert response.content == b"", (method, path, status)
        for name, described in documented.get("headers", {}).items():
            if described.get("required"):
                value = response.headers[name]
                typed = int(value) if described["schema"].get("type") == "integer" else value
                Draft202012Validator(described["schema"]).validate(typed)
        return documented

    def message(self, answer: dict[str, Any], message: dict[str, Any]) -> None:
        self.validate(URN + answer[MESSAGE_SCHEMA]["$ref"], message)


@pytest.mark.slow
def test_what_a_real_events_process_sends_keeps_to_the_document(stack: Stack, db: Database, tmp_path: Path) -> None:
    """The events process as a child, with the API behind it, a worker and the stand-in: the stream token, both
    waits' answers (202 while queued, 200 at the end), the messages of a per-job stream over SSE and WebSocket and
    of a tenant-wide stream (snapshot, a retry with its error, progress, a success with its outputs), the 204 after
    the end and its refusals, each held to the document the API serves. SSE framing too: `event:` is the
    message's event, `id:` its id (the snapshot's the position to resume from, none for progress)."""
    _, comfy = stack.standin("--fail", "oom", "--sampler-step-seconds", "0.1")
    common = {"DATABASE_URL": stack.db_url, "COMFYQ_STORAGE_DIR": str(stack.storage_dir)}
    api, api_url = start_api(stack.log_dir, {**common, "COMFYQ_TOKEN_CACHE_SECONDS": "0"}, workers=1)
    stack.processes.append(api)
    events, url = start_events(tmp_path / "events-logs", {**common, "COMFYQ_EVENTS_API_URL": api_url})
    stack.processes.append(events)
    check = Conformance(requests.get(f"{api_url}/openapi.json", timeout=10).json())
    headers = bearer(db, "default", "submitter")

    issued = requests.post(f"{url}/events/token", headers=headers, timeout=10)
    check.answer("post", "/events/token", issued, 200)
    stream_token = issued.json()["stream_token"]
    params = {"prompt": "a lighthouse", "steps": 10, "width": 64, "height": 64}
    job = {"workflow": "txt2img", "params": params}
    queued = requests.post(f"{url}/jobs?wait=0.1", json=job, headers=headers, timeout=30)
    check.answer("post", "/jobs", queued, 202)
    job_id = queued.json()["id"]
    assert queued.json()["status"] == "queued" and "params" in queued.json()  # the job, not `{id, status}`
    check.answer("get", "/jobs/{job_id}", requests.get(f"{url}/jobs/{job_id}?wait=0", headers=headers, timeout=10),
                 202)

    # Opened before the job runs and read after it ended: the messages wait in the sockets meanwhile.
    per_job = SseReader(f"{url}/jobs/{job_id}/events?stream_token={stream_token}")
    sse_answer = check.answer("get", "/jobs/{job_id}/events", per_job.response, 200)
    tenant = SseReader(f"{url}/events?workflow=txt2img", headers)
    tenant_answer = check.answer("get", "/events", tenant.response, 200)
    ws = WsReader(f"{url}/ws/jobs/{job_id}", headers)
    ws_answer = check.document["paths"]["/ws/jobs/{job_id}"]["get"]["responses"]["101"]
    stack.worker("w1", retry_base_seconds="1")
    wait_until(lambda: "retry_scheduled" in [row["event"] for row in JobQueue(db).logs(job_id)], 30, "the retry")
    requests.post(f"{comfy}/standin/control", json={"fail": "none"}, timeout=5).raise_for_status()
    final = requests.get(f"{url}/jobs/{job_id}?wait=60", headers=headers, timeout=90)
    check.answer("get", "/jobs/{job_id}", final, 200)
    assert final.json()["status"] == "succeeded"

    seen: list[str] = []
    last_id = None
    for message in per_job.events():
        check.message(sse_answer, message.data)
        assert message.event == message.data["event"]
        if message.event == "progress":
            assert message.id is None
        elif message.event != "snapshot":
            assert message.id == message.data["id"]
            last_id = message.id
        else:
            assert message.id is not None
        seen.append(message.event or "")
    assert seen[0] == "snapshot" and seen[-1] == "succeeded" and {"progress", "retry_scheduled"} <= set(seen)
    frames = list(ws.events())
    for frame in frames:
        check.message(ws_answer, frame)
    assert [frame["event"] for frame in frames if frame["event"] != "progress"] == [
        event for event in seen if event != "progress"]
    retry = next(frame for frame in frames if frame["event"] == "retry_scheduled")
    assert retry["error"]["type"] and frames[-1]["outputs"][0]["url"].startswith("http")
    for message in tenant.events():
        check.message(tenant_answer, message.data)
        if message.data["job_id"] == job_id and message.event == "succeeded":
            break
    tenant.close()

    done = requests.post(f"{url}/jobs?wait=60", json={**job, "params": {**params, "steps": 2}},
                         headers=headers, timeout=90)
    check.answer("post", "/jobs", done, 200)
    assert done.json()["status"] == "succeeded"

    # The end, and refusals.
    check.answer("get", "/jobs/{job_id}/events", requests.get(
        f"{url}/jobs/{job_id}/events", headers={**headers, "Last-Event-ID": str(last_id)}, timeout=10), 204)
    # (method, path, request, headers, status, error code; None: not JSON)
    refusals = [("get", "/jobs/{job_id}", f"/jobs/{job_id}?wait=soon", headers, 400, "invalid_wait"),
                ("get", "/events", "/events?status=done", headers, 400, "invalid_filter"),
                ("get", "/events", "/events", {**headers, "Last-Event-ID": "x"}, 400, "invalid_last_event_id"),
                ("get", "/events", "/events", {}, 401, "unauthorized"),
                ("get", "/jobs/{job_id}/events", f"/jobs/{job_id}/events", {"Authorization": "Bearer cq_x"}, 401,
                 "unauthorized"),
                ("get", "/jobs/{job_id}/events", "/jobs/999999999/events", headers, 404, "not_found"),
                ("get", "/ws/jobs/{job_id}", f"/ws/jobs/{job_id}?last_event_id=x", headers, 400,
                 "invalid_last_event_id"),
                ("get", "/ws/events", "/ws/events?last_event_id=x", headers, 400, "invalid_last_event_id"),
                ("get", "/ws/events", "/ws/events", headers, 400, None),  # not an upgrade: aiohttp's plain text
                ("post", "/events/token", f"/events/token?stream_token={stream_token}", {}, 401, "unauthorized")]
    for method, path, target, sent, status, code in refusals:
        answer = requests.request(method.upper(), url + target, headers=sent, timeout=10)
        check.answer(method, path, answer, status)
        assert (answer.json()["error"]["code"] if code else answer.headers["Content-Type"]).startswith(
            code or "text/plain"), target
    with pytest.raises(websocket.WebSocketBadStatusException) as refused_upgrade:  # a real upgrade request too
        WsReader(f"{url}/ws/events?last_event_id=x", headers)
    assert refused_upgrade.value.status_code == 400
    refused = requests.post(f"{url}/jobs?wait=5", json={"workflow": "nope"}, headers=headers, timeout=30)
    check.answer("post", "/jobs", refused, 422)  # the API's refusal, passed on unchanged
    assert refused.json()["error"]["code"] == "unknown_workflow"
