-- Read-only views for dashboards (Grafana) and other readers, and the role `comfyq_grafana` that may read them and
-- nothing else. Forward-only: never edit this file once applied; add a new numbered migration instead.
--
-- The views run with their owner's rights (the migration runner), so the role needs SELECT on the views only,
-- never on the tables behind them. Each view keeps the columns a panel filters on (created_at, finished_at) plain,
-- so a time filter on the view reaches the table's index. Percentiles are left to the reader
-- (percentile_cont(0.95) WITHIN GROUP (ORDER BY seconds)): a view cannot know the time range of a panel.

-- Live depth by status and priority: only queued and running rows, both served by partial indexes.
CREATE VIEW stats_queue_depth AS
SELECT status,
       priority,
       count(*) AS jobs,
       -- queued but not yet eligible: a retry waiting for its backoff, or a job submitted with run_at later
       count(*) FILTER (WHERE status = 'queued' AND run_at > now()) AS delayed_jobs,
       min(created_at) FILTER (WHERE status = 'queued') AS oldest_queued_at,
       extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'queued'))::float8
           AS oldest_queued_age_seconds,
       extract(epoch FROM now() - min(claimed_at) FILTER (WHERE status = 'running'))::float8
           AS longest_running_seconds
FROM job_queue
WHERE status IN ('queued', 'running')
GROUP BY status, priority;

-- The whole queue in one row, for single-value panels (and for an exporter turning it into gauges).
CREATE VIEW stats_queue_summary AS
SELECT count(*) FILTER (WHERE status = 'queued') AS queued,
       count(*) FILTER (WHERE status = 'queued' AND run_at <= now()) AS eligible,
       count(*) FILTER (WHERE status = 'queued' AND run_at > now()) AS delayed,
       count(*) FILTER (WHERE status = 'running') AS running,
       -- running past their lease: the worker is gone and no live worker has rescued them yet
       count(*) FILTER (WHERE status = 'running' AND lease_expires_at < now()) AS expired_leases,
       min(created_at) FILTER (WHERE status = 'queued') AS oldest_queued_at,
       coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE status = 'queued')), 0)::float8
           AS oldest_queued_age_seconds,
       -- how long the job that could run first has been waiting since it became eligible
       coalesce(extract(epoch FROM now() - min(run_at) FILTER (WHERE status = 'queued' AND run_at <= now())), 0)
           ::float8 AS longest_wait_seconds,
       coalesce(extract(epoch FROM now() - min(claimed_at) FILTER (WHERE status = 'running')), 0)::float8
           AS longest_running_seconds
FROM job_queue
WHERE status IN ('queued', 'running');

-- Every state change of every job (job_logs), with the job's workflow and tenant: throughput, outcomes, retries,
-- jobs per worker. Progress rows are left out.
CREATE VIEW stats_job_events AS
SELECT l.id,
       l.created_at,
       l.job_id,
       j.tenant,
       coalesce(j.workflow, '(raw graph)') AS workflow,
       j.priority,
       l.event,
       l.from_status,
       l.to_status,
       l.attempt,
       l.worker_id,
       l.details ->> 'error_type' AS error_type,
       l.message,
       (l.duration_ms / 1000.0)::float8 AS duration_seconds
FROM job_logs l
JOIN job_queue j ON j.id = l.job_id
WHERE l.event <> 'progress';

-- One row per measured phase: 'queue_wait' (eligible to claimed, one per attempt) and 'execution' (claimed to the
-- attempt's end; outcome tells how it ended: succeeded, failed, retry_scheduled, canceled, released).
CREATE VIEW stats_job_durations AS
SELECT l.id,
       l.created_at,
       l.job_id,
       j.tenant,
       coalesce(j.workflow, '(raw graph)') AS workflow,
       CASE WHEN l.event = 'claimed' THEN 'queue_wait' ELSE 'execution' END AS phase,
       l.event AS outcome,
       l.attempt,
       l.worker_id,
       (l.duration_ms / 1000.0)::float8 AS seconds
FROM job_logs l
JOIN job_queue j ON j.id = l.job_id
WHERE l.duration_ms IS NOT NULL
  AND (l.event = 'claimed'
       OR (l.from_status = 'running'
           AND l.event IN ('succeeded', 'failed', 'retry_scheduled', 'canceled', 'released')));

-- Jobs that ended failed or expired, with the parts of job_queue.error a reader groups by.
CREATE VIEW stats_job_failures AS
SELECT id AS job_id,
       tenant,
       coalesce(workflow, '(raw graph)') AS workflow,
       status,
       attempts,
       worker_id,
       finished_at,
       coalesce(error ->> 'type', 'unknown') AS error_type,
       error ->> 'message' AS message,
       error ->> 'node' AS node,
       error #>> '{details,node_type}' AS node_type,
       error #>> '{details,exception_type}' AS exception_type
FROM job_queue
WHERE status IN ('failed', 'expired');

-- One row per node blamed for a failed job: the node of an execution error, or each node ComfyUI named in the
-- node_errors of a rejected graph (validation_error).
CREATE VIEW stats_failing_nodes AS
SELECT j.id AS job_id,
       j.tenant,
       coalesce(j.workflow, '(raw graph)') AS workflow,
       j.finished_at,
       coalesce(j.error ->> 'type', 'unknown') AS error_type,
       j.error ->> 'node' AS node,
       coalesce(j.error #>> '{details,node_type}', 'unknown') AS node_type,
       j.error #>> '{details,exception_type}' AS exception_type
FROM job_queue j
WHERE j.status IN ('failed', 'expired') AND j.error ->> 'node' IS NOT NULL
UNION ALL
SELECT j.id,
       j.tenant,
       coalesce(j.workflow, '(raw graph)'),
       j.finished_at,
       coalesce(j.error ->> 'type', 'unknown'),
       ne.key,
       coalesce(ne.value ->> 'class_type', 'unknown'),
       ne.value #>> '{errors,0,type}'
FROM job_queue j
CROSS JOIN LATERAL jsonb_each(j.error #> '{details,node_errors}') AS ne
WHERE j.status IN ('failed', 'expired') AND j.error ->> 'node' IS NULL
  AND jsonb_typeof(j.error #> '{details,node_errors}') = 'object';

-- Workers with their heartbeat age and the job they hold. `alive` uses 30 s, three times the default
-- COMFYQ_HEARTBEAT_SECONDS (the API's /stats counts the same way); heartbeat_age_seconds lets a reader pick another.
CREATE VIEW stats_workers AS
SELECT w.id AS worker_id,
       w.host,
       w.pid,
       w.comfyui_url,
       w.status,
       CASE WHEN w.status = 'stopped' THEN 'stopped'
            WHEN w.heartbeat_at > now() - interval '30 seconds' THEN w.status
            ELSE 'silent' END AS state,
       (w.status <> 'stopped' AND w.heartbeat_at > now() - interval '30 seconds') AS alive,
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
       extract(epoch FROM now() - j.claimed_at)::float8 AS current_job_seconds
FROM workers w
LEFT JOIN job_queue j ON j.id = w.current_job_id AND j.status = 'running';

-- The dashboards' role. It logs in (the datasource connects as it) but gets no password here: the operator sets
-- one with ALTER ROLE comfyq_grafana PASSWORD '...'. Roles belong to the whole server, not to one database, so
-- the role may exist already (another database on the same server, or made by hand): then it is left as it is.
-- Two databases migrated at once may both see it missing; the loser's duplicate is ignored.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'comfyq_grafana') THEN
        CREATE ROLE comfyq_grafana LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION;
        -- Defence in depth: its sessions refuse writes, and no dashboard query can hold the queue for long.
        ALTER ROLE comfyq_grafana SET default_transaction_read_only = on;
        ALTER ROLE comfyq_grafana SET statement_timeout = '30s';
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

-- SELECT on the views only; no right on any table, sequence or function of comfyq.
GRANT USAGE ON SCHEMA public TO comfyq_grafana;
GRANT SELECT ON stats_queue_depth, stats_queue_summary, stats_job_events, stats_job_durations, stats_job_failures,
    stats_failing_nodes, stats_workers TO comfyq_grafana;
