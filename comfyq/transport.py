"""How workers learn which job to claim. Postgres stays the queue of record either way: every row, state change,
attempt and log lives in job_queue/job_logs, and a claim is always a conditional update there.

- PostgresTransport (QUEUE_BACKEND=postgres, the default): claim the next row with SKIP LOCKED; an idle worker
  sleeps on LISTEN with a poll fallback.
- RedisTransport (QUEUE_BACKEND=redis, comfyq/redis_transport.py): job ids also travel through RQ queues, one per
  priority band; a worker pops an id and claims that one row (claim_job_by_id). See docs/redis.md.

A transport never claims: it only says what to try (`offers`), and JobQueue (comfyq/jobs.py) makes the claim and
tells it how that went. So the transport knows nothing of the queue, and the queue depends on the transport, not
the other way round.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, TypeAlias

from comfyq.db import Database

if TYPE_CHECKING:
    from comfyq.settings import Settings


class AskPostgres(enum.Enum):
    """The offer to claim the next eligible row with SKIP LOCKED rather than a given job id."""

    NEXT_ELIGIBLE = "next_eligible"


ASK_POSTGRES = AskPostgres.NEXT_ELIGIBLE
Offer: TypeAlias = int | AskPostgres
"""What a transport offers to claim: a job id (claim that row if it is still claimable) or ASK_POSTGRES."""
Offers: TypeAlias = Generator[Offer, bool, None]
"""One claim's dialogue. The transport yields offers; JobQueue claims each and sends back True (claimed: the
transport does its bookkeeping and returns) or False (nothing claimed: it yields the next offer, or returns
when it has none). An exception raised by a claim is thrown in at the yield; the transport may put back what
it took, and re-raises it."""


@dataclass(frozen=True)
class Message:
    """One job to deliver: the band comes from priority, the message id from (job id, attempts), run_at in the
    future delays delivery."""

    job_id: int
    priority: int
    attempts: int
    run_at: datetime | None = None


class Waiter(Protocol):
    """What an idle worker sleeps on. wait() returns True when there is a reason to claim now; a byte on any of
    wake_fds (a signal handler's pipe) ends the wait early. wait(0) never blocks."""

    def wait(self, timeout: float, wake_fds: Sequence[int] = ()) -> bool: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Tick:
    """A periodic task the transport needs in every worker (run by comfyq/worker/maintenance.py's scheduler)."""

    name: str
    seconds: float
    run: Callable[[], object]


class Transport:
    """The Postgres transport; the base class every transport extends."""

    name = "postgres"
    publishes = False  # True: JobQueue hands every job it puts in the queue to publish() after the commit

    def publish(self, messages: Sequence[Message]) -> None:
        """Deliver jobs whose rows are committed. Never raises: a message that could not be sent is found
        again by the reconciler (or the Postgres poll)."""

    def offers(self, db: Database) -> Offers:
        """What one claim should try, in order (see Offers); db is for what the transport itself needs to read.
        Postgres: the next eligible row, once."""
        yield ASK_POSTGRES

    def waiter(self, db: Database) -> Waiter:
        return db.listener("listen_jobs")

    @property
    def healthy(self) -> bool:
        """Whether the transport's own dependency (Redis) answers: False from its first failed or timed-out call
        until a call succeeds again; meanwhile jobs go through Postgres. Always True here (nothing but Postgres)."""
        return True

    def on_health_change(self, callback: Callable[[bool], None]) -> None:
        """Call callback(healthy) whenever `healthy` flips, from whichever thread noticed (keep it short, never
        block in it). So a worker can show Redis as down or up without polling. Never called here."""

    def request_poll(self) -> bool:
        """Burst mode, before exiting: True when the next claim will also ask Postgres for an eligible job
        (so the worker should claim once more); False when the last claim already did and found none."""
        return False

    def ticks(self, db: Database) -> list[Tick]:
        return []

    def summary(self) -> str | None:
        """A line for the worker's stop log (what came through which path), or None."""
        return None

    def close(self) -> None:
        """Release what the transport holds (connections, a message taken but not claimed)."""


class PostgresTransport(Transport):
    """Claim with SKIP LOCKED, sleep on LISTEN: nothing to publish, nothing to reconcile."""


def build_transport(settings: Settings, *, owner: str | None = None) -> Transport:
    """The transport QUEUE_BACKEND names; owner (a worker id) names its scheduler and reconciler locks."""
    if settings.queue_backend == "redis":
        from comfyq.redis_transport import RedisTransport  # noqa: PLC0415 - rq/redis only when configured

        return RedisTransport.from_settings(settings, owner=owner)
    return PostgresTransport()
