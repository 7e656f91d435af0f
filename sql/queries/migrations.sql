-- name: migrations_lock
-- One runner at a time, across processes and hosts; released by migrations_unlock or on disconnect.
SELECT pg_advisory_lock(hashtext('comfyq.migrations'));

-- name: migrations_unlock
SELECT pg_advisory_unlock(hashtext('comfyq.migrations'));

-- name: migrations_create_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migrations_applied
SELECT version, checksum, applied_at FROM schema_migrations ORDER BY version;

-- name: migrations_record
INSERT INTO schema_migrations (version, checksum) VALUES (%(version)s, %(checksum)s);
