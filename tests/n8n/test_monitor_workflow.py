"""The `monitor-alerts` workflow on a fast schedule (every 2 s here) in a real n8n with $env blocked: a queue backing
up past its threshold sends exactly one Slack message (to a Slack Web API stand-in) and one email (to a local SMTP
server) naming the installation, with the numbers, the likely cause, the next step and the links, nothing more
while it lasts, and one "resolved" message of each when it clears; a restart of n8n in between sends nothing again.
Delivery is at least once per channel: while Slack is down the email still goes, the run fails and the error
workflow says so by email, and once Slack is back it gets the FIRING before the RESOLVED."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from comfyq.db import connect_once
from tests.e2e_support import wait_until
from tests.n8n.conftest import SLACK_CHANNEL, N8n, api_session

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
    assert text.startswith("[comfyq-test] FIRING queue_depth: 5 jobs queued, 0 running (value 5, threshold 3)")
    assert "Likely cause: no worker is alive" in text and "Next step: start workers" in text
    assert "Dashboard: http://grafana.test:3000/d/comfyq-queue-overview" in text
    assert f"Jobs: {fresh.api_url}/jobs?status=queued" in text
    assert "Runbook: https://docs.test/n8n.md#queue_depth" in text
    [post] = fresh.slack.posts
    assert post["channel"] == SLACK_CHANNEL
    assert fresh.slack.tokens[0] == f"Bearer {fresh.config['COMFYQ_SLACK_BOT_TOKEN']}"
    [mail] = fresh.mailbox.received()
    assert mail["Subject"] == "[comfyq-test] FIRING queue_depth: 5 (threshold 3)"
    assert mail["To"] == "ops@example.test" and mail["From"] == "comfyq@example.test"
    assert mail.get_content().replace("\r\n", "\n").strip() == text

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
    assert resolved.startswith("[comfyq-test] RESOLVED queue_depth after ") and "0 jobs queued" in resolved
    assert "Likely cause" not in resolved
    assert fresh.mailbox.received()[1]["Subject"] == "[comfyq-test] RESOLVED queue_depth: 0 (threshold 3)"
    wait_for_monitor_runs(fresh, 1)
    assert len(fresh.slack_texts()) == 2 and len(fresh.mailbox.received()) == 2


@pytest.mark.parametrize("failure", ["down", "refuse"])
def test_slack_gets_what_it_missed_in_order_and_the_error_workflow_emails(fresh: N8n, failure: str) -> None:
    setattr(fresh.slack, failure, True)  # Slack is down (503) or refuses the post (ok: false)
    scalar(fresh, "UPDATE monitor_thresholds SET value = 0 WHERE name = 'queue_depth' RETURNING name")
    api_session(fresh).post(f"{fresh.api_url}/jobs", json={"workflow": "txt2img", "params": {"prompt": "x"}},
                            timeout=10).raise_for_status()

    def subjects() -> list[str]:
        return [str(mail["Subject"]) for mail in fresh.mailbox.received()]

    # The email goes; the Slack post fails, the run fails, and the error workflow says so by email.
    wait_until(lambda: any("n8n workflow failed: comfyq: monitor and alert" in s for s in subjects()), 60,
               "the error workflow's email")
    assert "[comfyq-test] FIRING queue_depth: 1 (threshold 0)" in subjects()
    failure_mail = next(m for m in fresh.mailbox.received() if "workflow failed" in str(m["Subject"]))
    body = failure_mail.get_content()
    assert "not delivered by slack" in body and "sent again on the next run" in body and "Execution: " in body
    assert fresh.slack_texts() == []

    # The alert ends while Slack is still out: the email gets RESOLVED, Slack nothing yet.
    scalar(fresh, "WITH d AS (DELETE FROM job_queue RETURNING 1) SELECT count(*) FROM d")
    wait_until(lambda: "[comfyq-test] RESOLVED queue_depth: 0 (threshold 0)" in subjects(), 30, "RESOLVED by email")

    # Slack is back: it gets the FIRING it missed, then the RESOLVED, once each.
    setattr(fresh.slack, failure, False)
    wait_until(lambda: len(fresh.slack_texts()) == 2, 30, "the missed messages on Slack")
    fired, resolved = fresh.slack_texts()
    assert fired.startswith("[comfyq-test] FIRING queue_depth") and resolved.startswith("[comfyq-test] RESOLVED")
    wait_for_monitor_runs(fresh, 2)
    assert len(fresh.slack_texts()) == 2
    assert scalar(fresh, "SELECT count(*) FROM monitor_notifications WHERE delivered_at IS NULL") == 0
    assert [s for s in subjects() if "queue_depth" in s] == [
        "[comfyq-test] FIRING queue_depth: 1 (threshold 0)", "[comfyq-test] RESOLVED queue_depth: 0 (threshold 0)"]
