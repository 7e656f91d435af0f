-- Alert delivery, at least once per channel: every alert transition that comfyq_alert_transitions() moves
-- (firing, repeat, resolved) queues one notification per channel (Slack, email) in the same transaction, with the
-- numbers and the state of the workers at that moment. The n8n monitor claims the pending ones, sends each, and
-- marks it delivered only once the channel took it; what a run did not deliver is released and sent again on the next run,
-- in order, so a channel that was down gets the FIRING before the RESOLVED. Texts are made here (with the
-- installation's name and links, which n8n passes in), so they are tested without n8n.
-- Forward-only: never edit this file once applied; add a new numbered migration instead.

CREATE TABLE monitor_notifications (
    id           bigserial PRIMARY KEY,
    alert        text        NOT NULL,
    transition   text        NOT NULL,
    channel      text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    value        double precision,
    threshold    double precision,
    -- When the alert started (for a resolved one: the start of the episode it ends).
    active_since timestamptz,
    -- The comfyq_monitoring row and the workers' state when the transition happened.
    snapshot     jsonb       NOT NULL,
    claim        uuid,
    claimed_at   timestamptz,
    attempts     integer     NOT NULL DEFAULT 0,
    delivered_at timestamptz,
    -- Delivered as "not sent": the channel was not set up in n8n when it was due.
    skipped      boolean     NOT NULL DEFAULT false,
    CONSTRAINT monitor_notifications_transition_check CHECK (transition IN ('firing', 'repeat', 'resolved')),
    CONSTRAINT monitor_notifications_channel_check CHECK (channel IN ('slack', 'email'))
);

CREATE INDEX monitor_notifications_pending_idx ON monitor_notifications (id) WHERE delivered_at IS NULL;
CREATE INDEX monitor_notifications_claim_idx ON monitor_notifications (claim);

-- What the person on call reads with an alert: the monitoring row plus how many workers are live and which of them
-- see ComfyUI or the storage down (workers.dependencies_down, written with each heartbeat).
CREATE FUNCTION comfyq_alert_snapshot() RETURNS jsonb LANGUAGE sql STABLE AS $$
    WITH m AS (SELECT * FROM comfyq_monitoring), live AS (
        SELECT w.id, w.dependencies_down
        FROM workers w, m
        WHERE w.status IN ('running', 'draining')
          AND w.heartbeat_at >= now() - make_interval(secs => m.heartbeat_silence_seconds)
    )
    SELECT to_jsonb(m) || jsonb_build_object(
        'comfyui_down_workers', (SELECT count(*) FROM live WHERE 'comfyui' = ANY(dependencies_down)),
        'comfyui_down_ids', (SELECT coalesce(jsonb_agg(id ORDER BY id), '[]') FROM live
                             WHERE 'comfyui' = ANY(dependencies_down)),
        'storage_down_workers', (SELECT count(*) FROM live WHERE 'storage' = ANY(dependencies_down)))
    FROM m
$$;

-- Queue the notifications of a transition, in the transaction that moves the alert's state: the transition
-- function stamps last_notified_at exactly when it returns a row to send.
CREATE FUNCTION comfyq_queue_alert_notifications() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO monitor_notifications (alert, transition, channel, value, threshold, active_since, snapshot)
    SELECT NEW.alert,
           CASE WHEN NOT NEW.active THEN 'resolved' WHEN NOT OLD.active THEN 'firing' ELSE 'repeat' END,
           c.channel, NEW.value, NEW.threshold, coalesce(NEW.active_since, OLD.active_since),
           comfyq_alert_snapshot()
    FROM (VALUES ('slack'), ('email')) AS c(channel);
    RETURN NULL;
END;
$$;

CREATE TRIGGER monitor_alert_state_notify
    AFTER UPDATE OF last_notified_at ON monitor_alert_state
    FOR EACH ROW WHEN (NEW.last_notified_at IS NOT NULL AND NEW.last_notified_at IS DISTINCT FROM OLD.last_notified_at)
    EXECUTE FUNCTION comfyq_queue_alert_notifications();

-- "1 job", "3 jobs".
CREATE FUNCTION comfyq_plural(n numeric, one text, many text) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT trim_scale(n)::text || ' ' || CASE WHEN n = 1 THEN one ELSE many END
$$;

-- The subject and text of one notification: the installation's name, what is wrong with the numbers, the likely
-- cause from the workers' state, the next step, and links to the dashboard, the job list and the runbook.
CREATE FUNCTION comfyq_notification_text(
    n monitor_notifications, installation text, grafana_url text, jobs_url text, runbook_url text)
RETURNS TABLE (subject text, body text) LANGUAGE plpgsql STABLE AS $$
DECLARE
    s jsonb := n.snapshot;
    live bigint := coalesce((s ->> 'live_workers')::bigint, 0);
    comfyui_down bigint := coalesce((s ->> 'comfyui_down_workers')::bigint, 0);
    storage_down bigint := coalesce((s ->> 'storage_down_workers')::bigint, 0);
    word text := CASE n.transition WHEN 'firing' THEN 'FIRING' WHEN 'repeat' THEN 'STILL FIRING' ELSE 'RESOLVED' END;
    detail text;
    cause text;
    next_step text;
    dashboard text;
    job_status text := 'queued';
    head text;
BEGIN
    detail := CASE n.alert
        WHEN 'queue_depth' THEN format('%s queued, %s running',
            comfyq_plural((s ->> 'queued_jobs')::numeric, 'job', 'jobs'), s ->> 'running_jobs')
        WHEN 'oldest_queued_seconds' THEN format('the oldest queued job has waited %s (%s queued)',
            comfyq_duration((s ->> 'oldest_queued_seconds')::float8),
            comfyq_plural((s ->> 'queued_jobs')::numeric, 'job', 'jobs'))
        WHEN 'failures' THEN format('%s failed in the last %s',
            comfyq_plural((s ->> 'failed_jobs')::numeric, 'job', 'jobs'),
            comfyq_duration((s ->> 'failure_window_seconds')::float8))
            || CASE WHEN s ->> 'top_error_type' IS NULL THEN ''
                    ELSE format('; top error: %s (%s): %s', s ->> 'top_error_type',
                                comfyq_plural((s ->> 'top_error_jobs')::numeric, 'job', 'jobs'),
                                coalesce(s ->> 'top_error_message', '')) END
        WHEN 'silent_workers' THEN format('%s without a heartbeat for %s and not taken over',
            comfyq_plural((s ->> 'silent_workers')::numeric, 'worker', 'workers'),
            comfyq_duration((s ->> 'heartbeat_silence_seconds')::float8))
            || CASE WHEN jsonb_array_length(coalesce(s -> 'silent_worker_ids', '[]')) > 0
                    THEN ': ' || (SELECT string_agg(x, ', ') FROM jsonb_array_elements_text(s -> 'silent_worker_ids') x)
                    ELSE '' END
        WHEN 'overdue_jobs' THEN format('%s running past their timeout',
            comfyq_plural((s ->> 'overdue_jobs')::numeric, 'job', 'jobs'))
            || CASE WHEN jsonb_array_length(coalesce(s -> 'overdue_job_ids', '[]')) > 0
                    THEN ': ' || (SELECT string_agg(x, ', ') FROM jsonb_array_elements_text(s -> 'overdue_job_ids') x)
                    ELSE '' END
        ELSE format('value %s', comfyq_number(n.value))
    END;

    cause := CASE
        WHEN live = 0 THEN 'no worker is alive (none sent a heartbeat in the last '
            || comfyq_duration((s ->> 'heartbeat_silence_seconds')::float8) || ')'
        WHEN comfyui_down > 0 THEN format('ComfyUI is down on %s of %s (%s)', comfyui_down,
            comfyq_plural(live, 'live worker', 'live workers'),
            (SELECT string_agg(x, ', ') FROM jsonb_array_elements_text(s -> 'comfyui_down_ids') x))
        WHEN storage_down > 0 THEN format('the storage is down for %s of %s', storage_down,
            comfyq_plural(live, 'live worker', 'live workers'))
    END;
    next_step := CASE
        WHEN live = 0 THEN 'start workers (docker compose up -d worker, or make worker) and check why they stopped: '
            || 'comfyq workers'
        WHEN comfyui_down > 0 THEN 'check the ComfyUI instances of those workers (their COMFYUI_URL); jobs wait '
            || 'for them without spending attempts'
        WHEN storage_down > 0 THEN 'check the object store (MinIO/S3) the workers write to'
        WHEN n.alert IN ('queue_depth', 'oldest_queued_seconds') THEN format(
            'the %s drain the queue slower than it fills: add workers or look at job durations',
            comfyq_plural(live, 'live worker', 'live workers'))
        WHEN n.alert = 'failures' THEN 'look at the top error and the failed jobs'
        WHEN n.alert = 'silent_workers' THEN 'look at those workers'' hosts; another worker declares them dead '
            || 'and their jobs are rescued'
        WHEN n.alert = 'overdue_jobs' THEN 'look at those jobs in ComfyUI; cancel the stuck ones'
    END;
    dashboard := CASE n.alert
        WHEN 'failures' THEN 'comfyq-failures'
        WHEN 'silent_workers' THEN 'comfyq-workers'
        WHEN 'overdue_jobs' THEN 'comfyq-workers'
        ELSE 'comfyq-queue-overview'
    END;
    job_status := CASE n.alert WHEN 'failures' THEN 'failed' WHEN 'overdue_jobs' THEN 'running' ELSE 'queued' END;

    head := format('[%s] %s %s', installation, word, n.alert);
    subject := format('%s: %s (threshold %s)', head, comfyq_number(n.value), comfyq_number(n.threshold));
    body := head
        || CASE n.transition
               WHEN 'firing' THEN ''
               ELSE format(' %s %s', CASE n.transition WHEN 'repeat' THEN 'for' ELSE 'after' END,
                           comfyq_duration(extract(epoch FROM n.created_at - n.active_since)::float8))
           END
        || format(': %s (value %s, threshold %s)', detail, comfyq_number(n.value), comfyq_number(n.threshold))
        || CASE WHEN n.transition <> 'resolved' AND cause IS NOT NULL
                THEN E'\nLikely cause: ' || cause || '.' ELSE '' END
        || CASE WHEN n.transition <> 'resolved' AND next_step IS NOT NULL
                THEN E'\nNext step: ' || next_step || '.' ELSE '' END
        || CASE WHEN now() - n.created_at > interval '2 minutes'
                THEN format(E'\nSent late: detected at %s UTC, when this channel could not be reached.',
                            to_char(n.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')) ELSE '' END
        || format(E'\nDashboard: %s/d/%s', grafana_url, dashboard)
        || format(E'\nJobs: %s/jobs?status=%s', jobs_url, job_status)
        || format(E'\nRunbook: %s#%s', runbook_url, n.alert);
    RETURN NEXT;
END;
$$;

-- How long a run holds what it claimed: past this, a run that died (n8n killed, a node that failed before
-- *Anything undelivered*) is taken to have lost it and the next run sends it again. Longer than a run takes.
CREATE FUNCTION comfyq_notification_lease() RETURNS interval LANGUAGE sql IMMUTABLE AS $$
    SELECT interval '5 minutes'
$$;

-- Claim the pending notifications of the channels n8n has set up, oldest first, for one monitor run; those of a
-- channel that is not set up are marked skipped. A claim is a lease, not a mark: the row stays undelivered until
-- comfyq_notification_delivered(), a run releases what it did not deliver (comfyq_undelivered), and a lease left
-- by a run that died expires. Runs overlap (a slow Slack post outlasts the schedule): a channel with a row still
-- leased by another run is left to that run entirely, so no run sends a channel's RESOLVED while another still
-- holds its FIRING; claims are serialised so two runs never decide that at once.
CREATE FUNCTION comfyq_claim_notifications(
    installation text, grafana_url text, jobs_url text, runbook_url text, slack_on boolean, email_on boolean)
RETURNS TABLE (id bigint, claim uuid, channel text, alert text, transition text, subject text, body text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    token uuid := gen_random_uuid();
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('comfyq_claim_notifications'));
    UPDATE monitor_notifications
    SET delivered_at = clock_timestamp(), skipped = true
    WHERE delivered_at IS NULL
      AND ((channel = 'slack' AND NOT slack_on) OR (channel = 'email' AND NOT email_on));
    RETURN QUERY
    WITH busy AS (
        SELECT DISTINCT b.channel FROM monitor_notifications b
        WHERE b.delivered_at IS NULL AND b.claimed_at >= clock_timestamp() - comfyq_notification_lease()
    ), claimed AS (
        UPDATE monitor_notifications n
        SET claim = token, claimed_at = clock_timestamp(), attempts = n.attempts + 1
        WHERE n.id IN (SELECT p.id FROM monitor_notifications p
                       WHERE p.delivered_at IS NULL AND p.channel NOT IN (SELECT channel FROM busy)
                       ORDER BY p.id LIMIT 50)
        RETURNING n.*
    )
    SELECT c.id, c.claim, c.channel, c.alert, c.transition, t.subject, t.body
    FROM claimed c
    CROSS JOIN LATERAL comfyq_notification_text(c::monitor_notifications, installation, grafana_url, jobs_url,
                                                runbook_url) t
    ORDER BY c.id;
END;
$$;

-- The channel took it: the only way a claimed row becomes delivered.
CREATE FUNCTION comfyq_notification_delivered(notification bigint) RETURNS boolean LANGUAGE sql AS $$
    UPDATE monitor_notifications SET delivered_at = clock_timestamp() WHERE id = notification AND delivered_at IS NULL
    RETURNING true
$$;

-- What a run left undelivered (refused, unreachable, or its item lost on the way), by channel, released so the next
-- run sends it again; the run then fails, and its error workflow says so by the other channel.
CREATE FUNCTION comfyq_undelivered(run_claim uuid) RETURNS TABLE (undelivered integer, channels text)
LANGUAGE sql AS $$
    WITH released AS (
        UPDATE monitor_notifications SET claim = NULL, claimed_at = NULL
        WHERE claim = run_claim AND delivered_at IS NULL
        RETURNING channel
    )
    SELECT count(*)::integer, coalesce(string_agg(DISTINCT channel, ', '), '') FROM released
$$;
