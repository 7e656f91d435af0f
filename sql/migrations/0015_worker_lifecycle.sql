-- A worker's lifecycle: running -> draining (first signal) -> stopped (clean exit); a worker that misses heartbeats
-- for COMFYQ_WORKER_DEAD_AFTER_SECONDS is set to 'dead' by the maintenance tick of any live worker (the
-- `declare_dead_workers` query), and returns to running or draining by itself if it heartbeats again (it was frozen,
-- not killed). Until now a killed worker stayed 'running' for ever, so the silent_workers alert never cleared and
-- the only way out was an UPDATE by hand. `comfyq workers forget <id>` deletes the row of a dead or stopped worker.
-- Dead says nothing about the worker's jobs: they are rescued when their leases expire, as before.
-- Forward-only: never edit this file once applied; add a new numbered migration instead.

ALTER TABLE workers DROP CONSTRAINT workers_status_check;
ALTER TABLE workers ADD CONSTRAINT workers_status_check CHECK (status IN ('running', 'draining', 'stopped', 'dead'));

-- The Workers dashboard: a dead worker is shown as such (not 'silent') and is not alive.
CREATE OR REPLACE VIEW stats_workers AS
SELECT w.id AS worker_id,
       w.host,
       w.pid,
       w.comfyui_url,
       w.status,
       CASE WHEN w.status IN ('stopped', 'dead') THEN w.status
            WHEN w.heartbeat_at > now() - interval '30 seconds' THEN w.status
            ELSE 'silent' END AS state,
       (w.status NOT IN ('stopped', 'dead') AND w.heartbeat_at > now() - interval '30 seconds') AS alive,
       w.started_at,
       w.heartbeat_at,
       extract(epoch FROM now() - w.heartbeat_at)::float8 AS heartbeat_age_seconds,
       w.stopped_at,
       w.jobs_done,
       (SELECT count(*) FROM job_queue r WHERE r.status = 'running' AND r.worker_id = w.id) AS running_jobs,
       w.current_job_id,
       coalesce(j.workflow, CASE WHEN j.id IS NOT NULL THEN '(raw graph)' END) AS current_workflow,
       j.progress AS current_progress,
       j.current_node,
       extract(epoch FROM now() - j.claimed_at)::float8 AS current_job_seconds,
       array_to_string(w.dependencies_down, ', ') AS dependencies_down
FROM workers w
LEFT JOIN job_queue j ON j.id = w.current_job_id AND j.status = 'running';

-- silent_workers counts the workers nobody has taken over from yet: silent and not declared dead (no live worker's
-- tick has run, or it went quiet only now), dead but still holding running jobs (their leases not rescued yet), or
-- dead while no worker is live at all. So a killed worker fires the alert, and the alert resolves once it is
-- declared dead, its jobs are rescued and another worker heartbeats; a dead worker stays listed (comfyq workers,
-- Grafana) until it is forgotten or runs again. live_workers and dead_workers are new columns at the end.
CREATE OR REPLACE VIEW comfyq_monitoring AS
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
), fleet AS (
    SELECT w.id, w.status, w.heartbeat_at,
           (w.status <> 'dead'
            AND w.heartbeat_at >= now() - make_interval(secs => s.heartbeat_silence_seconds)) AS live,
           EXISTS (SELECT 1 FROM job_queue j WHERE j.status = 'running' AND j.worker_id = w.id) AS holds_jobs
    FROM workers w, settings s
    WHERE w.status <> 'stopped'
), silent AS (
    SELECT count(*) AS workers, (array_agg(f.id ORDER BY f.heartbeat_at))[1:10] AS ids
    FROM fleet f
    WHERE NOT f.live
      AND (f.status <> 'dead' OR f.holds_jobs OR NOT EXISTS (SELECT 1 FROM fleet l WHERE l.live))
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
       settings.job_timeout_seconds, settings.overdue_grace_seconds,
       (SELECT count(*) FROM fleet WHERE live) AS live_workers,
       (SELECT count(*) FROM fleet WHERE status = 'dead') AS dead_workers
FROM settings, depth, silent, overdue LEFT JOIN top_error ON true;

UPDATE monitor_thresholds
SET description = 'alert while more workers than this are silent for heartbeat_silence_seconds and not taken over: '
                  'not declared dead yet, dead with running jobs not rescued yet, or dead with no live worker left; '
                  'NULL = off'
WHERE name = 'silent_workers';
