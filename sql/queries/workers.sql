-- name: register_worker
INSERT INTO workers (id, host, pid, comfyui_url, status, started_at, heartbeat_at)
VALUES (%(id)s, %(host)s, %(pid)s, %(comfyui_url)s, 'running', now(), now())
ON CONFLICT (id) DO UPDATE
SET host = EXCLUDED.host, pid = EXCLUDED.pid, comfyui_url = EXCLUDED.comfyui_url, status = 'running',
    started_at = now(), heartbeat_at = now(), stopped_at = NULL, current_job_id = NULL;

-- name: worker_heartbeat
-- Alive now, in this status: a worker declared dead while it was frozen is alive again. Returns the status it had
-- ('dead' tells the worker it came back); no row means the row was forgotten and the worker registers again.
WITH before AS (SELECT id, status FROM workers WHERE id = %(id)s FOR UPDATE)
UPDATE workers w SET heartbeat_at = now(), status = %(status)s, dependencies_down = %(dependencies_down)s::text[]
FROM before WHERE w.id = before.id
RETURNING w.id, before.status AS previous_status;

-- name: worker_stopped
UPDATE workers SET status = 'stopped', stopped_at = now(), current_job_id = NULL WHERE id = %(id)s;

-- name: declare_dead_workers
-- Workers whose last heartbeat is older than the bound become 'dead'. Run by every live worker's maintenance tick
-- (never about itself: a worker just woken from a freeze runs this tick before its heartbeat); a row already dead
-- (or stopped) is left alone, and of two ticks at once the second finds the row changed and skips it, so each death
-- is returned once. Their jobs are not touched: leases are rescued when they expire.
UPDATE workers w SET status = 'dead'
WHERE w.status IN ('running', 'draining') AND w.id <> %(declared_by)s
  AND w.heartbeat_at < now() - make_interval(secs => %(dead_after_seconds)s)
RETURNING w.id, w.host, w.pid,
          round(extract(epoch FROM now() - w.heartbeat_at)::numeric, 1)::float8 AS heartbeat_age_seconds,
          (SELECT count(*) FROM job_queue j WHERE j.status = 'running' AND j.worker_id = w.id) AS running_jobs;

-- name: forget_worker
-- Deletes a worker's row unless it may still be alive: only a dead or stopped one, or one silent past the bound
-- that no live worker was there to declare dead. Returns the row as it was with `forgotten`; no row: no such id.
WITH target AS (
    SELECT id, status, host, pid, comfyui_url, current_job_id, jobs_done, dependencies_down, started_at,
           heartbeat_at, round(extract(epoch FROM now() - heartbeat_at)::numeric, 1)::float8 AS heartbeat_age_seconds,
           (status IN ('dead', 'stopped')
            OR heartbeat_at < now() - make_interval(secs => %(dead_after_seconds)s)) AS may_forget
    FROM workers WHERE id = %(id)s FOR UPDATE
), gone AS (
    DELETE FROM workers w USING target t WHERE w.id = t.id AND t.may_forget RETURNING w.id
)
SELECT target.*, EXISTS (SELECT 1 FROM gone) AS forgotten FROM target;

-- name: list_workers
SELECT id, status, host, pid, comfyui_url, current_job_id, jobs_done, dependencies_down, started_at, heartbeat_at,
       round(extract(epoch FROM now() - heartbeat_at)::numeric, 1)::float8 AS heartbeat_age_seconds
FROM workers
WHERE %(include_stopped)s OR status <> 'stopped'
ORDER BY heartbeat_at DESC;
