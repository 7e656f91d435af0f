-- Live job streams (comfyq/job_events.py). Events are job_logs rows with their job's tenant, workflow and, for
-- a success, its outputs; `id` is the stream's event id (Last-Event-ID).

-- name: events_listen
LISTEN comfyq_job_events; LISTEN comfyq_job_progress; LISTEN comfyq_jobs;

-- name: events_after
-- The next rows after a cursor, in id order; the caller decides which of them are safe to hand out (gaps).
SELECT l.id, l.job_id, l.event, l.from_status, l.to_status, l.attempt, l.worker_id, l.message, l.details,
       l.created_at, j.tenant, j.workflow, j.outputs, j.error, j.progress, j.current_node
FROM job_logs l JOIN job_queue j ON j.id = l.job_id
WHERE l.id > %(after)s
ORDER BY l.id
LIMIT %(limit)s;

-- name: events_between
-- A resume (Last-Event-ID): one tenant's rows in (after, upto], the part of the log a new subscriber has not seen
-- and the live feed has already passed.
SELECT l.id, l.job_id, l.event, l.from_status, l.to_status, l.attempt, l.worker_id, l.message, l.details,
       l.created_at, j.tenant, j.workflow, j.outputs, j.error, j.progress, j.current_node
FROM job_logs l JOIN job_queue j ON j.id = l.job_id
WHERE l.id > %(after)s AND l.id <= %(upto)s AND j.tenant = %(tenant)s
  AND (%(job_id)s::bigint IS NULL OR l.job_id = %(job_id)s::bigint)
ORDER BY l.id
LIMIT %(limit)s;

-- name: events_last_id
SELECT coalesce(max(id), 0) AS id FROM job_logs;

-- name: events_job_progress
SELECT id AS job_id, tenant, workflow, status, progress, current_node, attempts AS attempt, worker_id
FROM job_queue WHERE id = ANY(%(ids)s::bigint[]) AND status = 'running';

-- name: events_job_snapshot
-- A job's current state for a new subscriber, with the id of its newest visible event.
SELECT j.*, (SELECT max(l.id) FROM job_logs l WHERE l.job_id = j.id) AS last_event_id
FROM job_queue j WHERE j.id = %(id)s AND j.tenant = %(tenant)s;
