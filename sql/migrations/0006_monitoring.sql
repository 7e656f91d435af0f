-- Monitoring for the n8n `monitor-alerts` workflow (and anyone else): one view with the numbers that matter, a
-- thresholds table operators edit without touching the workflow, and the state of each alert, so an alert is
-- sent once when it starts, repeated at an interval while it lasts and closed with a "resolved" message, and a
-- restart of n8n re-sends nothing. The decision lives here: the workflow only runs
-- `SELECT * FROM comfyq_alert_transitions()` and sends what it returns.
-- Forward-only: never edit this file once applied; add a new numbered migration instead.

-- One row per alert threshold or window. Alert rows (queue_depth, oldest_queued_seconds, failures,
-- silent_workers, overdue_jobs) fire while the measured value is ABOVE `value`; NULL turns that alert off.
-- Edit with e.g. UPDATE monitor_thresholds SET value = 500 WHERE name = 'queue_depth';
CREATE TABLE monitor_thresholds (
    name        text PRIMARY KEY,
    value       double precision,
    description text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT monitor_thresholds_name_check CHECK (name IN (
        'queue_depth', 'oldest_queued_seconds', 'failures', 'failure_window_seconds', 'silent_workers',
        'heartbeat_silence_seconds', 'overdue_jobs', 'job_timeout_seconds', 'overdue_grace_seconds',
        'repeat_seconds')),
    CONSTRAINT monitor_thresholds_value_range CHECK (value IS NULL OR value >= 0),
    -- Windows and timeouts always have a value; only alert thresholds and the repeat interval may be off.
    CONSTRAINT monitor_thresholds_required CHECK (value IS NOT NULL OR name IN (
        'queue_depth', 'oldest_queued_seconds', 'failures', 'silent_workers', 'overdue_jobs', 'repeat_seconds'))
);

INSERT INTO monitor_thresholds (name, value, description) VALUES
    ('queue_depth', 1000,
     'alert while more jobs than this are queued (all tenants, eligible or waiting for a retry); NULL = off'),
    ('oldest_queued_seconds', 1800,
     'alert while the oldest eligible queued job has waited longer than this many seconds; NULL = off'),
    ('failures', 10,
     'alert while more jobs than this failed (for good) within failure_window_seconds; NULL = off'),
    ('failure_window_seconds', 900,
     'the window the failures alert counts over, in seconds'),
    ('silent_workers', 0,
     'alert while more workers than this (not stopped) sent no heartbeat for heartbeat_silence_seconds; NULL = off'),
    ('heartbeat_silence_seconds', 60,
     'a worker is silent after this many seconds without a heartbeat (keep it above COMFYQ_HEARTBEAT_SECONDS)'),
    ('overdue_jobs', 0,
     'alert while more running jobs than this are past their timeout plus overdue_grace_seconds; NULL = off'),
    ('job_timeout_seconds', 1800,
     'the timeout of jobs submitted without one: keep it equal to the workers'' COMFYQ_JOB_TIMEOUT_SECONDS'),
    ('overdue_grace_seconds', 300,
     'extra time before a running job counts as overdue (a prefetched job is claimed before ComfyUI starts it)'),
    ('repeat_seconds', 3600,
     'an alert that lasts is sent again this often, in seconds; NULL = only when it starts and ends');

-- One row per alert: whether it is active, since when, and when it was last sent.
CREATE TABLE monitor_alert_state (
    alert            text PRIMARY KEY,
    active           boolean     NOT NULL DEFAULT false,
    value            double precision,
    threshold        double precision,
    active_since     timestamptz,
    last_notified_at timestamptz,
    notifications    integer     NOT NULL DEFAULT 0,
    resolved_at      timestamptz,
    checked_at       timestamptz,
    CONSTRAINT monitor_alert_state_alert_check CHECK (alert IN (
        'queue_depth', 'oldest_queued_seconds', 'failures', 'silent_workers', 'overdue_jobs')),
    CONSTRAINT monitor_alert_state_since CHECK (active = (active_since IS NOT NULL)),
    CONSTRAINT monitor_alert_state_notifications_range CHECK (notifications >= 0)
);

INSERT INTO monitor_alert_state (alert)
VALUES ('queue_depth'), ('oldest_queued_seconds'), ('failures'), ('silent_workers'), ('overdue_jobs');

-- "1h 05m", "3m 07s", "42s": durations in messages.
CREATE FUNCTION comfyq_duration(seconds double precision) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN seconds IS NULL THEN 'n/a'
        WHEN seconds < 60 THEN floor(greatest(seconds, 0))::bigint || 's'
        WHEN seconds < 3600 THEN floor(seconds / 60)::bigint || 'm '
                                 || lpad((floor(seconds)::bigint % 60)::text, 2, '0') || 's'
        WHEN seconds < 86400 THEN floor(seconds / 3600)::bigint || 'h '
                                  || lpad((floor(seconds)::bigint % 3600 / 60)::text, 2, '0') || 'm'
        ELSE floor(seconds / 86400)::bigint || 'd ' || (floor(seconds)::bigint % 86400 / 3600) || 'h'
    END
$$;

-- "3", "2.5": a measured value or threshold in messages.
CREATE FUNCTION comfyq_number(value double precision) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN value IS NULL THEN 'off' ELSE trim_scale(round(value::numeric, 1))::text END
$$;

-- The one monitoring view: one row with the queue's health right now and the windows it was measured with.
CREATE VIEW comfyq_monitoring AS
WITH settings AS (
    SELECT coalesce(max(value) FILTER (WHERE name = 'failure_window_seconds'), 900) AS failure_window_seconds,
           coalesce(max(value) FILTER (WHERE name = 'heartbeat_silence_seconds'), 60) AS heartbeat_silence_seconds,
           coalesce(max(value) FILTER (WHERE name = 'job_timeout_seconds'), 1800) AS job_timeout_seconds,
           coalesce(max(value) FILTER (WHERE name = 'overdue_grace_seconds'), 300) AS overdue_grace_seconds
    FROM monitor_thresholds
), depth AS (
    SELECT (SELECT count(*) FROM job_queue WHERE status = 'queued') AS queued_jobs,
           (SELECT count(*) FROM job_queue WHERE status = 'running') AS running_jobs,
           (SELECT extract(epoch FROM now() - min(run_at))::float8
            FROM job_queue WHERE status = 'queued' AND run_at <= now()) AS oldest_queued_seconds
), failed AS (
    SELECT j.error
    FROM job_queue j, settings s
    WHERE j.status = 'failed' AND j.finished_at > now() - make_interval(secs => s.failure_window_seconds)
), top_error AS (
    SELECT coalesce(error ->> 'type', 'unknown') AS error_type, count(*) AS jobs,
           left(min(error ->> 'message'), 300) AS message
    FROM failed GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1
), silent AS (
    SELECT count(*) AS workers, (array_agg(w.id ORDER BY w.heartbeat_at))[1:10] AS ids
    FROM workers w, settings s
    WHERE w.status <> 'stopped' AND w.heartbeat_at < now() - make_interval(secs => s.heartbeat_silence_seconds)
), overdue AS (
    SELECT count(*) AS jobs, (array_agg(j.id ORDER BY j.claimed_at))[1:10] AS ids
    FROM job_queue j, settings s
    WHERE j.status = 'running' AND j.claimed_at < now() - make_interval(
        secs => coalesce(j.timeout_seconds, s.job_timeout_seconds) + s.overdue_grace_seconds)
)
SELECT now() AS measured_at,
       depth.queued_jobs, depth.running_jobs, depth.oldest_queued_seconds,
       (SELECT count(*) FROM failed) AS failed_jobs, settings.failure_window_seconds,
       top_error.error_type AS top_error_type, coalesce(top_error.jobs, 0) AS top_error_jobs,
       top_error.message AS top_error_message,
       silent.workers AS silent_workers, coalesce(silent.ids, '{}') AS silent_worker_ids,
       settings.heartbeat_silence_seconds,
       overdue.jobs AS overdue_jobs, coalesce(overdue.ids, '{}') AS overdue_job_ids,
       settings.job_timeout_seconds, settings.overdue_grace_seconds
FROM settings, depth, silent, overdue LEFT JOIN top_error ON true;

-- Compare the view with the thresholds, move each alert's state and return what to send, one row per alert
-- that started ('firing'), lasts past the repeat interval ('repeat') or ended ('resolved'). Runs under a lock,
-- so two monitors calling it at once send nothing twice; the state is written before anything is sent (at most
-- once: a lost message is covered by the repeat of an alert that lasts).
CREATE FUNCTION comfyq_alert_transitions()
RETURNS TABLE (alert text, transition text, value double precision, threshold double precision,
               active_since timestamptz, notification integer, subject text, message text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('comfyq.alert_transitions'));
    INSERT INTO monitor_alert_state (alert)
    VALUES ('queue_depth'), ('oldest_queued_seconds'), ('failures'), ('silent_workers'), ('overdue_jobs')
    ON CONFLICT DO NOTHING;
    RETURN QUERY
    WITH m AS (
        SELECT * FROM comfyq_monitoring
    ), measured AS (
        SELECT x.alert, x.value, t.value AS threshold, x.detail,
               (t.value IS NOT NULL AND x.value > t.value) AS firing
        FROM m CROSS JOIN LATERAL (VALUES
            ('queue_depth', m.queued_jobs::float8,
             format('%s jobs queued, %s running', m.queued_jobs, m.running_jobs)),
            ('oldest_queued_seconds', coalesce(m.oldest_queued_seconds, 0),
             format('the oldest queued job has waited %s (%s jobs queued)',
                    comfyq_duration(m.oldest_queued_seconds), m.queued_jobs)),
            ('failures', m.failed_jobs::float8,
             format('%s jobs failed in the last %s', m.failed_jobs, comfyq_duration(m.failure_window_seconds))
             || CASE WHEN m.top_error_type IS NULL THEN ''
                     ELSE format('; top error: %s (%s jobs): %s', m.top_error_type, m.top_error_jobs,
                                 coalesce(m.top_error_message, '')) END),
            ('silent_workers', m.silent_workers::float8,
             format('%s workers without a heartbeat for %s', m.silent_workers,
                    comfyq_duration(m.heartbeat_silence_seconds))
             || CASE WHEN m.silent_workers > 0 THEN ': ' || array_to_string(m.silent_worker_ids, ', ') ELSE '' END),
            ('overdue_jobs', m.overdue_jobs::float8,
             format('%s jobs running past their timeout', m.overdue_jobs)
             || CASE WHEN m.overdue_jobs > 0 THEN ': ' || array_to_string(m.overdue_job_ids, ', ') ELSE '' END)
        ) AS x(alert, value, detail)
        LEFT JOIN monitor_thresholds t ON t.name = x.alert
    ), decided AS (
        SELECT ms.*, s.active_since AS was_since, s.notifications AS sent,
               CASE
                   WHEN ms.firing AND NOT s.active THEN 'firing'
                   WHEN ms.firing AND r.value IS NOT NULL
                        AND s.last_notified_at <= now() - make_interval(secs => r.value) THEN 'repeat'
                   WHEN NOT ms.firing AND s.active THEN 'resolved'
               END AS transition
        FROM measured ms
        JOIN monitor_alert_state s ON s.alert = ms.alert
        LEFT JOIN monitor_thresholds r ON r.name = 'repeat_seconds'
    ), moved AS (
        UPDATE monitor_alert_state s
        SET active = d.firing,
            value = d.value,
            threshold = d.threshold,
            checked_at = now(),
            active_since = CASE WHEN NOT d.firing THEN NULL
                                WHEN d.transition = 'firing' THEN now()
                                ELSE s.active_since END,
            last_notified_at = CASE WHEN d.transition IS NULL THEN s.last_notified_at ELSE now() END,
            notifications = CASE d.transition WHEN 'firing' THEN 1
                                              WHEN 'repeat' THEN s.notifications + 1
                                              ELSE s.notifications END,
            resolved_at = CASE d.transition WHEN 'resolved' THEN now()
                                            WHEN 'firing' THEN NULL
                                            ELSE s.resolved_at END
        FROM decided d
        WHERE s.alert = d.alert
        RETURNING s.alert
    )
    SELECT d.alert, d.transition, d.value, d.threshold,
           CASE WHEN d.transition = 'firing' THEN now() ELSE d.was_since END,
           CASE d.transition WHEN 'firing' THEN 1 WHEN 'repeat' THEN d.sent + 1 ELSE d.sent END,
           format('[comfyq] %s %s: %s (threshold %s)',
                  CASE d.transition WHEN 'firing' THEN 'FIRING' WHEN 'repeat' THEN 'STILL FIRING'
                                    ELSE 'RESOLVED' END,
                  d.alert, comfyq_number(d.value), comfyq_number(d.threshold)),
           format('[comfyq] %s %s%s: %s (value %s, threshold %s)',
                  CASE d.transition WHEN 'firing' THEN 'FIRING' WHEN 'repeat' THEN 'STILL FIRING'
                                    ELSE 'RESOLVED' END,
                  d.alert,
                  CASE d.transition
                      WHEN 'firing' THEN ''
                      WHEN 'repeat' THEN ' for ' || comfyq_duration(extract(epoch FROM now() - d.was_since)::float8)
                      ELSE ' after ' || comfyq_duration(extract(epoch FROM now() - d.was_since)::float8)
                  END,
                  d.detail, comfyq_number(d.value), comfyq_number(d.threshold))
    FROM decided d
    WHERE d.transition IS NOT NULL AND EXISTS (SELECT 1 FROM moved WHERE moved.alert = d.alert)
    ORDER BY d.alert;
END;
$$;
