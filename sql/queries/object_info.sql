-- The node catalogue each ComfyUI instance serves (GET /object_info), published by workers, read by the API.

-- name: object_info_upsert
-- One row per instance. An unchanged catalogue (same hash) keeps its stored value, so the large jsonb is not
-- rewritten; fetched_at and worker_id always move, so readers can see how fresh the catalogue is.
INSERT INTO comfyui_object_info (comfyui_url, object_info, content_hash, node_count, worker_id, fetched_at)
VALUES (%(comfyui_url)s, %(object_info)s::jsonb, %(content_hash)s, %(node_count)s, %(worker_id)s, now())
ON CONFLICT (comfyui_url) DO UPDATE
SET object_info = CASE WHEN comfyui_object_info.content_hash = EXCLUDED.content_hash
                       THEN comfyui_object_info.object_info ELSE EXCLUDED.object_info END,
    content_hash = EXCLUDED.content_hash,
    node_count = EXCLUDED.node_count,
    worker_id = EXCLUDED.worker_id,
    fetched_at = EXCLUDED.fetched_at
RETURNING comfyui_url, content_hash, node_count, worker_id, fetched_at;

-- name: object_info_latest
-- The most recently published catalogue, whole.
SELECT comfyui_url, object_info, content_hash, node_count, worker_id, fetched_at
FROM comfyui_object_info
ORDER BY fetched_at DESC, comfyui_url
LIMIT 1;

-- name: object_info_latest_version
-- Which catalogue is the latest, without loading it: the API polls this and reloads only when it changed.
SELECT comfyui_url, content_hash, fetched_at
FROM comfyui_object_info
ORDER BY fetched_at DESC, comfyui_url
LIMIT 1;
