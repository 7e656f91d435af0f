-- The dashboards' role comfyq_grafana (0007) reads the views and nothing else, but it still held what PostgreSQL
-- gives every role through PUBLIC, the group all roles belong to: TEMPORARY on the database (temporary tables,
-- written to disk), EXECUTE on pg_notify (a false wake-up of every idle worker, or a cancel sent on
-- comfyq_cancel), on the advisory locks (a dashboard session holding the migrations' lock stops every
-- `comfyq migrate`) and on large-object creation (rows of its own in pg_largeobject), and before PostgreSQL 15
-- CREATE on schema public. Grafana's editors run any SQL they like as this role, and its read-only sessions are
-- only a default any session may switch off, so the privileges themselves go.
-- Forward-only: never edit this file once applied; add a new numbered migration instead.
--
-- A privilege PUBLIC holds cannot be withheld from one role, so PUBLIC loses these in this database, and the roles
-- that run comfyq keep them by name: the database's owner, the role running this migration and the owner of the
-- notify trigger functions (in docker-compose.yml all three are comfyq, a superuser, who needs no grant at all).
-- Another role that runs comfyq needs nothing more for the API and the workers: the triggers that notify the
-- workers now run with their owner's rights. One that runs `comfyq migrate` or the n8n alert workflow needs the
-- advisory locks: docs/grafana.md, "Setting up the read-only role", shows the GRANT.
--
-- Revoking on pg_catalog's functions takes a superuser (their owner): run by anyone else this migration still
-- applies, PostgreSQL warns "no privileges could be revoked", and a WARNING at the end names what is left to do.
--
-- No privilege guards the NOTIFY and LISTEN statements: any role that can connect may send or hear a notification
-- on any channel. Listeners must treat a notification as a hint to look at the tables, never as an order.
--
-- Safe to run again, and where the role does not exist (the PUBLIC part applies either way).

DO $$
DECLARE
    keepers text[];
    keeper text;
    functions text[];
    fn text;
    trigger_fn regprocedure;
    left_over text[];
BEGIN
    -- The trigger functions that wake workers (0001, 0011) call pg_notify with their owner's rights, so a role
    -- that only INSERTs jobs needs no EXECUTE on it. search_path is pinned, as for any function that runs as its
    -- owner. Only their owner (or a superuser) may change them; anyone else could not revoke pg_notify either.
    FOREACH trigger_fn IN ARRAY ARRAY['comfyq_notify_jobs()', 'comfyq_notify_cancel()']::regprocedure[] LOOP
        IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
           OR pg_has_role(current_user, (SELECT proowner FROM pg_proc WHERE oid = trigger_fn), 'USAGE') THEN
            EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, pg_temp', trigger_fn);
        ELSE
            RAISE WARNING '% stays SECURITY INVOKER: only its owner or a superuser may change it', trigger_fn;
        END IF;
    END LOOP;

    -- Who keeps what PUBLIC loses: the owner of this database, the role running the migration, the owner of the
    -- notify triggers. Superusers hold everything anyway.
    SELECT array_agg(DISTINCT r.rolname ORDER BY r.rolname) INTO keepers
    FROM pg_roles r
    WHERE NOT r.rolsuper
      AND r.rolname <> 'comfyq_grafana'
      AND (r.oid = (SELECT datdba FROM pg_database WHERE datname = current_database())
           OR r.rolname = current_user
           OR r.oid IN (SELECT proowner FROM pg_proc
                        WHERE proname IN ('comfyq_notify_jobs', 'comfyq_notify_cancel')
                          AND pronamespace = 'public'::regnamespace));

    -- pg_notify, every advisory-lock function that takes a lock (the unlocking ones release only the caller's
    -- own), and the large-object functions that create one (lo_import from a server file is superuser-only).
    SELECT array_agg(p.oid::regprocedure::text ORDER BY p.oid) INTO functions
    FROM pg_proc p
    WHERE p.pronamespace = 'pg_catalog'::regnamespace
      AND (p.proname = 'pg_notify'
           OR (p.proname LIKE 'pg\_%advisory\_%lock%' AND p.proname NOT LIKE '%unlock%')
           OR p.proname IN ('lo_creat', 'lo_create', 'lo_from_bytea'));

    -- Each keeps exactly what it holds now (through PUBLIC or by name), nothing more.
    FOREACH keeper IN ARRAY coalesce(keepers, '{}') LOOP
        IF has_database_privilege(keeper, current_database(), 'TEMPORARY') THEN
            EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO %I', current_database(), keeper);
        END IF;
        IF has_schema_privilege(keeper, 'public', 'CREATE') THEN
            EXECUTE format('GRANT CREATE ON SCHEMA public TO %I', keeper);
        END IF;
        FOREACH fn IN ARRAY functions LOOP
            IF has_function_privilege(keeper, fn::regprocedure, 'EXECUTE') THEN
                EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', fn, keeper);
            END IF;
        END LOOP;
    END LOOP;

    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    REVOKE CREATE ON SCHEMA public FROM PUBLIC;
    FOREACH fn IN ARRAY functions LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', fn);
    END LOOP;

    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'comfyq_grafana') THEN
        -- Whatever was granted to the role itself, by hand or otherwise: it keeps CONNECT, USAGE on schema
        -- public and SELECT on the views (0007), and loses everything that writes or creates.
        EXECUTE format('REVOKE CREATE, TEMPORARY ON DATABASE %I FROM comfyq_grafana', current_database());
        REVOKE CREATE ON SCHEMA public FROM comfyq_grafana;
        REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA public
            FROM comfyq_grafana;
        REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM comfyq_grafana;
        FOREACH fn IN ARRAY functions LOOP
            EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM comfyq_grafana', fn);
        END LOOP;

        SELECT array_agg(what) INTO left_over FROM (
            SELECT 'TEMPORARY' AS what WHERE has_database_privilege('comfyq_grafana', current_database(), 'TEMPORARY')
            UNION ALL
            SELECT 'CREATE ON SCHEMA public' WHERE has_schema_privilege('comfyq_grafana', 'public', 'CREATE')
            UNION ALL
            SELECT DISTINCT 'EXECUTE ON ' || split_part(f, '(', 1) FROM unnest(functions) AS f
            WHERE has_function_privilege('comfyq_grafana', f::regprocedure, 'EXECUTE')
        ) AS held;
        IF left_over IS NOT NULL THEN
            RAISE WARNING 'comfyq_grafana still holds %: run this migration''s statements as a superuser '
                          '(docs/grafana.md, "Setting up the read-only role")', array_to_string(left_over, ', ');
        END IF;
    END IF;
END
$$;
