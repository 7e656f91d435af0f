"""Fixtures for the transport tests: a Redis database of this run's own on the real server (TEST_REDIS_URL, else
127.0.0.1:6379), and the `backend` parameter that runs one suite against both queue transports."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from comfyq.db import Database
from comfyq.jobs import JobQueue
from comfyq.redis_transport import Bands, RedisTransport
from comfyq.transport import PostgresTransport, Transport

RESERVATION_KEY = "comfyq:test-run"
FLOORS = (100, 10, 1, 0, -9, -99)


def _server_url() -> str:
    return os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _with_db(url: str, number: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{number}", parts.query, parts.fragment))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A database number nobody uses, reserved for this run (a key set only when the database is empty),
    flushed at the end. Never touches a database that held anything."""
    server = _server_url()
    probe = redis.Redis.from_url(server, socket_connect_timeout=2)
    try:
        probe.ping()
        databases = int(probe.config_get("databases").get("databases", 16))
    except redis.RedisError as exc:
        # The suite expects the machine's Redis (make test and .ci/run start one): a missing Redis is a failure,
        # never a silent skip of the Redis half of the contract tests.
        pytest.fail(f"no Redis at {server}: {exc}; start one (redis-server) or set TEST_REDIS_URL", pytrace=False)
    finally:
        probe.close()
    token = uuid.uuid4().hex
    for number in range(databases - 1, 0, -1):
        url = _with_db(server, number)
        conn = redis.Redis.from_url(url)
        if conn.dbsize() == 0 and conn.set(RESERVATION_KEY, token, nx=True, ex=6 * 3600):
            try:
                yield url
            finally:
                if conn.get(RESERVATION_KEY) in (token.encode(), None):
                    conn.flushdb()
                conn.close()
            return
        conn.close()
    pytest.fail(f"no empty Redis database on {server}", pytrace=False)


@pytest.fixture
def redis_conn(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the run's database; whatever a test leaves there is flushed after it."""
    conn = redis.Redis.from_url(redis_url)
    try:
        yield conn
    finally:
        token = conn.get(RESERVATION_KEY)
        conn.flushdb()
        if token is not None:
            conn.set(RESERVATION_KEY, token, ex=6 * 3600)
        conn.close()


def flush_messages(conn: redis.Redis) -> None:
    """What an operator's FLUSHDB (or a restart without persistence) does, keeping the run's reservation."""
    token = conn.get(RESERVATION_KEY)
    conn.flushdb()
    if token is not None:
        conn.set(RESERVATION_KEY, token, ex=6 * 3600)


@dataclass
class Backend:
    """One queue transport as the tests see it."""

    name: str
    redis_url: str | None = None
    prefix: str = "comfyq"
    conn: redis.Redis | None = None
    transports: list[Transport] = field(default_factory=list)

    def transport(self, **overrides: Any) -> Transport:
        if self.name == "postgres":
            return PostgresTransport()
        assert self.redis_url is not None
        options: dict[str, Any] = {"prefix": self.prefix, "floors": FLOORS, "retry_seconds": 1.0,
                                   "reconcile_seconds": 0.5, "reconcile_grace_seconds": 0.0, **overrides}
        made = RedisTransport(redis.Redis.from_url(self.redis_url, socket_timeout=10), **options)
        self.transports.append(made)
        return made

    def queue(self, db: Database, **overrides: Any) -> JobQueue:
        """A queue as one process (the API, one worker) holds it: a transport of its own."""
        return JobQueue(db, lease_seconds=30, transport=self.transport(**overrides))

    def rank(self, priority: int) -> int:
        """The claim order of a priority: exact in Postgres, by band in Redis (FIFO inside a band)."""
        return -priority if self.name == "postgres" else Bands(self.prefix, FLOORS).rank(priority)

    def env(self, **extra: Any) -> dict[str, str]:
        """Environment overrides for stack.worker()."""
        if self.name == "postgres":
            return {"QUEUE_BACKEND": "postgres", **{k: str(v) for k, v in extra.items()}}
        assert self.redis_url is not None
        return {"QUEUE_BACKEND": "redis", "REDIS_URL": self.redis_url, "redis_prefix": self.prefix,
                "redis_band_floors": ",".join(str(f) for f in FLOORS), "reconcile_interval_seconds": "0.5",
                "reconcile_grace_seconds": "1", "redis_scheduler_seconds": "0.2", "redis_retry_seconds": "1",
                **{k: str(v) for k, v in extra.items()}}

    def claims_through_redis(self) -> int | None:
        """Claims made from Redis messages by this backend's transports (None for Postgres)."""
        if self.name == "postgres":
            return None
        return sum(t.counts["redis_claims"] for t in self.transports if isinstance(t, RedisTransport))

    def tick(self) -> None:
        """One round of the worker's transport ticks (Redis: move due delayed messages)."""
        for made in self.transports:
            if isinstance(made, RedisTransport):
                made.move_due_messages()

    def close(self) -> None:
        for made in self.transports:
            made.close()


@pytest.fixture(params=["postgres", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "postgres":
        made = Backend("postgres")
    else:
        conn = request.getfixturevalue("redis_conn")
        url = request.getfixturevalue("redis_url")
        made = Backend("redis", redis_url=url, prefix=f"cqt{uuid.uuid4().hex[:6]}", conn=conn)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def redis_backend(redis_conn: redis.Redis, redis_url: str) -> Iterator[Backend]:
    made = Backend("redis", redis_url=redis_url, prefix=f"cqt{uuid.uuid4().hex[:6]}", conn=redis_conn)
    try:
        yield made
    finally:
        made.close()


def queued_messages(backend: Backend) -> int:
    """Message ids waiting in the bands (not the scheduled ones)."""
    assert backend.conn is not None
    bands = Bands(backend.prefix, FLOORS)
    return sum(int(backend.conn.llen(f"rq:queue:{name}")) for name in bands.names)

