-- name: register_worker
INSERT INTO workers (id, host, pid, comfyui_url, status, started_at, heartbeat_at)
VALUES (%(id)s, %(host)s, %(pid)s, %(comfyui_url)s, 'running', now(), now())
ON CONFLICT (id) DO UPDATE
SET host = EXCLUDED.host, pid = EXCLUDED.pid, comfyui_url = EXCLUDED.comfyui_url, status = 'running',
    started_at = now(), heartbeat_at = now(), stopped_at = NULL, current_job_id = NULL;

-- name: worker_heartbeat
UPDATE workers SET heartbeat_at = now(), status = %(status)s, dependencies_down = %(dependencies_down)s::text[]
WHERE id = %(id)s RETURNING id;

-- name: worker_stopped
UPDATE workers SET status = 'stopped', stopped_at = now(), current_job_id = NULL WHERE id = %(id)s;

-- name: list_workers
SELECT id, status, host, pid, comfyui_url, current_job_id, jobs_done, dependencies_down, started_at, heartbeat_at,
       round(extract(epoch FROM now() - heartbeat_at)::numeric, 1)::float8 AS heartbeat_age_seconds
FROM workers
WHERE %(include_stopped)s OR status <> 'stopped'
ORDER BY heartbeat_at DESC;
