"""The pieces of the events process that need no server: the feed's gap rule (with a clock the test moves) and
the hub's bounded buffers."""

from __future__ import annotations

import asyncio
from typing import Any

from comfyq.events.hub import Hub, Interest, SubscriberState
from comfyq.job_events import GapCursor, JobEvent


def _rows(*ids: int) -> list[dict[str, Any]]:
    return [{"id": i} for i in ids]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_gap_holds_later_rows_until_it_fills() -> None:
    clock = Clock()
    cursor = GapCursor(10, gap_wait=2.0, clock=clock)
    taken, held = cursor.take(_rows(11, 13, 14))
    assert [r["id"] for r in taken] == [11] and held and cursor.position == 11
    clock.now += 1.0
    taken, held = cursor.take(_rows(13, 14))
    assert taken == [] and held
    taken, held = cursor.take(_rows(12, 13, 14))  # the late commit arrived
    assert [r["id"] for r in taken] == [12, 13, 14] and not held and not cursor.waiting


def test_a_gap_older_than_the_wait_is_skipped_as_rolled_back() -> None:
    clock = Clock()
    cursor = GapCursor(10, gap_wait=2.0, clock=clock)
    assert cursor.take(_rows(12)) == ([], True)
    clock.now += 2.5
    taken, held = cursor.take(_rows(12, 13))
    assert [r["id"] for r in taken] == [12, 13] and not held and cursor.position == 13
    assert cursor.take(_rows(12, 13)) == ([], False), "rows at or below the cursor are never handed out twice"


def _event(event_id: int, tenant: str = "a", job_id: int = 1, status: str = "queued") -> JobEvent:
    return JobEvent(id=event_id, job_id=job_id, tenant=tenant, workflow="txt2img", event="queued", status=status,
                    body={"id": event_id})


def test_a_subscriber_that_falls_behind_is_dropped_and_its_buffer_freed() -> None:
    async def scenario() -> None:
        hub = Hub(buffer=3)
        dropped: list[bool] = []
        slow = hub.subscribe(Interest("a"), "sse", lambda: dropped.append(True))
        fast = hub.subscribe(Interest("a"), "sse")
        other = hub.subscribe(Interest("b"), "sse")
        for i in range(1, 4):
            hub.publish([_event(i)], i)
            assert (await fast.next(0.1)) is not None
        hub.publish([_event(4)], 4)
        assert slow.state is SubscriberState.DROPPED and dropped == [True] and hub.count == 2
        assert await slow.next(0.01) is None
        assert (await fast.next(0.1)) == _event(4)
        assert await other.next(0.01) is None, "another tenant's events never reach it"
        assert hub.position == 4
    asyncio.run(scenario())


def test_interest_filters_by_job_status_and_workflow() -> None:
    assert Interest("a", job_id=1).matches(_event(1, job_id=1))
    assert not Interest("a", job_id=2).matches(_event(1, job_id=1))
    assert not Interest("a", statuses=frozenset({"running"})).matches(_event(1))
    assert Interest("a", workflows=frozenset({"txt2img"})).matches(_event(1))
    assert not Interest("b").matches(_event(1))


def test_a_stream_behind_gets_everything_buffered_in_order_at_once() -> None:
    async def scenario() -> None:
        hub = Hub(buffer=10)
        reader = hub.subscribe(Interest("a"), "sse")
        hub.publish([_event(1), _event(2), _event(3)], 3)
        first = await reader.next(0.1)
        assert first is not None and first.id == 1
        assert [event.id for event in reader.drain()] == [2, 3]
        assert reader.drain() == [] and await reader.next(0.01) is None
    asyncio.run(scenario())


def test_an_event_is_encoded_once_for_all_its_streams() -> None:
    event = _event(7)
    assert event.json == b'{"id":7}'
    assert event.json is event.json, "the second stream reuses the first one's bytes"
