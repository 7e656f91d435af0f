-- Claiming several rows in one statement (claim_jobs with a limit above 1, for consumers of short jobs), with
-- the same bookkeeping as one: lease, attempt, a log row each, the worker's current job. PL/pgSQL rather than
-- SQL so that each session plans the body once, not on every call. comfyq_take_claim (0008) stays for workers
-- of the previous release during a rolling upgrade and now takes its one row through this function.
CREATE FUNCTION comfyq_take_claims(p_ids bigint[], p_eligible_at timestamptz[], p_worker text,
                                   p_lease_seconds float8)
RETURNS SETOF job_queue LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN QUERY
    WITH picked AS (
        SELECT t.id, t.eligible_at FROM unnest(p_ids, p_eligible_at) AS t(id, eligible_at)
    ), claimed AS (
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
        FROM picked
        WHERE j.id = picked.id
        RETURNING j.*
    ), logged AS (
        INSERT INTO job_logs (job_id, event, from_status, to_status, attempt, worker_id, duration_ms)
        SELECT c.id, 'claimed', 'queued', 'running', c.attempts, c.worker_id,
               greatest(0, (extract(epoch FROM now() - p.eligible_at) * 1000)::bigint)
        FROM claimed c JOIN picked p ON p.id = c.id
    ), worker AS (
        UPDATE workers w SET current_job_id = (SELECT min(c.id) FROM claimed c)
        WHERE w.id = p_worker AND EXISTS (SELECT 1 FROM claimed)
    )
    SELECT * FROM claimed c ORDER BY c.priority DESC, c.run_at, c.id;
END;
$$;

CREATE OR REPLACE FUNCTION comfyq_take_claim(p_id bigint, p_eligible_at timestamptz, p_worker text,
                                             p_lease_seconds float8)
RETURNS SETOF job_queue LANGUAGE sql VOLATILE AS $$
    SELECT * FROM comfyq_take_claims(ARRAY[p_id], ARRAY[p_eligible_at], p_worker, p_lease_seconds);
$$;
