-- Tenants, their API tokens (stored only as hashes), idempotent submissions and per-tenant limits.

CREATE TABLE tenants (
    name             text PRIMARY KEY,
    allow_raw_graphs boolean     NOT NULL DEFAULT false,
    max_queued_jobs  integer,
    rate_per_second  real,
    rate_burst       integer,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tenants_name_format CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,62}$'),
    CONSTRAINT tenants_quota_range CHECK (max_queued_jobs IS NULL OR max_queued_jobs >= 0),
    CONSTRAINT tenants_rate_range CHECK (rate_per_second IS NULL OR rate_per_second > 0),
    CONSTRAINT tenants_burst_range CHECK (rate_burst IS NULL OR rate_burst >= 1)
);
INSERT INTO tenants (name) VALUES ('default');

CREATE TABLE api_tokens (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant       text        NOT NULL REFERENCES tenants (name),
    role         text        NOT NULL,
    token_hash   text        NOT NULL UNIQUE,
    token_prefix text        NOT NULL,
    description  text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz,
    CONSTRAINT api_tokens_role_check CHECK (role IN ('submitter', 'admin')),
    CONSTRAINT api_tokens_hash_format CHECK (token_hash ~ '^[0-9a-f]{64}$')
);

-- One row per Idempotency-Key: the request's hash and the jobs it created, so a repeat returns them.
CREATE TABLE submissions (
    tenant          text        NOT NULL,
    idempotency_key text        NOT NULL,
    request_hash    text        NOT NULL,
    job_ids         bigint[]    NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, idempotency_key),
    CONSTRAINT submissions_key_length CHECK (length(idempotency_key) BETWEEN 1 AND 255)
);
CREATE INDEX submissions_created_idx ON submissions (created_at);

-- Per-tenant token buckets for the request rate limit, shared by every API process.
CREATE TABLE rate_buckets (
    tenant     text PRIMARY KEY,
    tokens     double precision NOT NULL,
    updated_at timestamptz      NOT NULL,
    allowed    boolean          NOT NULL DEFAULT true
);

-- Listing a tenant's jobs by status, newest first, and finding a succeeded twin for dedupe.
CREATE INDEX job_queue_tenant_status_idx ON job_queue (tenant, status, id DESC);
CREATE INDEX job_queue_dedupe_idx ON job_queue (tenant, dedupe_hash, id DESC)
    WHERE status = 'succeeded' AND dedupe_hash IS NOT NULL;
CREATE INDEX job_queue_finished_idx ON job_queue (finished_at) WHERE finished_at IS NOT NULL;
