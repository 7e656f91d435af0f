-- Completion callbacks record each delivery outcome in job_logs, so the event list grows by two.
-- Forward-only: never edit this file once applied; add a new numbered migration instead.
-- Widening a CHECK is drop + add of the same named constraint; every existing row already satisfies it.

ALTER TABLE job_logs DROP CONSTRAINT job_logs_event_check;

ALTER TABLE job_logs ADD CONSTRAINT job_logs_event_check CHECK (event IN (
    'queued', 'claimed', 'progress', 'retry_scheduled', 'rescued', 'released', 'succeeded', 'failed',
    'canceled', 'cancel_requested', 'expired', 'requeued', 'callback_delivered', 'callback_failed'));
