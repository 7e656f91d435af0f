"""Who may do what, proved against the running app: every operation of the OpenAPI document called by every kind
of caller answers what the document's security and `x-required-role` say (the auth matrix); a tenant's
submitter and admin reach nothing of another tenant's (tenant isolation); and each role, fuzzed with schemathesis,
gets only answers the document describes. docs/security.md reports the figures and holds the matrix as a table,
which test_the_table_in_docs_security_md_is_the_matrix keeps equal to the document. The document here is the Flask
app's part (build_document(events=False)); the events process's routes are served by another process and checked in
tests/test_events.py and tests/test_openapi.py.

COMFYQ_FUZZ_EXAMPLES=200 raises the fuzz budget for a long run by hand (15 by default; see docs/security.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from comfyq import callback_secrets, tokens
from comfyq.api.openapi import PUBLIC_OPERATIONS, REQUIRED_ROLES, build_document
from comfyq.api.schemas import RATE_MIN
from comfyq.db import Database
from comfyq.jobs import JobQueue, NewJob
from comfyq.settings import PROJECT_ROOT
from comfyq.storage import LocalStorage
from tests.support.api_app import bearer
from tests.support.openapi_fuzz import (
    CHECKS,
    EXAMPLES,
    GRAPH,
    GRAPH_JOB,
    NOT_FUZZED,
    Tally,
    close_app,
    describe,
    flask_schema,
    fuzz,
    make_app,
    seed_jobs,
    strategies,
)

Headers = dict[str, str]
METRICS_TOKEN = "metrics-scrape-0123456789abcdef"  # as in the compose stack, /metrics answers this token only
SECURITY_MD = PROJECT_ROOT / "docs" / "security.md"


@dataclass(frozen=True)
class Identity:
    """A kind of caller: its token's role (None: no valid token) and whether its tenant may send raw graphs."""

    name: str
    role: str | None
    raw_graphs: bool = True


IDENTITIES = (Identity("no token", None), Identity("bad token", None), Identity("revoked token", None),
              Identity("submitter", "submitter"), Identity("submitter without raw graphs", "submitter", False),
              Identity("admin", "admin"), Identity("operator", "operator"))


@pytest.fixture
def app(db_url: str, tmp_path: Path) -> Iterator[Flask]:
    application = make_app(db_url, tmp_path, metrics_token=METRICS_TOKEN)
    yield application
    close_app(application)


class Api:
    """Sends one request through schemathesis and says what the document finds wrong with the answer."""

    def __init__(self, app: Flask) -> None:
        self.schema = flask_schema(app)

    def send(self, method: str, path: str, headers: Headers, **kwargs: Any) -> tuple[Any, str | None]:
        """The answer, and the document's objections to it (None: it conforms)."""
        if "body" in kwargs:
            kwargs.setdefault("media_type", "application/json")
        case = self.schema[path][method.upper()].Case(**kwargs)
        response = case.call(headers=headers)
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except (Exception, BaseExceptionGroup) as exc:
            return response, "\n".join(describe(exc))
        return response, None


def error_code(response: Any) -> str | None:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


# The matrix ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Expected:
    """An answer class: a status (or any documented 2xx when `ok`) and, for errors, the error code."""

    status: int | None
    code: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is None

    def cell(self) -> str:
        """As docs/security.md's table writes it."""
        if self.ok:
            return "yes"
        return f"{self.status}" + (f" `{self.code}`" if self.code not in (None, "unauthorized", "forbidden") else "")


def expected(operation: dict[str, Any], method: str, path: str, who: Identity) -> Expected:
    """What the document says this caller gets for a valid request on its own tenant's objects."""
    role = operation.get("x-required-role")
    if role is None:  # public; /metrics, which documents a 401, answers COMFYQ_METRICS_TOKEN only, no API token
        return Expected(401, "unauthorized") if "401" in operation["responses"] else Expected(None)
    if who.role is None:
        return Expected(401, "unauthorized")
    if tokens.rank(who.role) < tokens.rank(role):
        return Expected(403, "forbidden")
    if not who.raw_graphs and (method, path) == ("post", "/jobs"):  # the matrix submits a raw graph
        return Expected(403, "raw_graphs_not_allowed")
    if not who.raw_graphs and (method, path) == ("post", "/jobs/batch"):  # ... refused item by item in a batch
        return Expected(422, "invalid_batch_items")
    return Expected(None)


class World:
    """Makes, per matrix cell, the object its request names: a job, an output, a token, a callback secret."""

    def __init__(self, db: Database, storage_dir: Path) -> None:
        self.db, self.queue, self.storage = db, JobQueue(db), LocalStorage(storage_dir)
        self.made = 0

    def job(self, tenant: str, *, canceled: bool = False) -> int:
        job_id = int(self.queue.enqueue(NewJob(graph=GRAPH, tenant=tenant))["id"])
        if canceled:
            self.queue.cancel(job_id, tenant)
        return job_id

    def output_job(self, tenant: str) -> int:
        """A succeeded job with one output in storage."""
        job_id = self.job(tenant)
        claimed = self.queue.claim_by_id(job_id, "w")
        assert claimed is not None
        stored = self.storage.put(f"{job_id}/1/out.png", b"\x89PNG\r\n\x1a\n", "image/png")
        assert self.queue.complete(claimed.lease, [stored.to_record()])
        return job_id

    def token_prefix(self, tenant: str) -> str:
        return str(tokens.create(self.db, tenant, "submitter", "matrix").row["token_prefix"])

    def room_for_a_secret(self, tenant: str) -> str:
        """Retires the tenant's oldest active callback secrets until a new one fits."""
        active = [row for row in callback_secrets.list_secrets(self.db, tenant) if row["retired_at"] is None]
        for row in active[:max(0, len(active) - callback_secrets.MAX_ACTIVE + 1)]:
            callback_secrets.retire(self.db, tenant, row["id"])
        return tenant

    def secret_id(self, tenant: str) -> int:
        created = callback_secrets.create(self.db, self.room_for_a_secret(tenant))
        assert created is not None
        return int(created.row["id"])

    def new_tenant_name(self) -> str:
        self.made += 1
        return f"matrix-{self.made}"

    def stopped_worker(self) -> str:
        self.made += 1
        worker_id = f"matrix-worker-{self.made}"
        self.db.execute("register_worker", {"id": worker_id, "host": "h", "pid": 1, "comfyui_url": "http://c"})
        self.db.execute("worker_stopped", {"id": worker_id})
        return worker_id


# A valid request of each operation on the caller's own tenant ("acme" for callers without a valid token). A route
# added to the document without a line here fails the matrix; a line for a route not (or no longer) documented
# is not used.
REQUESTS: dict[tuple[str, str], Callable[[World, str], dict[str, Any]]] = {
    ("get", "/healthz"): lambda w, t: {},
    ("get", "/readyz"): lambda w, t: {},
    ("get", "/metrics"): lambda w, t: {},
    ("get", "/openapi.json"): lambda w, t: {},
    ("post", "/jobs"): lambda w, t: {"body": GRAPH_JOB},
    ("post", "/jobs/batch"): lambda w, t: {"body": {"jobs": [GRAPH_JOB]}},
    ("get", "/jobs"): lambda w, t: {},
    ("get", "/jobs/{job_id}"): lambda w, t: {"path_parameters": {"job_id": w.job(t)}},
    ("get", "/jobs/{job_id}/outputs/{index}"): lambda w, t: {"path_parameters": {"job_id": w.output_job(t),
                                                                                 "index": 0}},
    ("get", "/jobs/{job_id}/logs"): lambda w, t: {"path_parameters": {"job_id": w.job(t)}},
    ("post", "/jobs/{job_id}/cancel"): lambda w, t: {"path_parameters": {"job_id": w.job(t)}},
    ("delete", "/jobs/{job_id}"): lambda w, t: {"path_parameters": {"job_id": w.job(t)}},
    ("post", "/jobs/{job_id}/retry"): lambda w, t: {"path_parameters": {"job_id": w.job(t, canceled=True)}},
    ("get", "/stats"): lambda w, t: {},
    ("post", "/admin/retention"): lambda w, t: {"body": {"older_than_days": 30}},
    ("get", "/admin/workers"): lambda w, t: {},
    ("delete", "/admin/workers/{worker_id}"): lambda w, t: {"path_parameters": {"worker_id": w.stopped_worker()}},
    ("get", "/admin/tokens"): lambda w, t: {},
    ("post", "/admin/tokens"): lambda w, t: {"body": {"role": "submitter"}},
    ("delete", "/admin/tokens/{ref}"): lambda w, t: {"path_parameters": {"ref": w.token_prefix(t)}},
    ("get", "/admin/tenants"): lambda w, t: {},
    ("put", "/admin/tenants/{name}"): lambda w, t: {"path_parameters": {"name": w.new_tenant_name()}, "body": {}},
    ("get", "/admin/tenants/{name}/callback-secrets"): lambda w, t: {"path_parameters": {"name": t}},
    ("post", "/admin/tenants/{name}/callback-secrets"): lambda w, t: {
        "path_parameters": {"name": w.room_for_a_secret(t)}},
    ("delete", "/admin/tenants/{name}/callback-secrets/{secret_id}"): lambda w, t: {
        "path_parameters": {"name": t, "secret_id": w.secret_id(t)}},
    ("get", "/workflows"): lambda w, t: {},
    ("get", "/workflows/{name}"): lambda w, t: {"path_parameters": {"name": "txt2img"}},
}


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield method, path, operation


def callers(db: Database) -> dict[str, tuple[Headers, str]]:
    """Each identity's Authorization header and the tenant whose objects its requests name."""
    tokens.set_tenant(db, "acme", allow_raw_graphs=True)
    tokens.set_tenant(db, "plain", allow_raw_graphs=False)
    tokens.set_tenant(db, "ops", allow_raw_graphs=True)
    revoked = tokens.create(db, "ops", "operator", "revoked")
    assert tokens.revoke(db, str(revoked.row["id"])) is not None
    return {"no token": ({}, "acme"),
            "bad token": ({"Authorization": f"Bearer {tokens.generate()}"}, "acme"),
            "revoked token": ({"Authorization": f"Bearer {revoked.token}"}, "acme"),
            "submitter": (bearer(db, "acme", "submitter"), "acme"),
            "submitter without raw graphs": (bearer(db, "plain", "submitter"), "plain"),
            "admin": (bearer(db, "acme", "admin"), "acme"),
            "operator": (bearer(db, "ops", "operator"), "ops")}


def test_the_document_states_the_role_of_every_operation(app: Flask) -> None:
    document = build_document(app.config["COMFYQ_SETTINGS"], events=False)
    documented = set()
    for method, path, operation in operations(document):
        documented.add((method, path))
        if (method, path) in PUBLIC_OPERATIONS:
            assert "x-required-role" not in operation and operation["security"] == []
        else:
            assert operation["x-required-role"] in tokens.ROLES, (method, path)
            assert "403" in operation["responses"] or operation["x-required-role"] == "submitter", (method, path)
    assert set(REQUIRED_ROLES) <= documented
    assert documented <= set(REQUESTS), f"no request in the matrix for {documented - set(REQUESTS)}"


def test_every_operation_answers_every_caller_as_the_document_says(app: Flask, db: Database, tmp_path: Path,
                                                                    record_figure: Any) -> None:
    """The auth matrix: every operation x {no token, bad token, revoked token, submitter, submitter of a tenant
    without raw graphs, admin, operator}. A cell is wrong when the status or error code is not the one the
    document's role implies, or when the answer is not one the document describes."""
    document = build_document(app.config["COMFYQ_SETTINGS"], events=False)
    who = callers(db)
    world, api = World(db, tmp_path / "out"), Api(app)
    cells, wrong = 0, []
    for method, path, operation in operations(document):
        for identity in IDENTITIES:
            headers, tenant = who[identity.name]
            want = expected(operation, method, path, identity)
            response, objection = api.send(method, path, headers, **REQUESTS[(method, path)](world, tenant))
            cells += 1
            status, code = response.status_code, error_code(response)
            right = (200 <= status < 300) if want.ok else (status, code) == (want.status, want.code)
            if not right or objection:
                wrong.append(f"{method.upper()} {path} as {identity.name}: {status} {code}, expected "
                             f"{want.cell()}" + (f"\n{objection}" if objection else ""))
    record_figure("auth matrix: cells, wrong cells", f"{cells}, {len(wrong)}")
    assert not wrong, "\n".join(wrong)
    assert cells == len(list(operations(document))) * len(IDENTITIES)
    scrape = api.send("get", "/metrics", {"Authorization": f"Bearer {METRICS_TOKEN}"})[0]
    assert scrape.status_code == 200 and "comfyq_queue_jobs" in scrape.text


# docs/security.md's table: the matrix, with the three callers without a valid token in one column.
TABLE_COLUMNS = ("no, a bad or a revoked token", "submitter", "submitter without raw graphs", "admin", "operator")


def table_rows(document: dict[str, Any]) -> list[list[str]]:
    rows = []
    for method, path, operation in operations(document):
        cells = {identity.name: expected(operation, method, path, identity).cell() for identity in IDENTITIES}
        assert cells["no token"] == cells["bad token"] == cells["revoked token"]
        rows.append([f"`{method.upper()} {path}`", cells["no token"], *(cells[name] for name in TABLE_COLUMNS[1:])])
    return rows


def test_the_table_in_docs_security_md_is_the_matrix(app: Flask) -> None:
    """Its first six columns are the document's expectations, which the matrix above holds the code to."""
    document = build_document(app.config["COMFYQ_SETTINGS"], events=False)
    written = []
    for line in SECURITY_MD.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 6:
            written.append(cells[:6])
    assert written == table_rows(document), "\n".join("| " + " | ".join(row) + " |" for row in table_rows(document))


# Tenant isolation -------------------------------------------------------------------------------------------------
A, B = "tenant-a", "tenant-b"
A_PROMPT, A_HOOK, A_FILE = "alpha-private-prompt", "https://alpha.example/hook", "alpha-output.png"


@dataclass
class TenantA:
    """Tenant A's objects: jobs in every state, an output, tokens, a callback secret, an Idempotency-Key."""

    jobs: dict[str, int]
    token_rows: list[dict[str, Any]]
    token_headers: Headers
    secret: dict[str, Any]
    keyed_job: int
    markers: tuple[str, ...]


def tenant_a(db: Database, app: Flask, storage_dir: Path, sql: Any) -> TenantA:
    tokens.set_tenant(db, A, allow_raw_graphs=True)
    queue, storage = JobQueue(db), LocalStorage(storage_dir)

    def job() -> int:
        return int(queue.enqueue(NewJob(graph=GRAPH, workflow="txt2img", params={"prompt": A_PROMPT}, tenant=A,
                                        callback_url=A_HOOK))["id"])

    jobs = {state: job() for state in ("queued", "running", "succeeded", "failed", "canceled", "old")}
    for state in ("running", "succeeded", "failed", "old"):
        claimed = queue.claim_by_id(jobs[state], "w")
        assert claimed is not None
        if state in ("succeeded", "old"):
            stored = storage.put(f"{claimed.id}/1/{A_FILE}", b"\x89PNG\r\n\x1a\n", "image/png")
            assert queue.complete(claimed.lease, [stored.to_record()])
        elif state == "failed":
            queue.fail_attempt(claimed.lease, {"type": "permanent", "message": A_PROMPT, "retryable": False},
                               retryable=False, delay_seconds=0)
    queue.cancel(jobs["canceled"], A)
    sql.execute("UPDATE job_queue SET finished_at = now() - interval '40 days' WHERE id = %s", (jobs["old"],))
    a_submitter = tokens.create(db, A, "submitter", "a's")
    a_admin = tokens.create(db, A, "admin", "a's admin")
    secret = callback_secrets.create(db, A)
    assert secret is not None
    headers = {"Authorization": f"Bearer {a_submitter.token}"}
    keyed = app.test_client().post("/jobs", json={"workflow": "txt2img", "params": {"prompt": A_PROMPT}},
                                   headers={**headers, "Idempotency-Key": "order-1"})
    assert keyed.status_code == 202
    rows = [a_submitter.row, a_admin.row]
    markers = (A_PROMPT, A_HOOK, A_FILE, secret.row["secret_prefix"], *(row["token_prefix"] for row in rows))
    return TenantA(jobs=jobs, token_rows=rows, token_headers=headers, secret=secret.row,
                   keyed_job=keyed.get_json()["id"], markers=markers)


class Isolation:
    """Counts the checks; each is one request by one of tenant B's callers, and each answer must keep to the
    document and name nothing of tenant A's."""

    def __init__(self, api: Api, a: TenantA) -> None:
        self.api, self.a = api, a
        self.checks = 0
        self.failures: list[str] = []

    def check(self, label: str, method: str, path: str, headers: Headers, want: int, code: str | None = None,
              **kwargs: Any) -> Any:
        response, objection = self.api.send(method, path, headers, **kwargs)
        self.checks += 1
        sent = f"{headers} {kwargs}"  # an answer may repeat what the caller sent (a 404 names the ref)
        leaked = [marker for marker in self.a.markers if marker.encode() in response.content and marker not in sent]
        if response.status_code != want or (code is not None and error_code(response) != code) or objection \
                or leaked:
            self.failures.append(f"{label}: {method.upper()} {path} {kwargs}: {response.status_code} "
                                 f"{error_code(response)}, expected {want} {code or ''}; leaked {leaked}"
                                 + (f"\n{objection}" if objection else ""))
        return response

    def holds(self, label: str, condition: bool) -> None:
        """A check of what an answer already checked above holds (ids in a list, counts)."""
        self.checks += 1
        if not condition:
            self.failures.append(label)


def test_a_tenants_submitter_and_admin_reach_nothing_of_another_tenant(app: Flask, db: Database, tmp_path: Path,
                                                                       sql: Any, record_figure: Any) -> None:
    """Tenant B's submitter and admin on tenant A's jobs, outputs, tokens, callback secrets, tenant settings,
    Idempotency-Keys and dedupe twins: 404 where the route takes an id of A's (worded as for an id that never
    existed, so the answer does not tell that it exists), 403 where it names tenant A; lists and stats hold no
    trace of A, and A's quota and rate limit are A's alone."""
    a = tenant_a(db, app, tmp_path / "out", sql)
    tokens.set_tenant(db, B, allow_raw_graphs=True)
    b_queued = int(JobQueue(db).enqueue(NewJob(graph=GRAPH, tenant=B))["id"])
    probe = Isolation(Api(app), a)
    unknown = max(a.jobs.values()) + 10_000
    callers = {role: bearer(db, B, role) for role in ("submitter", "admin")}
    for role, b in callers.items():
        label = f"B's {role}"
        for state, job_id in a.jobs.items():
            for method, path in (("get", "/jobs/{job_id}"), ("get", "/jobs/{job_id}/logs"),
                                 ("post", "/jobs/{job_id}/cancel"), ("delete", "/jobs/{job_id}"),
                                 ("post", "/jobs/{job_id}/retry")):
                answer = probe.check(f"{label}, A's {state} job", method, path, b, 404, "not_found",
                                     path_parameters={"job_id": job_id})
                never = probe.api.send(method, path, b, path_parameters={"job_id": unknown})[0]
                probe.holds(f"{label}: the 404 for A's {state} job differs from one for an id that never existed",
                            answer.json() == _with_id(never.json(), unknown, job_id))
            probe.check(f"{label}, A's {state} job's output", "get", "/jobs/{job_id}/outputs/{index}", b, 404,
                        "not_found", path_parameters={"job_id": job_id, "index": 0})

        seen: set[int] = set()
        for query in ({}, {"status": "queued"}, {"status": "running"}, {"status": "succeeded"},
                      {"status": "failed"}, {"status": "canceled"}, {"workflow": "txt2img"},
                      {"since": "2000-01-01T00:00:00Z"}, {"limit": 500}):
            listed = probe.check(f"{label}, jobs listed with {query}", "get", "/jobs", b, 200, query=query)
            seen |= {job["id"] for job in listed.json()["jobs"]}
        probe.holds(f"{label}: lists show B's jobs only, got {sorted(seen)}", seen == {b_queued})
        stats = probe.check(f"{label}, stats", "get", "/stats", b, 200).json()
        probe.holds(f"{label}: stats count B's jobs only: {stats}",
                    (stats["scope"], stats["queued"], stats["running"], stats["by_priority"]["queued"],
                     sum(stats["finished_last_hour"].values())) == (B, 1, 0, {"0": 1}, 0))
        probe.check(f"{label}, metrics (every tenant's counts)", "get", "/metrics", b, 401, "unauthorized")

        forbidden_or_404 = 404 if role == "admin" else 403
        for row in a.token_rows:
            for ref in (str(row["id"]), row["token_prefix"]):
                probe.check(f"{label}, revoke A's token", "delete", "/admin/tokens/{ref}", b, forbidden_or_404,
                            path_parameters={"ref": ref})
        probe.check(f"{label}, list A's tokens", "get", "/admin/tokens", b, 403, "forbidden", query={"tenant": A})
        own = probe.check(f"{label}, list its tokens", "get", "/admin/tokens", b, 200 if role == "admin" else 403)
        if role == "admin":
            probe.holds(f"{label}: A's tokens listed", {row["tenant"] for row in own.json()["tokens"]} == {B})
        probe.check(f"{label}, make a token of A", "post", "/admin/tokens", b, 403, "forbidden",
                    body={"tenant": A, "role": "submitter"})
        probe.check(f"{label}, change A's settings", "put", "/admin/tenants/{name}", b, 403, "forbidden",
                    path_parameters={"name": A}, body={"allow_raw_graphs": False})
        probe.check(f"{label}, the workers (A's running job)", "get", "/admin/workers", b, 403, "forbidden")
        probe.check(f"{label}, the tenants", "get", "/admin/tenants", b, 403, "forbidden")

        secrets, one = "/admin/tenants/{name}/callback-secrets", "/admin/tenants/{name}/callback-secrets/{secret_id}"
        listed_a = probe.check(f"{label}, A's callback secrets", "get", secrets, b, 403, "forbidden",
                               path_parameters={"name": A})
        listed_nobody = probe.api.send("get", secrets, b, path_parameters={"name": "nobody"})[0]
        probe.holds(f"{label}: another tenant's secrets answer unlike a tenant that does not exist",
                    (listed_a.status_code, _with_name(listed_a.json(), A)) ==
                    (listed_nobody.status_code, _with_name(listed_nobody.json(), "nobody")))
        probe.check(f"{label}, a secret for A", "post", secrets, b, 403, "forbidden", path_parameters={"name": A})
        probe.check(f"{label}, retire A's secret", "delete", one, b, 403, "forbidden",
                    path_parameters={"name": A, "secret_id": a.secret["id"]})
        probe.check(f"{label}, retire A's secret through B", "delete", one, b, forbidden_or_404,
                    path_parameters={"name": B, "secret_id": a.secret["id"]})
        probe.check(f"{label}, retention of A's jobs", "post", "/admin/retention", b, 403, "forbidden",
                    body={"older_than_days": 30, "tenant": A})
        probe.check(f"{label}, retention of its own jobs", "post", "/admin/retention", b,
                    200 if role == "admin" else 403, body={"older_than_days": 30})

    # Submissions last (they add B's jobs, made with A's prompt, which the lists above must not show).
    a_request = {"workflow": "txt2img", "params": {"prompt": A_PROMPT}}
    first = probe.check("B's submitter, A's Idempotency-Key with A's body", "post", "/jobs",
                        {**callers["submitter"], "Idempotency-Key": "order-1"}, 202, body=a_request)
    replay = probe.check("B's admin, the same key and body", "post", "/jobs",
                         {**callers["admin"], "Idempotency-Key": "order-1"}, 200, body=a_request)
    probe.holds("A's Idempotency-Key answered A's job", a.keyed_job not in (first.json()["id"], replay.json()["id"])
                and replay.json()["id"] == first.json()["id"])
    for role, b in callers.items():
        twin = probe.check(f"B's {role}, a dedupe twin of A's succeeded job", "post", "/jobs", b, 202,
                           body={**a_request, "dedupe": True})
        probe.holds(f"B's {role}: dedupe answered A's job", twin.json()["id"] not in a.jobs.values())

    # What tenant A still has: every job, its tokens working, its secret active, its settings unchanged.
    sql.execute("SELECT id, status FROM job_queue WHERE tenant = %s", (A,))
    states = dict(sql.fetchall())
    probe.holds(f"A's jobs changed: {states}", states == {**{a.jobs[s]: s for s in (
        "queued", "running", "succeeded", "failed", "canceled")}, a.jobs["old"]: "succeeded", a.keyed_job: "queued"})
    probe.holds("A's token stopped working",
                app.test_client().get("/stats", headers=a.token_headers).status_code == 200)
    probe.holds("A's secret was retired", [row["retired_at"] for row in callback_secrets.list_secrets(db, A)] == [None])
    probe.holds("A's settings changed", (tokens.tenant_limits(db, A) or {}).get("allow_raw_graphs") is True)

    # A over its quota and out of rate: B submits as before.
    tokens.set_tenant(db, A, allow_raw_graphs=True, max_queued_jobs=1, rate_per_second=0.01, rate_burst=1)
    for role, b in callers.items():
        probe.check(f"B's {role}, while A is over its quota and rate", "post", "/jobs", b, 202, body=GRAPH_JOB)
    assert app.test_client().post("/jobs", json=GRAPH_JOB, headers=a.token_headers).status_code == 429  # control

    record_figure("tenant isolation: checks, failures", f"{probe.checks}, {len(probe.failures)}")
    assert not probe.failures, "\n".join(probe.failures)


def _with_id(body: Any, old: int, new: int) -> Any:
    """An error answer about one id, as it would read about another."""
    return {"error": {**body["error"], "message": body["error"]["message"].replace(str(old), str(new))}}


def _with_name(body: Any, name: str) -> Any:
    return {"error": {**body["error"], "message": body["error"]["message"].replace(repr(name), "'<tenant>'")}}


# Fuzzing as every role -------------------------------------------------------------------------------------------
FUZZED_ROLES = {"submitter": ("fuzz-submitter", "submitter", True),
                "submitter without raw graphs": ("fuzz-plain", "submitter", False),
                "admin": ("fuzz-admin", "admin", True),
                "operator": ("fuzz-operator", "operator", True)}


@pytest.mark.timeout(max(300, EXAMPLES * 25))
def test_every_role_gets_only_documented_answers_under_fuzzing(app: Flask, db: Database,
                                                               record_figure: Any) -> None:
    """schemathesis, as in tests/test_openapi.py, as each role in turn, each in a tenant of its own with jobs in
    every state (the others' jobs are another tenant's): valid and invalid requests of every operation, and the
    targeted strategies, must get a documented status, content type, headers and body, and never a 5xx. A route
    excluded from fuzzing because it deletes data is fuzzed all the same as a role too low for it (a 403 each)."""
    document = build_document(app.config["COMFYQ_SETTINGS"], events=False)
    headers = {}
    for name, (tenant, role, raw_graphs) in FUZZED_ROLES.items():
        tokens.set_tenant(db, tenant, allow_raw_graphs=raw_graphs)
        seed_jobs(db, tenant)
        headers[name] = bearer(db, tenant, role)
    schema = flask_schema(app)
    total, failures = Tally(), {}
    for name, (_, role, _) in FUZZED_ROLES.items():
        tally = Tally()
        for result in schema.get_all_operations():
            operation = result.ok()
            needed = document["paths"][operation.path][operation.method.lower()].get("x-required-role")
            if operation.path in NOT_FUZZED and (needed is None or tokens.rank(role) >= tokens.rank(needed)):
                continue
            for label, (strategy, max_examples) in strategies(operation).items():
                failure = fuzz(strategy, headers[name], max_examples, tally)
                if failure is not None:
                    failures[f"{name}: {operation.label} ({label})"] = failure
        record_figure(f"fuzz as {name}: cases, 5xx, schema violations, answers by status",
                      f"{tally.cases}, {tally.server_errors}, {tally.schema_violations}, {_by_class(tally)}")
        total.add(tally)
    record_figure(f"fuzz, all roles ({EXAMPLES} examples per operation and mode): cases, 5xx, schema violations",
                  f"{total.cases}, {total.server_errors}, {total.schema_violations}")
    assert not failures, "\n\n".join(f"== {label}\n{failure}" for label, failure in failures.items())
    assert total.cases > 0 and total.server_errors == total.schema_violations == 0


def _by_class(tally: Tally) -> str:
    classes: dict[str, int] = {}
    for status, count in tally.statuses.items():
        key = f"{status // 100}xx"
        classes[key] = classes.get(key, 0) + count
    return " ".join(f"{key} {classes[key]}" for key in sorted(classes))


# What the fuzz runs found ------------------------------------------------------------------------------------------
def test_a_rate_too_small_for_the_database_is_refused_with_422(app: Flask, db: Database) -> None:
    """Fuzzing as an operator: `PUT /admin/tenants/x {"rate_per_second": 5e-324}` answered 500 (the tenants table
    keeps the rate as a Postgres real, which cannot hold it). The document and the model now start at RATE_MIN."""
    operator = bearer(db, "ops", "operator")
    api = Api(app)
    document = build_document(app.config["COMFYQ_SETTINGS"], events=False)
    rate = document["components"]["schemas"]["TenantSettings"]["properties"]["rate_per_second"]
    assert RATE_MIN in [branch.get("minimum") for branch in rate.get("anyOf", [rate])]
    for value, status in ((5e-324, 422), (1e-46, 422), (RATE_MIN / 2, 422), (RATE_MIN, 200), (1_000_000, 200)):
        response, objection = api.send("put", "/admin/tenants/{name}", operator, path_parameters={"name": "slow"},
                                        body={"rate_per_second": value})
        assert (response.status_code, objection) == (status, None), (value, response.text)
