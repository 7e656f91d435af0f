-- comfyq initial schema: the job queue, its event log and the workers that drain it.
-- Forward-only: never edit this file once applied; add a new numbered migration instead.

CREATE TABLE job_queue (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant           text        NOT NULL DEFAULT 'default',
    workflow         text,
    params           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    graph            jsonb       NOT NULL,
    status           text        NOT NULL DEFAULT 'queued',
    priority         integer     NOT NULL DEFAULT 0,
    run_at           timestamptz NOT NULL DEFAULT now(),
    attempts         integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL DEFAULT 3,
    lease_expires_at timestamptz,
    worker_id        text,
    prompt_id        text,
    progress         real        NOT NULL DEFAULT 0,
    current_node     text,
    timeout_seconds  integer,
    deadline         timestamptz,
    cancel_requested boolean     NOT NULL DEFAULT false,
    idempotency_key  text,
    dedupe_hash      text,
    callback_url     text,
    outputs          jsonb       NOT NULL DEFAULT '[]'::jsonb,
    error            jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    claimed_at       timestamptz,
    finished_at      timestamptz,
    CONSTRAINT job_queue_status_check
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled', 'expired')),
    CONSTRAINT job_queue_priority_range CHECK (priority BETWEEN -1000 AND 1000),
    CONSTRAINT job_queue_attempts_range CHECK (attempts >= 0 AND attempts <= max_attempts),
    CONSTRAINT job_queue_max_attempts_range CHECK (max_attempts BETWEEN 1 AND 100),
    CONSTRAINT job_queue_progress_range CHECK (progress >= 0 AND progress <= 1),
    CONSTRAINT job_queue_timeout_range CHECK (timeout_seconds IS NULL OR timeout_seconds BETWEEN 1 AND 86400),
    CONSTRAINT job_queue_graph_is_object CHECK (jsonb_typeof(graph) = 'object'),
    CONSTRAINT job_queue_params_is_object CHECK (jsonb_typeof(params) = 'object'),
    CONSTRAINT job_queue_outputs_is_array CHECK (jsonb_typeof(outputs) = 'array'),
    -- A running job always holds a lease; no other state does. worker_id stays as the last worker.
    CONSTRAINT job_queue_running_has_lease CHECK ((status = 'running') = (lease_expires_at IS NOT NULL)),
    CONSTRAINT job_queue_running_has_worker CHECK (status <> 'running' OR worker_id IS NOT NULL),
    CONSTRAINT job_queue_finished_has_time CHECK (
        (status IN ('succeeded', 'failed', 'canceled', 'expired')) = (finished_at IS NOT NULL))
);

-- Serves the claim: only queued rows, in claim order.
CREATE INDEX job_queue_claim_idx ON job_queue (priority DESC, run_at, id) WHERE status = 'queued';
-- Serves lease rescue: only running rows, by expiry.
CREATE INDEX job_queue_lease_idx ON job_queue (lease_expires_at) WHERE status = 'running';
-- Serves deadline expiry of queued jobs.
CREATE INDEX job_queue_deadline_idx ON job_queue (deadline) WHERE status = 'queued' AND deadline IS NOT NULL;
CREATE UNIQUE INDEX job_queue_idempotency_idx ON job_queue (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX job_queue_tenant_created_idx ON job_queue (tenant, id DESC);

CREATE TABLE job_logs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id      bigint      NOT NULL REFERENCES job_queue (id) ON DELETE CASCADE,
    event       text        NOT NULL,
    from_status text,
    to_status   text,
    attempt     integer     NOT NULL DEFAULT 0,
    worker_id   text,
    message     text,
    details     jsonb,
    duration_ms bigint,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT job_logs_event_check CHECK (event IN (
        'queued', 'claimed', 'progress', 'retry_scheduled', 'rescued', 'released', 'succeeded', 'failed',
        'canceled', 'cancel_requested', 'expired', 'requeued')),
    CONSTRAINT job_logs_duration_range CHECK (duration_ms IS NULL OR duration_ms >= 0)
);
CREATE INDEX job_logs_job_idx ON job_logs (job_id, id);
CREATE INDEX job_logs_created_idx ON job_logs (created_at);

CREATE TABLE workers (
    id            text PRIMARY KEY,
    host          text        NOT NULL,
    pid           integer     NOT NULL,
    comfyui_url   text        NOT NULL,
    status        text        NOT NULL DEFAULT 'running',
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    current_job_id bigint REFERENCES job_queue (id) ON DELETE SET NULL,
    jobs_done     bigint      NOT NULL DEFAULT 0,
    stopped_at    timestamptz,
    CONSTRAINT workers_status_check CHECK (status IN ('running', 'draining', 'stopped')),
    CONSTRAINT workers_jobs_done_range CHECK (jobs_done >= 0)
);
CREATE INDEX workers_heartbeat_idx ON workers (heartbeat_at) WHERE status <> 'stopped';

-- Wake idle workers once per INSERT statement (a 10k-row batch sends one notification, not 10k).
CREATE FUNCTION comfyq_notify_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('comfyq_jobs', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER job_queue_notify_insert
    AFTER INSERT ON job_queue
    FOR EACH STATEMENT EXECUTE FUNCTION comfyq_notify_jobs();

-- Jobs put back in the queue (retry, rescue, release, manual retry) wake workers too; Postgres folds
-- identical notifications of one transaction into one.
CREATE TRIGGER job_queue_notify_requeue
    AFTER UPDATE OF status ON job_queue
    FOR EACH ROW WHEN (NEW.status = 'queued' AND OLD.status IS DISTINCT FROM 'queued')
    EXECUTE FUNCTION comfyq_notify_jobs();
