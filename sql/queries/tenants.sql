-- Tenants, API tokens (hashes only) and the shared request-rate buckets.

-- name: tenant_upsert
INSERT INTO tenants (name, allow_raw_graphs, max_queued_jobs, rate_per_second, rate_burst)
VALUES (%(name)s, %(allow_raw_graphs)s, %(max_queued_jobs)s, %(rate_per_second)s, %(rate_burst)s)
ON CONFLICT (name) DO UPDATE
SET allow_raw_graphs = EXCLUDED.allow_raw_graphs, max_queued_jobs = EXCLUDED.max_queued_jobs,
    rate_per_second = EXCLUDED.rate_per_second, rate_burst = EXCLUDED.rate_burst
RETURNING *, (SELECT count(*) FROM api_tokens k WHERE k.tenant = tenants.name AND k.revoked_at IS NULL)
          AS active_tokens;

-- name: tenant_ensure
INSERT INTO tenants (name) VALUES (%(name)s) ON CONFLICT (name) DO NOTHING;

-- name: tenant_list
-- Every tenant, or the one named.
SELECT t.*, (SELECT count(*) FROM api_tokens k WHERE k.tenant = t.name AND k.revoked_at IS NULL) AS active_tokens
FROM tenants t
WHERE %(name)s::text IS NULL OR t.name = %(name)s
ORDER BY t.name;

-- name: token_insert
INSERT INTO api_tokens (tenant, role, token_hash, token_prefix, description)
VALUES (%(tenant)s, %(role)s, %(token_hash)s, %(token_prefix)s, %(description)s)
RETURNING id, tenant, role, token_prefix, description, created_at, last_used_at, revoked_at;

-- name: token_list
-- The tokens of one tenant (or of all) whose role is among `roles`: a tenant's admin sees no operator tokens.
SELECT id, tenant, role, token_prefix, description, created_at, last_used_at, revoked_at
FROM api_tokens
WHERE (%(tenant)s::text IS NULL OR tenant = %(tenant)s) AND role = ANY(%(roles)s::text[])
ORDER BY id;

-- name: token_revoke
-- By id or prefix, within the same scope as token_list.
UPDATE api_tokens SET revoked_at = now()
WHERE (id::text = %(ref)s OR token_prefix = %(ref)s) AND revoked_at IS NULL
  AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s) AND role = ANY(%(roles)s::text[])
RETURNING id, tenant, role, token_prefix, description, created_at, last_used_at, revoked_at;

-- name: token_set_role
-- `comfyq token import --update-role`: a stored, active token takes the role the deployment now gives it.
UPDATE api_tokens SET role = %(role)s
WHERE id = %(id)s AND revoked_at IS NULL
RETURNING id, tenant, role, token_prefix, revoked_at, false AS created, true AS role_changed;

-- name: token_lookup
-- The caller behind a token hash, with its tenant's limits; revoked tokens are returned so the caller can
-- tell "revoked" from "unknown" in logs (both answer 401).
SELECT k.id, k.tenant, k.role, k.token_hash, k.revoked_at, t.allow_raw_graphs, t.max_queued_jobs,
       t.rate_per_second, t.rate_burst
FROM api_tokens k JOIN tenants t ON t.name = k.tenant
WHERE k.token_hash = %(token_hash)s;

-- name: token_touch
UPDATE api_tokens SET last_used_at = now()
WHERE id = %(id)s AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute');

-- name: tenant_limits
SELECT allow_raw_graphs, max_queued_jobs, rate_per_second, rate_burst FROM tenants WHERE name = %(name)s;

-- name: rate_take
-- Token bucket shared by every API process: refill by elapsed time and take `cost` tokens if there are
-- enough, under the row lock, so concurrent requests cannot spend the same token. No row yet: see rate_seed.
UPDATE rate_buckets
SET allowed = least(%(burst)s::float8, tokens + extract(epoch FROM clock_timestamp() - updated_at) * %(rate)s)
              >= %(cost)s,
    tokens = least(%(burst)s::float8, tokens + extract(epoch FROM clock_timestamp() - updated_at) * %(rate)s)
             - CASE WHEN least(%(burst)s::float8, tokens + extract(epoch FROM clock_timestamp() - updated_at)
                                                     * %(rate)s) >= %(cost)s
                    THEN %(cost)s ELSE 0 END,
    updated_at = clock_timestamp()
WHERE tenant = %(tenant)s
RETURNING allowed, greatest(0, (%(cost)s - tokens) / %(rate)s)::float8 AS retry_after;

-- name: rate_seed
INSERT INTO rate_buckets (tenant, tokens, updated_at, allowed)
VALUES (%(tenant)s, greatest(0, %(burst)s::float8 - %(cost)s), clock_timestamp(), %(burst)s >= %(cost)s)
ON CONFLICT (tenant) DO NOTHING
RETURNING allowed, 0::float8 AS retry_after;

-- name: token_import
-- A token whose secret was generated elsewhere (comfyq init for the compose stack): stored hashed once; a second
-- import of the same secret changes nothing and returns the row that is there, so the caller can check it.
WITH inserted AS (
    INSERT INTO api_tokens (tenant, role, token_hash, token_prefix, description)
    VALUES (%(tenant)s, %(role)s, %(token_hash)s, %(token_prefix)s, %(description)s)
    ON CONFLICT (token_hash) DO NOTHING
    RETURNING id, tenant, role, token_prefix, revoked_at, true AS created
)
SELECT * FROM inserted
UNION ALL
SELECT id, tenant, role, token_prefix, revoked_at, false AS created FROM api_tokens
WHERE token_hash = %(token_hash)s AND NOT EXISTS (SELECT 1 FROM inserted);
