-- Storage (comfyq/storage.py).

-- name: installation_id
-- This installation's id (migration 0010), the first segment of every storage key; read once at start.
SELECT id FROM installation;
