-- One definition of what claiming a row means (lease, attempt, log row, the worker's current job), shared by
-- claim_job (next row, SKIP LOCKED) and claim_job_by_id (a named row, for the Redis transport). Callers select
-- and lock the row; this takes it.
CREATE FUNCTION comfyq_take_claim(p_id bigint, p_eligible_at timestamptz, p_worker text, p_lease_seconds float8)
RETURNS SETOF job_queue LANGUAGE sql VOLATILE AS $$
    WITH claimed AS (
        UPDATE job_queue j
        SET status = 'running',
            attempts = j.attempts + 1,
            worker_id = p_worker,
            lease_expires_at = now() + make_interval(secs => p_lease_seconds),
            started_at = coalesce(j.started_at, now()),
            claimed_at = now(),
            updated_at = now(),
            progress = 0,
            current_node = NULL,
            prompt_id = NULL
        WHERE j.id = p_id
        RETURNING j.*
    ), logged AS (
        INSERT INTO job_logs (job_id, event, from_status, to_status, attempt, worker_id, duration_ms)
        SELECT id, 'claimed', 'queued', 'running', attempts, worker_id,
               greatest(0, (extract(epoch FROM now() - p_eligible_at) * 1000)::bigint)
        FROM claimed
    ), worker AS (
        UPDATE workers w SET current_job_id = claimed.id FROM claimed WHERE w.id = p_worker
    )
    SELECT * FROM claimed;
$$;
