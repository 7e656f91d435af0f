-- Completion callbacks become an outbox: a job that reaches a final state with a callback_url is marked
-- 'pending' by a trigger, whatever moved it there (a worker, the API's cancel, lease rescue, expiry), and any
-- worker delivers it. A worker that dies mid-delivery leaves it 'sending'; after the claim times out another
-- worker sends it again under the same webhook-id, so receivers can drop the duplicate.

ALTER TABLE job_queue
    ADD COLUMN callback_state text,
    ADD COLUMN callback_claimed_at timestamptz,
    ADD CONSTRAINT job_queue_callback_state_check
        CHECK (callback_state IS NULL OR callback_state IN ('pending', 'sending', 'delivered', 'failed'));

CREATE INDEX job_queue_callback_due_idx ON job_queue (id) WHERE callback_state IN ('pending', 'sending');

CREATE FUNCTION comfyq_mark_callback() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IN ('succeeded', 'failed', 'canceled', 'expired')
       AND OLD.status NOT IN ('succeeded', 'failed', 'canceled', 'expired')
       AND NEW.callback_url IS NOT NULL THEN
        NEW.callback_state := 'pending';
        NEW.callback_claimed_at := NULL;
    ELSIF NEW.status = 'queued' AND OLD.status <> 'queued' THEN
        NEW.callback_state := NULL;  -- retried: the next final state gets its own callback
        NEW.callback_claimed_at := NULL;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER job_queue_mark_callback
    BEFORE UPDATE OF status ON job_queue
    FOR EACH ROW EXECUTE FUNCTION comfyq_mark_callback();
