-- Each tenant's callback signing secrets (migration 0014): made and retired through the admin API, read by the
-- workers when they sign.

-- name: callback_secret_insert
-- A new active secret, unless the tenant already has %(max_active)s (then no row).
INSERT INTO callback_secrets (tenant, secret, secret_prefix)
SELECT %(tenant)s, %(secret)s, %(secret_prefix)s
WHERE (SELECT count(*) FROM callback_secrets WHERE tenant = %(tenant)s AND retired_at IS NULL) < %(max_active)s
RETURNING id, tenant, secret_prefix, source, created_at, retired_at;

-- name: callback_secret_seed
-- COMFYQ_CALLBACK_SECRET, stored for a tenant that has never had a secret (a retired one counts, so a secret the
-- operator retired is not brought back by the next worker start). Nothing when it is stored already.
INSERT INTO callback_secrets (tenant, secret, secret_prefix, source)
SELECT %(tenant)s, %(secret)s, %(secret_prefix)s, 'setting'
WHERE NOT EXISTS (SELECT 1 FROM callback_secrets WHERE tenant = %(tenant)s)
ON CONFLICT DO NOTHING
RETURNING id, tenant, secret_prefix, source, created_at, retired_at;

-- name: callback_secret_list
-- Never the secrets themselves.
SELECT id, tenant, secret_prefix, source, created_at, retired_at
FROM callback_secrets
WHERE tenant = %(tenant)s
ORDER BY id;

-- name: callback_secret_retire
UPDATE callback_secrets SET retired_at = now()
WHERE id = %(id)s AND tenant = %(tenant)s AND retired_at IS NULL
RETURNING id, tenant, secret_prefix, source, created_at, retired_at;

-- name: callback_signing_secrets
-- What signs a tenant's callback now: its active secrets, newest first.
SELECT secret FROM callback_secrets
WHERE tenant = %(tenant)s AND retired_at IS NULL
ORDER BY id DESC;
