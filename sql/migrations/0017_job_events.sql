-- Live job streams (comfyq events): the events process LISTENs on comfyq_job_events and reads the new job_logs
-- rows by id (sql/queries/events.sql). One notification per INSERT statement that inserted rows, with an empty
-- payload, so a 10k-job batch sends one, and Postgres folds identical notifications of one transaction into one.
-- An idle worker's claim that finds nothing inserts no row and sends nothing (a statement trigger fires even for
-- zero rows, hence the transition table).
CREATE FUNCTION comfyq_notify_job_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted) THEN
        PERFORM pg_notify('comfyq_job_events', '');
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER job_logs_notify_insert
    AFTER INSERT ON job_logs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION comfyq_notify_job_events();

-- Progress is not logged (a row per half second per job would swamp job_logs): a running job whose progress or
-- current node changes names itself on a channel of its own, and the events process reads its current state.
-- Transitions (queued -> running, running -> an end) do not fire it; their job_logs rows do the telling.
CREATE FUNCTION comfyq_notify_job_progress() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('comfyq_job_progress', NEW.id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER job_queue_notify_progress
    AFTER UPDATE OF progress, current_node ON job_queue
    FOR EACH ROW WHEN (OLD.status = 'running' AND NEW.status = 'running'
                       AND (OLD.progress IS DISTINCT FROM NEW.progress
                            OR OLD.current_node IS DISTINCT FROM NEW.current_node))
    EXECUTE FUNCTION comfyq_notify_job_progress();
