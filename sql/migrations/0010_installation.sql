-- One id per installation (database), created once, here: storage keys start with it
-- (<installation>/<job id>/<attempt>/<file>, comfyq/storage.py), so two installations sharing a folder or a
-- bucket neither overwrite nor delete each other's objects, although both number their jobs from 1. A restored
-- backup keeps the id and so finds its objects again. Forward-only: never edit this file once applied.

CREATE TABLE installation (
    -- Exactly one row: the primary key can only be true.
    singleton  boolean     PRIMARY KEY DEFAULT true CONSTRAINT installation_one_row CHECK (singleton),
    -- 32 random hex digits (122 random bits). The check keeps it a single, safe key segment.
    id         text        NOT NULL DEFAULT replace(gen_random_uuid()::text, '-', '')
                           CONSTRAINT installation_id_format CHECK (id ~ '^[a-z0-9][a-z0-9-]{7,63}$'),
    created_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO installation DEFAULT VALUES;
