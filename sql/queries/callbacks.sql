-- Completion callbacks (worker/callbacks.py): one job_logs row per delivery outcome.

-- name: log_callback
-- event is 'callback_delivered' or 'callback_failed'; details holds url, status (HTTP status or null), tries
-- and webhook_id. Inserts nothing when the job was deleted meanwhile.
INSERT INTO job_logs (job_id, event, attempt, message, details)
SELECT id, %(event)s, %(attempt)s, %(message)s, %(details)s::jsonb
FROM job_queue WHERE id = %(job_id)s;
