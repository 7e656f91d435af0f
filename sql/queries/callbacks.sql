-- Completion callbacks (worker/callbacks.py): an outbox in job_queue.callback_state, one job_logs row per
-- delivery outcome.

-- name: claim_callbacks
-- Due callbacks for this worker to send: pending ones, and ones whose sender vanished mid-delivery, of tenants
-- that have an active signing secret (the others wait until they have one).
UPDATE job_queue j
SET callback_state = 'sending', callback_claimed_at = now()
FROM (
    SELECT q.id FROM job_queue q
    WHERE (q.callback_state = 'pending'
           OR (q.callback_state = 'sending'
               AND q.callback_claimed_at < now() - make_interval(secs => %(reclaim_seconds)s)))
      AND EXISTS (SELECT 1 FROM callback_secrets s WHERE s.tenant = q.tenant AND s.retired_at IS NULL)
    ORDER BY q.id
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

-- name: release_callback
-- A claimed callback goes back to waiting, unlogged: its tenant's last secret was retired before it was sent.
UPDATE job_queue SET callback_state = 'pending', callback_claimed_at = NULL
WHERE id = %(job_id)s AND callback_state = 'sending';

-- name: callbacks_waiting_for_secret
-- Tenants whose callbacks wait in the outbox because they have no active secret, for the worker's warning.
SELECT j.tenant, count(*) AS waiting
FROM job_queue j
WHERE j.callback_state = 'pending'
  AND NOT EXISTS (SELECT 1 FROM callback_secrets s WHERE s.tenant = j.tenant AND s.retired_at IS NULL)
GROUP BY j.tenant
ORDER BY j.tenant;
