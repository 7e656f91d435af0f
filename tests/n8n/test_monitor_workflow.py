"""The `monitor-alerts` workflow on its real schedule (every 2 s here, COMFYQ_MONITOR_CRON) in a real n8n: a
queue backing up past its threshold sends exactly one Slack message (to a local receiver) and one email (to a
local SMTP server) with the numbers in them, nothing more while it lasts, and one "resolved" message of each
when it clears; a restart of n8n in between sends nothing again."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from comfyq.db import connect_once
from tests.e2e_support import wait_until
from tests.n8n.conftest import N8n, api_session

pytestmark = [pytest.mark.n8n, pytest.mark.slow]


def scalar(n8n: N8n, query: str, *params: Any) -> Any:
    conn = connect_once(n8n.db_url)
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            row = cur.fetchone()
            return row[0] if row else None
    finally:
        conn.close()


def checked_at(n8n: N8n) -> datetime:
    """When the monitor last ran (each run stamps every alert's state; the epoch before the first run)."""
    value = scalar(n8n, "SELECT checked_at FROM monitor_alert_state WHERE alert = 'queue_depth'")
    return value or datetime.fromtimestamp(0, UTC)


def wait_for_monitor_runs(n8n: N8n, runs: int) -> None:
    """Until the monitor has run `runs` more times."""
    for _ in range(runs):
        before = checked_at(n8n)

        def ran(before: datetime = before) -> bool:
            return checked_at(n8n) > before

        wait_until(ran, 20, "the next monitor run", interval=0.2)


def test_a_backed_up_queue_alerts_once_then_resolves(fresh: N8n) -> None:
    scalar(fresh, "UPDATE monitor_thresholds SET value = 3 WHERE name = 'queue_depth' RETURNING name")
    wait_for_monitor_runs(fresh, 1)
    assert fresh.slack_texts() == [] and fresh.mailbox.received() == []

    # Five jobs at once and no worker: the queue is past its threshold of 3.
    jobs = [{"workflow": "txt2img", "params": {"prompt": f"backlog {i}"}} for i in range(5)]
    response = api_session(fresh).post(f"{fresh.api_url}/jobs/batch", json={"jobs": jobs}, timeout=10)
    assert response.status_code == 202

    wait_until(lambda: fresh.slack_texts() and fresh.mailbox.received(), 30, "the alert on Slack and by email")
    [text] = fresh.slack_texts()
    assert text.startswith("[comfyq] FIRING queue_depth:")
    assert "5 jobs queued" in text and "(value 5, threshold 3)" in text
    [mail] = fresh.mailbox.received()
    assert mail["Subject"] == "[comfyq] FIRING queue_depth: 5 (threshold 3)"
    assert mail["To"] == "ops@example.test" and mail["From"] == "comfyq@example.test"
    assert "5 jobs queued" in mail.get_content()

    # Still backed up: the next runs send nothing (the repeat interval is an hour).
    wait_for_monitor_runs(fresh, 2)
    assert len(fresh.slack_texts()) == 1 and len(fresh.mailbox.received()) == 1
    assert scalar(fresh, "SELECT notifications FROM monitor_alert_state WHERE alert = 'queue_depth'") == 1

    # n8n restarts: the alert's state is in Postgres, so nothing is sent again.
    fresh.restart()
    wait_for_monitor_runs(fresh, 2)
    assert len(fresh.slack_texts()) == 1 and len(fresh.mailbox.received()) == 1

    # The queue drains: one "resolved" message of each.
    scalar(fresh, "WITH d AS (DELETE FROM job_queue RETURNING 1) SELECT count(*) FROM d")
    wait_until(lambda: len(fresh.slack_texts()) == 2 and len(fresh.mailbox.received()) == 2, 30,
               "the resolved message on Slack and by email")
    resolved = fresh.slack_texts()[1]
    assert resolved.startswith("[comfyq] RESOLVED queue_depth after ") and "0 jobs queued" in resolved
    assert fresh.mailbox.received()[1]["Subject"] == "[comfyq] RESOLVED queue_depth: 0 (threshold 3)"
    wait_for_monitor_runs(fresh, 1)
    assert len(fresh.slack_texts()) == 2 and len(fresh.mailbox.received()) == 2
