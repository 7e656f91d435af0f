-- Outages are not job failures (docs/operations.md, "Outages"): a prompt that ComfyUI lost in a restart is
-- submitted again under the same attempt ('resubmitted'), and a wait for a dependency that was down is
-- recorded as its own event ('outage'); neither spends an attempt. Workers show which dependencies they see
-- down. Forward-only: never edit this file once applied.

ALTER TABLE job_logs DROP CONSTRAINT job_logs_event_check;

ALTER TABLE job_logs ADD CONSTRAINT job_logs_event_check CHECK (event IN (
    'queued', 'claimed', 'progress', 'retry_scheduled', 'rescued', 'released', 'succeeded', 'failed',
    'canceled', 'cancel_requested', 'expired', 'requeued', 'callback_delivered', 'callback_failed',
    'resubmitted', 'outage'));

-- Names of the dependencies the worker sees down right now ('{}' when all are up), written with each heartbeat.
ALTER TABLE workers ADD COLUMN dependencies_down text[] NOT NULL DEFAULT '{}';

-- A cancel of a running job reaches its worker at once: the worker LISTENs on comfyq_cancel and stops the
-- prompt (deletes it from ComfyUI's queue, or interrupts it) instead of waiting for its next heartbeat.
CREATE FUNCTION comfyq_notify_cancel() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('comfyq_cancel', NEW.id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER job_queue_notify_cancel
    AFTER UPDATE OF cancel_requested ON job_queue
    FOR EACH ROW WHEN (NEW.cancel_requested AND NOT OLD.cancel_requested AND NEW.status = 'running')
    EXECUTE FUNCTION comfyq_notify_cancel();

-- The Workers dashboard shows what each worker sees down (a new last column: CREATE OR REPLACE keeps the rest).
CREATE OR REPLACE VIEW stats_workers AS
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
       extract(epoch FROM now() - j.claimed_at)::float8 AS current_job_seconds,
       array_to_string(w.dependencies_down, ', ') AS dependencies_down
FROM workers w
LEFT JOIN job_queue j ON j.id = w.current_job_id AND j.status = 'running';
