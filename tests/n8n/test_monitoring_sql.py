"""The monitoring view and the alert decisions (sql/migrations/0006_monitoring.sql) on a real Postgres, without
n8n: what each alert measures, that an alert is sent once when it starts, again after the repeat interval, and
once more when it ends, and that two monitors running at once never send the same transition twice."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from comfyq.db import Database
from comfyq.jobs import JobQueue, NewJob
from tests.e2e_support import TINY_GRAPH


def transitions(db: Database) -> dict[str, dict[str, Any]]:
    return {row["alert"]: row for row in db.fetch_all("alert_transitions")}


def set_threshold(db: Database, name: str, value: float | None) -> None:
    assert db.fetch_one("monitor_threshold_set", {"name": name, "value": value}) is not None


def only(db: Database, alert: str) -> None:
    """Turn every alert off but one, so a test sees only what it provokes."""
    for name in ("queue_depth", "oldest_queued_seconds", "failures", "silent_workers", "overdue_jobs"):
        if name != alert:
            set_threshold(db, name, None)


def test_the_view_is_one_row_of_numbers_with_its_windows(db: Database, queue: JobQueue) -> None:
    queue.enqueue_many([NewJob(graph=TINY_GRAPH) for _ in range(3)])
    snapshot = db.fetch_one("monitoring_snapshot")
    assert snapshot is not None
    assert snapshot["queued_jobs"] == 3 and snapshot["running_jobs"] == 0
    assert 0 <= snapshot["oldest_queued_seconds"] < 60
    assert snapshot["failed_jobs"] == 0 and snapshot["top_error_type"] is None
    assert snapshot["silent_workers"] == 0 and snapshot["overdue_jobs"] == 0
    assert (snapshot["failure_window_seconds"], snapshot["heartbeat_silence_seconds"]) == (900, 60)


def test_an_alert_fires_once_repeats_after_the_interval_and_resolves(db: Database, queue: JobQueue, sql: Any) -> None:
    only(db, "queue_depth")
    set_threshold(db, "queue_depth", 2)
    assert transitions(db) == {}
    ids = [row["id"] for row in queue.enqueue_many([NewJob(graph=TINY_GRAPH) for _ in range(3)])]

    fired = transitions(db)["queue_depth"]
    assert (fired["transition"], fired["value"], fired["threshold"], fired["notification"]) == ("firing", 3, 2, 1)
    assert fired["subject"] == "[comfyq] FIRING queue_depth: 3 (threshold 2)"
    assert "3 jobs queued" in fired["message"]
    assert transitions(db) == {}  # still above: nothing until the repeat interval has passed

    sql.execute("UPDATE monitor_alert_state SET last_notified_at = now() - interval '2 hours' "
                "WHERE alert = 'queue_depth'")
    repeat = transitions(db)["queue_depth"]
    assert (repeat["transition"], repeat["notification"]) == ("repeat", 2)
    assert repeat["message"].startswith("[comfyq] STILL FIRING queue_depth for ")
    assert transitions(db) == {}

    sql.execute("DELETE FROM job_queue WHERE id = ANY(%s)", (ids,))
    resolved = transitions(db)["queue_depth"]
    assert (resolved["transition"], resolved["value"]) == ("resolved", 0)
    assert resolved["message"].startswith("[comfyq] RESOLVED queue_depth after ")
    assert transitions(db) == {}
    [state] = [s for s in db.fetch_all("alert_states") if s["alert"] == "queue_depth"]
    assert not state["active"] and state["resolved_at"] is not None and state["notifications"] == 2


def test_no_repeat_when_the_interval_is_off(db: Database, queue: JobQueue, sql: Any) -> None:
    only(db, "queue_depth")
    set_threshold(db, "queue_depth", 0)
    set_threshold(db, "repeat_seconds", None)
    queue.enqueue(NewJob(graph=TINY_GRAPH))
    assert transitions(db)["queue_depth"]["transition"] == "firing"
    sql.execute("UPDATE monitor_alert_state SET last_notified_at = now() - interval '30 days'")
    assert transitions(db) == {}


def test_failures_name_the_top_error(db: Database, queue: JobQueue, sql: Any) -> None:
    only(db, "failures")
    set_threshold(db, "failures", 2)
    ids = [row["id"] for row in queue.enqueue_many([NewJob(graph=TINY_GRAPH) for _ in range(4)])]
    errors = ['{"type": "execution_error", "message": "CUDA out of memory"}'] * 3 + ['{"type": "validation_error"}']
    for job_id, error in zip(ids, errors):
        sql.execute("UPDATE job_queue SET status = 'failed', finished_at = now(), error = %s WHERE id = %s",
                    (error, job_id))
    fired = transitions(db)["failures"]
    assert fired["value"] == 4
    assert "4 jobs failed in the last 15m 00s; top error: execution_error (3 jobs): CUDA out of memory" \
        in fired["message"]


def test_silent_workers_and_overdue_jobs(db: Database, queue: JobQueue, sql: Any) -> None:
    sql.execute("INSERT INTO workers (id, host, pid, comfyui_url, heartbeat_at) VALUES "
                "('gpu-1-dead', 'gpu-1', 1, 'http://gpu-1:8188', now() - interval '5 minutes'), "
                "('gpu-2-alive', 'gpu-2', 2, 'http://gpu-2:8188', now())")
    sql.execute("INSERT INTO workers (id, host, pid, comfyui_url, status, heartbeat_at) VALUES "
                "('gpu-3-stopped', 'gpu-3', 3, 'http://gpu-3:8188', 'stopped', now() - interval '1 day')")
    job = queue.enqueue(NewJob(graph=TINY_GRAPH, timeout_seconds=60))
    claimed = queue.claim("gpu-2-alive")
    assert claimed is not None and claimed.id == job["id"]
    sql.execute("UPDATE job_queue SET claimed_at = now() - interval '10 minutes' WHERE id = %s", (job["id"],))

    fired = transitions(db)
    assert set(fired) == {"silent_workers", "overdue_jobs"}
    assert fired["silent_workers"]["value"] == 1 and "gpu-1-dead" in fired["silent_workers"]["message"]
    assert "gpu-3-stopped" not in fired["silent_workers"]["message"]
    assert fired["overdue_jobs"]["value"] == 1 and str(job["id"]) in fired["overdue_jobs"]["message"]


def test_oldest_queued_counts_only_eligible_jobs(db: Database, queue: JobQueue, sql: Any) -> None:
    only(db, "oldest_queued_seconds")
    set_threshold(db, "oldest_queued_seconds", 600)
    waiting = queue.enqueue(NewJob(graph=TINY_GRAPH))
    later = queue.enqueue(NewJob(graph=TINY_GRAPH))
    sql.execute("UPDATE job_queue SET run_at = now() + interval '1 hour', created_at = now() - interval '2 hours' "
                "WHERE id = %s", (later["id"],))
    assert transitions(db) == {}
    sql.execute("UPDATE job_queue SET run_at = now() - interval '20 minutes' WHERE id = %s", (waiting["id"],))
    fired = transitions(db)["oldest_queued_seconds"]
    assert 1200 <= fired["value"] < 1300 and "has waited 20m" in fired["message"]


def test_thresholds_refuse_unknown_names_and_missing_windows(sql: Any) -> None:
    with pytest.raises(Exception, match="monitor_thresholds_name_check"):
        sql.execute("INSERT INTO monitor_thresholds (name, value, description) VALUES ('queue_dept', 5, 'typo')")
    sql.connection.rollback()
    with pytest.raises(Exception, match="monitor_thresholds_required"):
        sql.execute("UPDATE monitor_thresholds SET value = NULL WHERE name = 'failure_window_seconds'")
    sql.connection.rollback()


def test_two_monitors_at_once_send_each_transition_once(db: Database, queue: JobQueue) -> None:
    only(db, "queue_depth")
    set_threshold(db, "queue_depth", 0)
    queue.enqueue(NewJob(graph=TINY_GRAPH))
    results: list[list[str]] = []
    barrier = threading.Barrier(6)

    def monitor() -> None:
        barrier.wait()
        results.append([row["transition"] for row in db.fetch_all("alert_transitions")])

    threads = [threading.Thread(target=monitor) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(t for r in results for t in r) == ["firing"]


# The delivery outbox (sql/migrations/0016_alert_delivery.sql), as the monitor workflow drives it.
CLAIM = "SELECT * FROM comfyq_claim_notifications('inst', 'http://g', 'http://api', 'http://rb', true, true)"


def claim(sql: Any) -> list[tuple[int, str, str, str]]:
    """One run's claim: (id, claim, channel, transition) in the order the run sends them."""
    sql.execute(CLAIM)
    return [(row[0], str(row[1]), row[2], row[4]) for row in sql.fetchall()]


def fire_and_resolve(db: Database, queue: JobQueue, sql: Any) -> None:
    """A FIRING then a RESOLVED of queue_depth: four notifications, two per channel."""
    only(db, "queue_depth")
    set_threshold(db, "queue_depth", 0)
    job = queue.enqueue(NewJob(graph=TINY_GRAPH))
    assert transitions(db)["queue_depth"]["transition"] == "firing"
    sql.execute("DELETE FROM job_queue WHERE id = %s", (job["id"],))
    assert transitions(db)["queue_depth"]["transition"] == "resolved"


def test_a_claim_is_a_lease_and_only_delivery_marks_a_row(db: Database, queue: JobQueue, sql: Any) -> None:
    fire_and_resolve(db, queue, sql)
    run = claim(sql)
    assert [(channel, transition) for _, _, channel, transition in run] == [
        ("slack", "firing"), ("email", "firing"), ("slack", "resolved"), ("email", "resolved")]
    token = run[0][1]
    # Email takes both; the Slack post fails: nothing marks the Slack rows, the run releases them.
    for notification, _, channel, _ in run:
        if channel == "email":
            sql.execute("SELECT comfyq_notification_delivered(%s)", (notification,))
    sql.execute("SELECT * FROM comfyq_undelivered(%s)", (token,))
    assert sql.fetchone() == (2, "slack")
    sql.execute("SELECT count(*) FROM monitor_notifications WHERE delivered_at IS NULL AND claimed_at IS NULL")
    assert sql.fetchone() == (2,)
    # The next run gets the Slack rows again, FIRING first.
    again = claim(sql)
    assert [(channel, transition) for _, _, channel, transition in again] == [("slack", "firing"),
                                                                             ("slack", "resolved")]
    sql.execute("SELECT attempts FROM monitor_notifications WHERE id = %s", (again[0][0],))
    assert sql.fetchone() == (2,)


def test_overlapping_runs_lose_nothing_and_keep_each_channels_order(db: Database, queue: JobQueue,
                                                                    sql: Any) -> None:
    only(db, "queue_depth")
    set_threshold(db, "queue_depth", 0)
    job = queue.enqueue(NewJob(graph=TINY_GRAPH))
    transitions(db)
    first = claim(sql)  # a run still posting the FIRING (Slack slow or retrying)
    assert sorted(channel for _, _, channel, _ in first) == ["email", "slack"]
    for notification, _, channel, _ in first:
        if channel == "email":
            sql.execute("SELECT comfyq_notification_delivered(%s)", (notification,))
    sql.execute("DELETE FROM job_queue WHERE id = %s", (job["id"],))
    transitions(db)
    # A second run meanwhile: the email RESOLVED goes, the Slack one waits behind the FIRING the first run holds.
    second = claim(sql)
    assert [(channel, transition) for _, _, channel, transition in second] == [("email", "resolved")]
    # The first run fails and releases its FIRING; the next run sends Slack's FIRING, then its RESOLVED.
    sql.execute("SELECT * FROM comfyq_undelivered(%s)", (first[0][1],))
    assert sql.fetchone() == (1, "slack")
    sql.execute("SELECT * FROM comfyq_undelivered(%s)", (second[0][1],))
    assert sql.fetchone() == (1, "email")  # the second run did not deliver its email either: released too
    third = claim(sql)
    assert [(channel, transition) for _, _, channel, transition in third] == [
        ("slack", "firing"), ("slack", "resolved"), ("email", "resolved")]


def test_a_lease_left_by_a_run_that_died_expires(db: Database, queue: JobQueue, sql: Any) -> None:
    only(db, "queue_depth")
    set_threshold(db, "queue_depth", 0)
    queue.enqueue(NewJob(graph=TINY_GRAPH))
    transitions(db)
    dead_run = claim(sql)
    assert len(dead_run) == 2
    assert claim(sql) == []  # held by the run (it may still be sending)
    sql.execute("UPDATE monitor_notifications SET claimed_at = claimed_at - comfyq_notification_lease() - "
                "interval '1 second'")
    taken = claim(sql)
    assert [n for n, _, _, _ in taken] == [n for n, _, _, _ in dead_run]
    assert {token for _, token, _, _ in taken}.isdisjoint({token for _, token, _, _ in dead_run})
    # The dead run's late release touches nothing that is now another run's.
    sql.execute("SELECT * FROM comfyq_undelivered(%s)", (dead_run[0][1],))
    assert sql.fetchone() == (0, "")


def test_a_channel_that_is_not_set_up_is_skipped(db: Database, queue: JobQueue, sql: Any) -> None:
    only(db, "queue_depth")
    set_threshold(db, "queue_depth", 0)
    queue.enqueue(NewJob(graph=TINY_GRAPH))
    transitions(db)
    sql.execute("SELECT channel FROM comfyq_claim_notifications('i', 'g', 'a', 'r', false, true)")
    assert sql.fetchall() == [("email",)]
    sql.execute("SELECT channel, skipped FROM monitor_notifications WHERE delivered_at IS NOT NULL")
    assert sql.fetchall() == [("slack", True)]
