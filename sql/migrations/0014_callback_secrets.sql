-- Completion callbacks are signed with their tenant's own secrets. Until now one secret (COMFYQ_CALLBACK_SECRET)
-- signed every tenant's callbacks, so a tenant that held it to verify its own could forge events to any other
-- tenant's receiver. Each tenant now has its own secrets here; while several are active (a rotation) every
-- callback carries one signature per secret (Standard Webhooks' space-separated `v1,<sig>` list), and a retired
-- one signs nothing more. A tenant without an active secret gets no callbacks: they wait in the outbox.
--
-- The secrets are kept as they are, not hashed: the workers need them to sign. Only the roles that run comfyq
-- read this table (the dashboards' role comfyq_grafana reads its views only, 0007 and 0013).
-- Forward-only: never edit this file once applied; add a new numbered migration instead.

CREATE TABLE callback_secrets (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant        text        NOT NULL REFERENCES tenants (name),
    -- "whsec_" + base64 of the HMAC key, as Standard Webhooks libraries take it. One secret, one tenant.
    secret        text        NOT NULL UNIQUE,
    secret_prefix text        NOT NULL,  -- its first characters, to name it in listings
    -- 'api': made by POST /admin/tenants/{name}/callback-secrets; 'setting': COMFYQ_CALLBACK_SECRET, stored by the
    -- first worker that started with it for a tenant that had no secret yet (at most once per tenant).
    source        text        NOT NULL DEFAULT 'api',
    created_at    timestamptz NOT NULL DEFAULT now(),
    retired_at    timestamptz,
    CONSTRAINT callback_secrets_format CHECK (secret ~ '^whsec_[A-Za-z0-9+/]+={0,2}$'),
    CONSTRAINT callback_secrets_source_check CHECK (source IN ('api', 'setting'))
);

CREATE INDEX callback_secrets_active_idx ON callback_secrets (tenant) WHERE retired_at IS NULL;
-- Two workers starting at once with COMFYQ_CALLBACK_SECRET store it once.
CREATE UNIQUE INDEX callback_secrets_one_setting_idx ON callback_secrets (tenant) WHERE source = 'setting';
