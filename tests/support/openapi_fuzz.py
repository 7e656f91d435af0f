"""What the OpenAPI tests share: the app with the document's blueprint, jobs in every state to read, cancel and
retry, the schemathesis checks and the Hypothesis strategies of the fuzz runs, a fuzz driver that counts cases,
5xx answers and answers the document does not describe, and a caller that checks one request against the
document. tests/test_openapi.py fuzzes as an admin; tests/test_security_matrix.py as every role.

Both run the Flask app's own part of the document (build_document(events=False)): the events process's operations
and the `wait` that nginx sends to it are served by another process, which these runs do not call."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from comfyq.api.app import create_app
from comfyq.api.openapi import bp as openapi_bp
from comfyq.api.openapi import build_document
from comfyq.db import Database
from comfyq.jobs import JobQueue, NewJob
from comfyq.settings import Settings

GRAPH = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
GRAPH_JOB = {"graph": GRAPH}
# Reproducible: FUZZ_SETTINGS below derandomizes Hypothesis; nothing is written to a Hypothesis database.
FUZZ_CONFIG = schemathesis.Config.from_dict({"generation": {"deterministic": True, "database": "none"}})


def make_app(db_url: str, tmp_path: Path, **settings: Any) -> Flask:
    app = create_app(Settings(database_url=db_url, token_cache_seconds=0, storage_dir=tmp_path / "out", **settings))
    if "openapi" not in app.blueprints:  # until app.py registers it (registering it twice would raise)
        app.register_blueprint(openapi_bp)
    return app


def flask_schema(app: Flask) -> Any:
    """The document of what the Flask app serves, for schemathesis to call the app with: written as GET
    /openapi.json writes it (the app's JSON provider, which sorts keys), so the generated cases are those of a
    schema loaded from the app."""
    document = build_document(app.config["COMFYQ_SETTINGS"], events=False)
    schema = schemathesis.openapi.from_dict(app.json.loads(app.json.dumps(document)), config=FUZZ_CONFIG)
    schema.app = app
    schema.location = "/openapi.json"
    return schema


def close_app(app: Flask) -> None:
    services = app.extensions.get("comfyq")
    if services is not None:
        services.db.close()


def seed_jobs(db: Database, tenant: str) -> list[int]:
    """Four jobs of the tenant: succeeded (with an output record), failed, canceled and queued, in that order."""
    queue = JobQueue(db)
    ids = [int(queue.enqueue(NewJob(graph=GRAPH, workflow="txt2img", params={"prompt": "x"}, tenant=tenant))["id"])
           for _ in range(4)]
    done = queue.claim_by_id(ids[0], "w")
    assert done is not None
    queue.complete(done.lease, [{"key": f"{done.id}/1/a.png", "size": 3, "content_type": "image/png",
                                 "location": "/tmp/a.png", "node_id": "2", "filename": "a.png"}])
    failed = queue.claim_by_id(ids[1], "w")
    assert failed is not None
    queue.fail_attempt(failed.lease, {"type": "permanent", "message": "boom", "retryable": False},
                       retryable=False, delay_seconds=0)
    queue.cancel(ids[2], tenant)
    return ids


# Retention deletes data and a revocation could revoke the fuzz token itself (both tested by example); metrics is
# text. A caller whose role is too low for them is fuzzed on them all the same: every answer must be the 403.
NOT_FUZZED = {"/admin/retention", "/admin/tokens/{ref}", "/metrics"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
CONFORMANCE = [check for check in CHECKS if check is not not_a_server_error]
# Per operation and mode (valid and invalid requests); COMFYQ_FUZZ_EXAMPLES raises it for a long run by hand.
EXAMPLES = int(os.environ.get("COMFYQ_FUZZ_EXAMPLES") or 15)
TARGETED_EXAMPLES = EXAMPLES * 8 // 3  # per extra strategy below (40 with the default)
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                                HealthCheck.data_too_large])
# schemathesis derives inputs from the document alone, so random workflow names are all unknown and random graphs
# almost never well formed. These strategies also send the shipped template and well-formed graphs, with what a
# database refuses to store (NUL, unpaired surrogates, time zones beyond 15:59, years 1 and 9999), cursors and
# replayed or reused Idempotency-Keys. (NaN cannot be sent through schemathesis: see tests/test_openapi.py.)
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=12)
NICE_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12)
NUMBERS = st.floats(allow_nan=False, allow_infinity=False)
MOMENTS = st.datetimes(timezones=st.integers(-1439, 1439).map(lambda m: timezone(timedelta(minutes=m)))).map(
    datetime.isoformat)
JOB_OPTIONS = {"priority": st.integers(-1100, 1100), "deadline": MOMENTS, "max_attempts": st.integers(0, 101),
               "callback_url": ANY_TEXT.map(lambda x: f"https://hooks.example/{x}")}
TEMPLATE_PARAMS = st.fixed_dictionaries({"prompt": ANY_TEXT}, optional={
    "seed": st.integers(-1, 2**65), "width": st.sampled_from([63, 64, 512, 513, 4096]), "cfg": NUMBERS,
    "checkpoint": ANY_TEXT, "negative_prompt": ANY_TEXT})
TEMPLATE_JOBS = st.fixed_dictionaries({"workflow": st.just("txt2img"), "params": TEMPLATE_PARAMS},
                                      optional={**JOB_OPTIONS, "dedupe": st.booleans()})
NODE_IDS = st.sampled_from(["1", "2", "3"]) | ANY_TEXT
LINKS = st.tuples(NODE_IDS, st.integers(0, 2)).map(list)
NODES = st.fixed_dictionaries({"class_type": ANY_TEXT, "inputs": st.dictionaries(
    ANY_TEXT, ANY_TEXT | st.integers() | NUMBERS | st.booleans() | st.none() | LINKS, max_size=3)})
GRAPH_JOBS = st.fixed_dictionaries({"graph": st.dictionaries(NODE_IDS, NODES, min_size=1, max_size=3)},
                                   optional=JOB_OPTIONS)
VALID_JOBS = st.fixed_dictionaries(  # valid but for the deadline, so that whole batches reach the database
    {"workflow": st.just("txt2img"), "params": st.fixed_dictionaries({"prompt": NICE_TEXT})},
    optional={"priority": st.integers(-1000, 1000), "deadline": MOMENTS})
BATCHES = st.lists(VALID_JOBS | TEMPLATE_JOBS | GRAPH_JOBS, min_size=1, max_size=3).map(lambda jobs: {"jobs": jobs})
CURSORS = st.integers(-1, 2**70).map(lambda n: base64.urlsafe_b64encode(f"id:{n}".encode()).decode().rstrip("="))
LIST_QUERIES = st.fixed_dictionaries({}, optional={
    "since": MOMENTS, "workflow": ANY_TEXT, "cursor": CURSORS, "status": st.sampled_from(["queued", "failed"]),
    "limit": st.integers(0, 600)})
# GET /jobs/{id}/logs: seed_jobs' jobs (ids 1 to 4 in a test's own database) and others, with cursors of their own
# job, of another job and out of range.
LOG_CURSORS = st.tuples(st.integers(-1, 6), st.integers(-1, 2**70)).map(
    lambda ids: base64.urlsafe_b64encode("log:{}:{}".format(*ids).encode()).decode().rstrip("="))
LOG_QUERIES = st.tuples(st.integers(1, 6), st.fixed_dictionaries({}, optional={
    "cursor": LOG_CURSORS, "limit": st.integers(0, 600)}))
KEYS = st.sampled_from(["k1", "k2", "x" * 256]) | st.none()  # repeats, conflicts, too long, or no key
NO_KEY: st.SearchStrategy[str | None] = st.none()


def targeted(operation: Any) -> dict[str, st.SearchStrategy[schemathesis.Case]]:
    """Extra strategies for the operations whose interesting inputs the document cannot describe."""
    def with_body(bodies: st.SearchStrategy[Any], keys: st.SearchStrategy[str | None] = NO_KEY) -> Any:
        def case(body: Any, key: str | None) -> Any:
            headers = {} if key is None else {"Idempotency-Key": f"{operation.path}:{key}"}
            return operation.as_strategy(body=body, headers=headers, media_type="application/json")
        return st.tuples(bodies, keys).flatmap(lambda pair: case(*pair))

    route = (operation.method.upper(), operation.path)
    if route == ("POST", "/jobs"):
        return {"templates": with_body(TEMPLATE_JOBS), "graphs": with_body(GRAPH_JOBS),
                "idempotency keys": with_body(VALID_JOBS | GRAPH_JOBS, KEYS)}
    if route == ("POST", "/jobs/batch"):
        return {"batches": with_body(BATCHES, KEYS)}
    if route == ("GET", "/jobs"):
        return {"queries": LIST_QUERIES.flatmap(lambda query: operation.as_strategy(query=query))}
    if route == ("GET", "/jobs/{job_id}/logs"):
        return {"cursors": LOG_QUERIES.flatmap(lambda pair: operation.as_strategy(
            path_parameters={"job_id": pair[0]}, query=pair[1]))}
    return {}


def strategies(operation: Any) -> dict[str, tuple[st.SearchStrategy[schemathesis.Case], int]]:
    """Every strategy an operation is fuzzed with, by name, with its number of examples."""
    found = {mode.value: (operation.as_strategy(generation_mode=mode), EXAMPLES)
             for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)}
    found.update({name: (strategy, TARGETED_EXAMPLES) for name, strategy in targeted(operation).items()})
    return found


@dataclass
class Tally:
    """What fuzz runs sent and got: the figures docs/security.md reports. Cases a failure is shrunk with count
    too (a run without failures has none)."""

    cases: int = 0
    server_errors: int = 0  # 5xx answers
    schema_violations: int = 0  # answers whose status, content type, headers or body the document does not describe
    statuses: dict[int, int] = field(default_factory=dict)

    def add(self, other: Tally) -> None:
        self.cases += other.cases
        self.server_errors += other.server_errors
        self.schema_violations += other.schema_violations
        for status, count in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + count


def fuzz(strategy: st.SearchStrategy[schemathesis.Case], headers: dict[str, str], max_examples: int,
         tally: Tally | None = None) -> str | None:
    """Run the checks on up to max_examples cases, counting them into tally; the failure report (with the
    request), or None."""
    counts = tally if tally is not None else Tally()

    @settings(FUZZ_SETTINGS, max_examples=max_examples)
    @given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        try:
            response = case.call(headers=headers)
            counts.cases += 1
            counts.statuses[response.status_code] = counts.statuses.get(response.status_code, 0) + 1
            if response.status_code >= 500:
                counts.server_errors += 1
            try:
                case.validate_response(response, checks=CONFORMANCE, headers=headers)
            except (Exception, BaseExceptionGroup):
                counts.schema_violations += 1
                raise
            case.validate_response(response, checks=[not_a_server_error], headers=headers)
        except (Exception, BaseExceptionGroup) as exc:
            exc.add_note(f"request: {case.method} {case.formatted_path} query={case.query} "
                         f"headers={ {k: v for k, v in (case.headers or {}).items() if k != 'Authorization'} } "
                         f"body={case.body!r:.400}")
            raise

    try:
        run()
    except Unsatisfiable:  # nothing to make invalid: a negative run of an operation without inputs
        return None
    except (Exception, BaseExceptionGroup) as exc:  # report every operation's failures, not only the first one
        return "\n".join(describe(exc))
    return None


def describe(exc: BaseException) -> list[str]:
    notes = getattr(exc, "__notes__", [])
    if isinstance(exc, BaseExceptionGroup):
        return [*notes, *(line for part in exc.exceptions for line in describe(part))]
    return [f"{type(exc).__name__}: {exc}".strip(), *notes]


def contract(app: Flask, checks: list[Any] = CHECKS) -> Any:
    """A caller that sends one request to app and checks the answer against the document, like the fuzz run."""
    api = flask_schema(app)

    def call(method: str, path: str, expected: int, headers: dict[str, str] | None = None,
             **kwargs: Any) -> Any:
        if "body" in kwargs:
            kwargs.setdefault("media_type", "application/json")
        response = api[path][method].Case(**kwargs).call_and_validate(headers=headers or {}, checks=checks)
        assert response.status_code == expected, response.text
        return response
    return call


def header(response: Any, name: str) -> str:
    value: str = response.headers[name.lower()][0]
    return value
