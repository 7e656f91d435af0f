-- Queue core. Every state transition writes its job_logs row in the same statement, so the log can never
-- disagree with the row. duration_ms is the time spent in the state being left.

-- name: listen_jobs
-- Idle workers sleep on this channel; the triggers in 0001_initial.sql notify it.
LISTEN comfyq_jobs;

-- name: listen_cancels
-- Each worker hears cancels of running jobs at once (the trigger in 0011_outages.sql); the payload is the job id.
LISTEN comfyq_cancel;

-- name: ping
SELECT 1;

-- name: enqueue_jobs
-- One round trip for one job or ten thousand: the rows travel as one JSON array.
WITH input AS (
    SELECT j, ord FROM jsonb_array_elements(%(jobs)s::jsonb) WITH ORDINALITY AS e(j, ord)
), inserted AS (
    INSERT INTO job_queue (tenant, workflow, params, graph, priority, max_attempts, timeout_seconds,
                           deadline, run_at, idempotency_key, callback_url, dedupe_hash)
    SELECT coalesce(j ->> 'tenant', 'default'),
           j ->> 'workflow',
           coalesce(j -> 'params', '{}'::jsonb),
           j -> 'graph',
           coalesce((j ->> 'priority')::int, 0),
           coalesce((j ->> 'max_attempts')::int, 3),
           (j ->> 'timeout_seconds')::int,
           (j ->> 'deadline')::timestamptz,
           coalesce((j ->> 'run_at')::timestamptz, now()),
           j ->> 'idempotency_key',
           j ->> 'callback_url',
           j ->> 'dedupe_hash'
    FROM input
    ORDER BY ord
    RETURNING id, status, priority, attempts, created_at
), logged AS (
    INSERT INTO job_logs (job_id, event, to_status, attempt)
    SELECT id, 'queued', 'queued', attempts FROM inserted
)
SELECT id, status, priority, created_at FROM inserted ORDER BY id;

-- name: claim_jobs
-- Up to %(limit)s jobs, highest priority first, then the longest eligible; SKIP LOCKED lets any number of
-- workers claim at once. A ComfyUI worker takes one at a time; consumers of short jobs take several per trip.
WITH next AS (
    SELECT id, run_at AS eligible_at
    FROM job_queue
    WHERE status = 'queued' AND run_at <= now() AND (deadline IS NULL OR deadline > now())
    ORDER BY priority DESC, run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT array_agg(id) AS ids, array_agg(eligible_at) AS eligible FROM next
)
SELECT claimed.* FROM picked, comfyq_take_claims(picked.ids, picked.eligible, %(worker_id)s, %(lease_seconds)s) claimed;

-- name: renew_leases
-- Extends the leases a worker still holds; returns them with their cancel flag so a cancel reaches the worker.
UPDATE job_queue j
SET lease_expires_at = now() + make_interval(secs => %(lease_seconds)s)
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS held(id, attempt)
WHERE j.id = held.id AND j.attempts = held.attempt AND j.status = 'running' AND j.worker_id = %(worker_id)s
RETURNING j.id, j.attempts, j.cancel_requested;

-- name: set_prompt_id
UPDATE job_queue SET prompt_id = %(prompt_id)s, updated_at = now()
WHERE id = %(id)s AND attempts = %(attempt)s AND status = 'running' AND worker_id = %(worker_id)s
RETURNING id;

-- name: update_progress
UPDATE job_queue SET progress = %(progress)s, current_node = %(current_node)s, updated_at = now()
WHERE id = %(id)s AND attempts = %(attempt)s AND status = 'running' AND worker_id = %(worker_id)s
RETURNING id;

-- name: complete_jobs
-- Marks attempts succeeded, one or many in one statement: %(done)s is a JSON array of {id, attempt, outputs}.
-- Fenced by attempt and worker: a late finish of a rescued attempt matches no row and changes nothing.
WITH held AS (
    SELECT * FROM jsonb_to_recordset(%(done)s::jsonb) AS h(id bigint, attempt int, outputs jsonb)
), done AS (
    UPDATE job_queue j
    SET status = 'succeeded', outputs = held.outputs, error = NULL, progress = 1, current_node = NULL,
        lease_expires_at = NULL, finished_at = now(), updated_at = now()
    FROM held
    WHERE j.id = held.id AND j.attempts = held.attempt AND j.status = 'running' AND j.worker_id = %(worker_id)s
    RETURNING j.id, j.attempts, j.worker_id, j.claimed_at, jsonb_array_length(held.outputs) AS output_count
), logged AS (
    INSERT INTO job_logs (job_id, event, from_status, to_status, attempt, worker_id, duration_ms, details)
    SELECT id, 'succeeded', 'running', 'succeeded', attempts, worker_id,
           greatest(0, (extract(epoch FROM now() - claimed_at) * 1000)::bigint),
           jsonb_build_object('outputs', output_count)
    FROM done
), worker AS (
    UPDATE workers w
    SET current_job_id = CASE WHEN w.current_job_id IN (SELECT id FROM done) THEN NULL ELSE w.current_job_id END,
        jobs_done = w.jobs_done + (SELECT count(*) FROM done)
    WHERE w.id = %(worker_id)s AND EXISTS (SELECT 1 FROM done)
)
SELECT id, 'succeeded' AS status FROM done ORDER BY id;

-- name: fail_attempt
-- A failed attempt goes back to the queue after %(delay_seconds)s when it is retryable and attempts remain,
-- else the job fails for good. Fenced like complete_jobs.
WITH prev AS (
    SELECT id FROM job_queue
    WHERE id = %(id)s AND attempts = %(attempt)s AND status = 'running' AND worker_id = %(worker_id)s
    FOR UPDATE
), upd AS (
    UPDATE job_queue j
    SET status = CASE WHEN %(retryable)s AND j.attempts < j.max_attempts THEN 'queued' ELSE 'failed' END,
        run_at = CASE WHEN %(retryable)s AND j.attempts < j.max_attempts
                      THEN now() + make_interval(secs => %(delay_seconds)s) ELSE j.run_at END,
        finished_at = CASE WHEN %(retryable)s AND j.attempts < j.max_attempts THEN NULL ELSE now() END,
        error = %(error)s::jsonb,
        lease_expires_at = NULL,
        updated_at = now()
    FROM prev
    WHERE j.id = prev.id
    RETURNING j.id, j.status, j.attempts, j.worker_id, j.claimed_at, j.run_at
), logged AS (
    INSERT INTO job_logs (job_id, event, from_status, to_status, attempt, worker_id, message, details,
                          duration_ms)
    SELECT id, CASE status WHEN 'queued' THEN 'retry_scheduled' ELSE 'failed' END, 'running', status,
           attempts, worker_id, %(error)s::jsonb ->> 'message',
           jsonb_build_object('error_type', %(error)s::jsonb ->> 'type', 'retry_at', run_at),
           greatest(0, (extract(epoch FROM now() - claimed_at) * 1000)::bigint)
    FROM upd
), worker AS (
    UPDATE workers w SET current_job_id = NULL FROM upd WHERE w.id = upd.worker_id AND w.current_job_id = upd.id
)
SELECT id, status, attempts, run_at FROM upd;

-- name: release_job
-- Shutdown or an outage hands an unfinished attempt back without counting it: the job did not fail, the worker
-- could not run it. It keeps its place in the queue (run_at, when it became eligible, is left as it was).
WITH upd AS (
    UPDATE job_queue
    SET status = 'queued', attempts = attempts - 1, run_at = least(run_at, now()), lease_expires_at = NULL,
        progress = 0, current_node = NULL, updated_at = now()
    WHERE id = %(id)s AND attempts = %(attempt)s AND status = 'running' AND worker_id = %(worker_id)s
    RETURNING id, attempts, worker_id, claimed_at
), logged AS (
    INSERT INTO job_logs (job_id, event, from_status, to_status, attempt, worker_id, message, duration_ms)
    SELECT id, 'released', 'running', 'queued', attempts + 1, worker_id, %(reason)s,
           greatest(0, (extract(epoch FROM now() - claimed_at) * 1000)::bigint)
    FROM upd
), worker AS (
    UPDATE workers w SET current_job_id = NULL FROM upd WHERE w.id = upd.worker_id AND w.current_job_id = upd.id
)
SELECT id, 'queued' AS status FROM upd;

-- name: finish_canceled_job
-- The worker confirms that a cancel it was asked for has stopped the prompt. Only a cancel the database holds
-- counts: a NOTIFY is a hint anyone who can connect may send, never an order.
WITH upd AS (
    UPDATE job_queue
    SET status = 'canceled', lease_expires_at = NULL, finished_at = now(), updated_at = now()
    WHERE id = %(id)s AND attempts = %(attempt)s AND status = 'running' AND worker_id = %(worker_id)s
      AND cancel_requested
    RETURNING id, attempts, worker_id, claimed_at
), logged AS (
    INSERT INTO job_logs (job_id, event, from_status, to_status, attempt, worker_id, duration_ms)
    SELECT id, 'canceled', 'running', 'canceled', attempts, worker_id,
           greatest(0, (extract(epoch FROM now() - claimed_at) * 1000)::bigint)
    FROM upd
), worker AS (
    UPDATE workers w SET current_job_id = NULL FROM upd WHERE w.id = upd.worker_id AND w.current_job_id = upd.id
)
SELECT id, 'canceled' AS status FROM upd;

-- name: cancel_job
-- A queued job is canceled at once; a running one is flagged, and its worker hears it through NOTIFY
-- comfyq_cancel (trigger in 0011_outages.sql) and stops the prompt; its heartbeat carries the flag too.
WITH prev AS (
    SELECT id, status, updated_at FROM job_queue
    WHERE id = %(id)s AND tenant = %(tenant)s AND status IN ('queued', 'running')
    FOR UPDATE
), upd AS (
    UPDATE job_queue j
    SET status = CASE WHEN prev.status = 'queued' THEN 'canceled' ELSE j.status END,
        finished_at = CASE WHEN prev.status = 'queued' THEN now() ELSE j.finished_at END,
        cancel_requested = true,
        updated_at = now()
    FROM prev
    WHERE j.id = prev.id
    RETURNING j.id, j.status, j.attempts, prev.status AS from_status, prev.updated_at AS since
), logged AS (
    INSERT INTO job_logs (job_id, event, from_status, to_status, attempt, duration_ms)
    SELECT id, CASE status WHEN 'canceled' THEN 'canceled' ELSE 'cancel_requested' END, from_status, status,
           attempts, greatest(0, (extract(epoch FROM now() - since) * 1000)::bigint)
    FROM upd
)
SELECT id, status FROM upd;

-- name: rescue_expired_leases
-- Jobs whose worker stopped renewing go back to the queue (or fail when no attempt is left).
WITH expired AS (
    SELECT id FROM job_queue
    WHERE status = 'running' AND lease_expires_at < now()
    ORDER BY lease_expires_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), upd AS (
    UPDATE job_queue j
    SET status = CASE WHEN j.cancel_requested THEN 'canceled'
                      WHEN j.attempts < j.max_attempts THEN 'queued'
                      ELSE 'failed' END,
        finished_at = CASE WHEN NOT j.cancel_requested AND j.attempts < j.max_attempts THEN NULL
                           ELSE now() END,
        error = CASE WHEN NOT j.cancel_requested AND j.attempts >= j.max_attempts
                     THEN jsonb_build_object('type', 'lease_expired', 'retryable', true,
                                             'message', 'worker ' || j.worker_id || ' stopped renewing its lease')
                     ELSE j.error END,
        run_at = now(),
        lease_expires_at = NULL,
        updated_at = now()
    FROM expired
    WHERE j.id = expired.id
    RETURNING j.id, j.status, j.attempts, j.worker_id, j.claimed_at
), logged AS (
    INSERT INTO job_logs (job_id, event, from_status, to_status, attempt, worker_id, message, duration_ms)
    SELECT id, CASE status WHEN 'queued' THEN 'rescued' ELSE status END, 'running', status, attempts,
           worker_id, 'lease expired', greatest(0, (extract(epoch FROM now() - claimed_at) * 1000)::bigint)
    FROM upd
), worker AS (
    UPDATE workers w SET current_job_id = NULL FROM upd WHERE w.current_job_id = upd.id
)
SELECT id, status, worker_id FROM upd;

-- name: expire_overdue_jobs
WITH overdue AS (
    SELECT id FROM job_queue
    WHERE status = 'queued' AND deadline IS NOT NULL AND deadline <= now()
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), upd AS (
    UPDATE job_queue j
    SET status = 'expired', finished_at = now(), updated_at = now(),
        error = jsonb_build_object('type', 'deadline_exceeded', 'retryable', false,
                                   'message', 'deadline ' || j.deadline || ' passed before the job ran')
    FROM overdue
    WHERE j.id = overdue.id
    RETURNING j.id, j.attempts, j.created_at
), logged AS (
    INSERT INTO job_logs (job_id, event, from_status, to_status, attempt, duration_ms)
    SELECT id, 'expired', 'queued', 'expired', attempts,
           greatest(0, (extract(epoch FROM now() - created_at) * 1000)::bigint)
    FROM upd
)
SELECT id FROM upd;

-- name: get_job
SELECT * FROM job_queue WHERE id = %(id)s AND tenant = %(tenant)s;

-- name: job_logs
SELECT event, from_status, to_status, attempt, worker_id, message, details, duration_ms, created_at
FROM job_logs WHERE job_id = %(id)s ORDER BY id;

-- name: job_history_page
-- GET /jobs/{id}/logs: one page of a job's transitions, oldest first, after the cursor's log id (0: from the
-- start), read through job_logs_job_idx (job_id, id) whatever the page's depth. Only a job of the tenant: no row
-- means no such job for it; one row with a NULL id means its job, with nothing after the cursor.
SELECT l.id, l.event, l.from_status, l.to_status, l.attempt, l.worker_id, l.message, l.details, l.duration_ms,
       l.created_at
FROM job_queue j
LEFT JOIN LATERAL (
    SELECT id, event, from_status, to_status, attempt, worker_id, message, details, duration_ms, created_at
    FROM job_logs
    WHERE job_id = j.id AND id > %(after_id)s
    ORDER BY id
    LIMIT %(limit)s
) l ON true
WHERE j.id = %(job_id)s AND j.tenant = %(tenant)s
ORDER BY l.id;

-- name: count_jobs_by_status
SELECT status, count(*) AS n FROM job_queue GROUP BY status ORDER BY status;

-- name: seconds_until_next_run
-- How long an idle worker may sleep before a delayed job (a retry) becomes eligible; NULL when none waits.
SELECT greatest(0, extract(epoch FROM min(run_at) - now()))::float8 AS seconds
FROM job_queue WHERE status = 'queued';

-- name: submission_claim
-- First writer of an Idempotency-Key wins; a concurrent second one waits here until the first commits.
INSERT INTO submissions (tenant, idempotency_key, request_hash)
VALUES (%(tenant)s, %(key)s, %(request_hash)s)
ON CONFLICT (tenant, idempotency_key) DO NOTHING
RETURNING tenant;

-- name: submission_get
SELECT request_hash, job_ids FROM submissions WHERE tenant = %(tenant)s AND idempotency_key = %(key)s;

-- name: submission_set_jobs
UPDATE submissions SET job_ids = %(job_ids)s::bigint[] WHERE tenant = %(tenant)s AND idempotency_key = %(key)s;

-- name: jobs_status_by_ids
SELECT id, status FROM job_queue WHERE id = ANY(%(ids)s::bigint[]) ORDER BY array_position(%(ids)s::bigint[], id);

-- name: count_queued_for_tenant
-- Bounded by the quota, so a tenant far over it costs no more than one at it.
SELECT count(*) AS n FROM (
    SELECT 1 FROM job_queue WHERE tenant = %(tenant)s AND status = 'queued' LIMIT %(cap)s
) q;

-- name: find_succeeded_twin
SELECT * FROM job_queue
WHERE tenant = %(tenant)s AND dedupe_hash = %(dedupe_hash)s AND status = 'succeeded'
ORDER BY id DESC LIMIT 1;

-- name: list_jobs
-- Keyset pagination, newest first: the cursor is the last id seen, so pages stay fast at any depth.
SELECT id, status, workflow, params, priority, attempts, max_attempts, progress, current_node, timeout_seconds,
       cancel_requested, callback_url, error, outputs, created_at, run_at, started_at, finished_at, deadline
FROM job_queue
WHERE tenant = %(tenant)s
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(workflow)s::text IS NULL OR workflow = %(workflow)s)
  AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)
  AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: retry_job
-- A failed, canceled or expired job goes back to the queue with a fresh set of attempts.
WITH prev AS (
    SELECT id, status, finished_at FROM job_queue
    WHERE id = %(id)s AND tenant = %(tenant)s AND status IN ('failed', 'canceled', 'expired')
    FOR UPDATE
), upd AS (
    UPDATE job_queue j
    SET status = 'queued', attempts = 0, run_at = now(), finished_at = NULL, cancel_requested = false,
        error = NULL, progress = 0, current_node = NULL, prompt_id = NULL, outputs = '[]'::jsonb,
        deadline = CASE WHEN j.deadline <= now() THEN NULL ELSE j.deadline END, updated_at = now()
    FROM prev WHERE j.id = prev.id
    RETURNING j.id, j.status, prev.status AS from_status, prev.finished_at
), logged AS (
    INSERT INTO job_logs (job_id, event, from_status, to_status, attempt, message, duration_ms)
    SELECT id, 'requeued', from_status, 'queued', 0, 'retried through the API',
           greatest(0, (extract(epoch FROM now() - finished_at) * 1000)::bigint)
    FROM upd
)
SELECT id, status FROM upd;

-- name: job_status
SELECT id, status FROM job_queue WHERE id = %(id)s AND tenant = %(tenant)s;

-- name: stats_depth
-- Live depth by status and priority (only queued and running rows: both are served by partial indexes).
SELECT status, priority, count(*) AS jobs,
       extract(epoch FROM now() - min(CASE WHEN status = 'queued' THEN created_at END))::float8 AS oldest_age
FROM job_queue
WHERE status IN ('queued', 'running') AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
GROUP BY status, priority
ORDER BY status, priority DESC;

-- name: stats_finished_recently
SELECT status, count(*) AS jobs FROM job_queue
WHERE finished_at > now() - make_interval(secs => %(window_seconds)s)
  AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
GROUP BY status ORDER BY status;

-- name: stats_workers
-- Silent: not heard from lately and not declared dead yet; dead ones are counted apart.
SELECT count(*) FILTER (WHERE status <> 'dead'
                          AND heartbeat_at > now() - make_interval(secs => %(alive_seconds)s)) AS alive,
       count(*) FILTER (WHERE status <> 'dead'
                          AND heartbeat_at <= now() - make_interval(secs => %(alive_seconds)s)) AS silent,
       count(*) FILTER (WHERE status = 'dead') AS dead
FROM workers WHERE status <> 'stopped';

-- name: retention_candidates
-- Finished jobs older than the age, of one tenant or (tenant NULL: an operator's run) of all.
SELECT id, outputs FROM job_queue
WHERE status IN ('succeeded', 'failed', 'canceled', 'expired')
  AND finished_at < now() - make_interval(secs => %(older_than_seconds)s)
  AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
ORDER BY finished_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- name: retention_delete
WITH logs AS (
    DELETE FROM job_logs WHERE job_id = ANY(%(ids)s::bigint[]) RETURNING 1
), jobs AS (
    DELETE FROM job_queue WHERE id = ANY(%(ids)s::bigint[]) RETURNING 1
)
SELECT (SELECT count(*) FROM jobs) AS jobs_deleted, (SELECT count(*) FROM logs) AS logs_deleted;

-- name: retention_submissions
DELETE FROM submissions WHERE created_at < now() - make_interval(secs => %(older_than_seconds)s)
  AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s);

-- Queue transport (comfyq/transport.py, comfyq/redis_transport.py). With QUEUE_BACKEND=redis a message names a
-- job; Postgres still decides whether it runs.

-- name: claim_job_by_id
-- claim_jobs for one named job: the same conditional update and bookkeeping, so a message delivered twice, or one
-- for a job that was canceled, claimed through another message or not yet due, claims nothing. No SKIP LOCKED:
-- there is no next row to skip to; a concurrent writer (a cancel, a second delivery) is waited for and the
-- conditions are checked again on the row it left.
WITH next AS (
    SELECT id, run_at AS eligible_at
    FROM job_queue
    WHERE id = %(id)s AND status = 'queued' AND run_at <= now() AND (deadline IS NULL OR deadline > now())
    FOR UPDATE
)
SELECT claimed.* FROM next,
    comfyq_take_claims(ARRAY[next.id], ARRAY[next.eligible_at], %(worker_id)s, %(lease_seconds)s) claimed;

-- name: job_claim_state
-- Why a message claimed nothing: a job still queued but not yet due is scheduled again for its run_at.
SELECT id, status, priority, attempts, run_at, run_at > now() AS not_due FROM job_queue WHERE id = %(id)s;

-- name: jobs_to_publish
-- What a message needs (band, message id, due time) for jobs just put back in the queue.
SELECT id, priority, attempts, run_at FROM job_queue
WHERE id = ANY(%(ids)s::bigint[]) AND status = 'queued'
ORDER BY priority DESC, run_at, id;

-- name: reconcile_candidates
-- The head of the queue in claim order (served by job_queue_claim_idx), skipping rows changed within the grace
-- period (their message may still be on its way); the reconciler re-enqueues those that have no message.
SELECT id, priority, attempts, run_at FROM job_queue
WHERE status = 'queued' AND run_at <= now() AND (deadline IS NULL OR deadline > now())
  AND updated_at < now() - make_interval(secs => %(grace_seconds)s)
ORDER BY priority DESC, run_at, id
LIMIT %(limit)s;

-- name: queue_summary
-- For the API's /metrics (Prometheus alerts on queue depth and waiting time); the view is in 0007.
SELECT queued, eligible, delayed, running, expired_leases, oldest_queued_age_seconds, longest_wait_seconds,
       longest_running_seconds
FROM stats_queue_summary;

-- name: log_outage
-- An outage or a resubmission recorded against the attempt it touched; fenced, so a lost lease writes nothing.
-- No state changes and no attempt is spent: the job is still running here.
INSERT INTO job_logs (job_id, event, from_status, to_status, attempt, worker_id, message, details)
SELECT id, %(event)s, 'running', 'running', attempts, worker_id, %(message)s, %(details)s::jsonb
FROM job_queue
WHERE id = %(id)s AND attempts = %(attempt)s AND status = 'running' AND worker_id = %(worker_id)s
RETURNING id;

-- name: attempt_state
-- Where a job stands after a write whose outcome was unknown (the connection dropped during COMMIT).
SELECT id, status, attempts, worker_id FROM job_queue WHERE id = %(id)s;

-- name: running_jobs_of_worker
-- What the database says a worker holds: after a claim whose answer was lost (the connection dropped while it
-- ran), the worker hands back the jobs it holds without knowing it.
SELECT id, attempts FROM job_queue WHERE status = 'running' AND worker_id = %(worker_id)s ORDER BY id;
