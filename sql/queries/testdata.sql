-- Sample data for dashboards and their tests (grafana/sample_data.py): no production path runs these.

-- name: shift_time_back
-- Moves every stored timestamp back by %(seconds)s, so simulated traffic spreads over hours in seconds.
WITH shift AS (
    SELECT make_interval(secs => %(seconds)s) AS s
), jobs AS (
    UPDATE job_queue SET
        created_at = created_at - shift.s, updated_at = updated_at - shift.s, run_at = run_at - shift.s,
        started_at = started_at - shift.s, claimed_at = claimed_at - shift.s, finished_at = finished_at - shift.s,
        lease_expires_at = lease_expires_at - shift.s, deadline = deadline - shift.s,
        callback_claimed_at = callback_claimed_at - shift.s
    FROM shift
    RETURNING 1
), logs AS (
    UPDATE job_logs SET created_at = created_at - shift.s FROM shift RETURNING 1
), workers AS (
    UPDATE workers SET started_at = started_at - shift.s, heartbeat_at = heartbeat_at - shift.s,
                       stopped_at = stopped_at - shift.s
    FROM shift
    RETURNING 1
)
SELECT (SELECT count(*) FROM jobs) AS jobs, (SELECT count(*) FROM logs) AS logs, (SELECT count(*) FROM workers) AS workers;

-- name: test_log_event
-- One job_logs row (tests of the event streams: two of these in two open transactions commit out of order).
INSERT INTO job_logs (job_id, event, from_status, to_status, attempt, message)
VALUES (%(job_id)s, 'cancel_requested', 'queued', 'queued', 0, %(message)s)
RETURNING id;

-- name: release_delayed_jobs
-- Benchmarks: every queued job held back by a far run_at becomes due at once (workers and streams start first).
UPDATE job_queue SET run_at = now() WHERE status = 'queued' AND run_at > now();
