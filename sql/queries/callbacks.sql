-- Completion callbacks (worker/callbacks.py): an outbox in job_queue.callback_state, one job_logs row per
-- delivery outcome.

-- name: claim_callbacks
-- Due callbacks for this worker to send: pending ones, and ones whose sender vanished mid-delivery.
UPDATE job_queue j
SET callback_state = 'sending', callback_claimed_at = now()
FROM (
    SELECT id FROM job_queue
    WHERE callback_state = 'pending'
       OR (callback_state = 'sending'
           AND callback_claimed_at < now() - make_interval(secs => %(reclaim_seconds)s))
    ORDER BY id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) due
WHERE j.id = due.id
RETURNING j.*;

-- name: log_callback
-- event is 'callback_delivered' or 'callback_failed'; details holds url, status (HTTP status or null), tries
-- and webhook_id. %(state)s is the outbox state to leave: delivered, failed, or pending (to be sent again,
-- after a shutdown cut the delivery short). Inserts nothing when the job was deleted meanwhile.
WITH marked AS (
    UPDATE job_queue SET callback_state = %(state)s, callback_claimed_at = NULL
    WHERE id = %(job_id)s AND callback_state = 'sending'
    RETURNING id
)
INSERT INTO job_logs (job_id, event, attempt, message, details)
SELECT id, %(event)s, %(attempt)s, %(message)s, %(details)s::jsonb
FROM job_queue WHERE id = %(job_id)s;
