-- The node catalogue (GET /object_info) each ComfyUI instance serves, published by the workers that drive it,
-- so the API can check a graph against the real node limits before it is queued.
-- Forward-only: never edit this file once applied; add a new numbered migration instead.
-- A cache, not a system of record: one row per ComfyUI instance, replaced on every publication.

CREATE TABLE comfyui_object_info (
    comfyui_url  text PRIMARY KEY,
    object_info  jsonb       NOT NULL,
    -- sha256 of the catalogue, so readers can tell a changed catalogue from a refreshed one without loading it.
    content_hash text        NOT NULL,
    node_count   integer     NOT NULL,
    -- The worker that published it last (no foreign key: worker rows are pruned independently of this cache).
    worker_id    text        NOT NULL,
    fetched_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT comfyui_object_info_is_object CHECK (jsonb_typeof(object_info) = 'object'),
    CONSTRAINT comfyui_object_info_node_count_range CHECK (node_count >= 0)
);

-- Serves "the latest catalogue".
CREATE INDEX comfyui_object_info_fetched_idx ON comfyui_object_info (fetched_at DESC);
