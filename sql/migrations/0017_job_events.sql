-- Live job streams (comfyq events): the events process LISTENs and reads the new job_logs rows by id
-- (sql/queries/events.sql). What wakes it:
-- - a new job (a `queued` row): the comfyq_jobs notification that 0001_initial.sql already sends once per INSERT
--   into job_queue, so a 10k-job batch costs nothing more;
-- - a `claimed` row: nothing. A NOTIFY takes a cluster-wide lock at commit and holds it through the commit's WAL
--   flush, so notifying transactions commit one at a time, and the claim is the queue's hottest statement. The
--   row is read at the events process's next wake-up: the job's first progress, its end, any other event, or
--   the poll (COMFYQ_EVENTS_POLL_SECONDS), whichever comes first; ids keep the order;
-- - every other row (retries, rescues, ends, cancels): comfyq_job_events, with an empty payload, which Postgres
--   folds into one per transaction. The WHEN clause is evaluated without calling the function, so the claim and
--   the batch insert pay no function call.
CREATE FUNCTION comfyq_notify_job_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('comfyq_job_events', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER job_logs_notify_insert
    AFTER INSERT ON job_logs
    FOR EACH ROW WHEN (NEW.event NOT IN ('claimed', 'queued'))
    EXECUTE FUNCTION comfyq_notify_job_events();

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
