-- sync-process: a least-privilege role for the REMOTE (central, "client server") database.
--
-- The daemon needs very little on the central database. This role can only:
--   * CONNECT to this database (and use the schema the tables live in, `public`);
--   * INSERT into meter_readings (plus USAGE on its id sequence, for the SERIAL default);
--   * INSERT, SELECT and DELETE on sync_upload_ledger (the upload writes a ledger row per batch in the same
--     statement as its readings; recovery looks batch ids up; pruning deletes this site's old rows);
--   * INSERT, SELECT and UPDATE on sync_upload_chain (with UPLOAD_BATCHES_IN_FLIGHT > 1: the site's head row
--     that keeps overlapping uploads in order), and EXECUTE on sync_upload_turn (an upload waiting for the one
--     before it; it runs with the caller's rights);
--   * SELECT on meters and tenant (the download mirrors them; the digests are plain SELECTs).
-- Nothing else: it cannot read, update or delete readings, cannot change meters or tenants, cannot create,
-- alter or drop anything (no DDL), is not a superuser, cannot create roles or databases, cannot replicate.
--
-- MIGRATIONS MUST BE RUN BY AN OWNER ROLE, not by this one: run `sync-process migrate --remote-only` once
-- with POSTGRES_CLIENT_USER set to the owner of the database (or a superuser), then run this script, then
-- configure the daemon with POSTGRES_CLIENT_USER set to this role. The tables must exist when this script
-- runs (it grants on them); run it again after a migration that adds a table the daemon uses.
--
-- Usage (as the database owner or a superuser, connected to the central database):
--
--   psql -h central.example.com -U postgres -d meterit_client \
--        -v role=sync_remote -f sql/least-privilege-remote-role.sql
--
-- psql variables:
--   role        the role to create or update         (default: sync_remote)
--   password    its password                         (default: none -- psql then asks for it with \password:
--                                                     the input is not shown and only its SCRAM hash is sent,
--                                                     so the plain password never reaches the server or its
--                                                     log; pass -v password=... only in automation)
--   conn_limit  its maximum concurrent sessions      (default: 20; the daemon's DB_POOL_MAX is 10)
--   no_password set (to anything) for a role that authenticates by client certificate alone (pg_hba.conf
--               `cert`): its password is removed and none is asked for
--
-- The script is idempotent: an existing role gets its password and attributes reset and the same grants;
-- anything else it held on the tables and sequences of `public` is revoked. One transaction: all or nothing.
--
-- Also recommended, outside this script: in pg_hba.conf let this role in only over TLS with a password,
--   hostssl meterit_client sync_remote 0.0.0.0/0 scram-sha-256
-- and set POSTGRES_CLIENT_SSLMODE=verify-full with POSTGRES_CLIENT_SSLROOTCERT on the edge box.

\set ON_ERROR_STOP on

\if :{?role}
\else
  \set role sync_remote
\endif
\if :{?conn_limit}
\else
  \set conn_limit 20
\endif

BEGIN;

-- The role: a plain login role, no inherited privileges beyond what is granted here. Re-running resets its
-- attributes (and its password, when one is given).
\set attributes 'LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS'
\if :{?password}
SELECT format('%s ROLE %I %s PASSWORD %L CONNECTION LIMIT %s',
              CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') THEN 'ALTER' ELSE 'CREATE' END,
              :'role', :'attributes', :'password', :'conn_limit'::int)
\gexec
\elif :{?no_password}
SELECT format('%s ROLE %I %s PASSWORD NULL CONNECTION LIMIT %s',
              CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') THEN 'ALTER' ELSE 'CREATE' END,
              :'role', :'attributes', :'conn_limit'::int)
\gexec
\else
SELECT format('%s ROLE %I %s CONNECTION LIMIT %s',
              CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') THEN 'ALTER' ELSE 'CREATE' END,
              :'role', :'attributes', :'conn_limit'::int)
\gexec
\endif

-- A clean slate in the schema (re-runs never accumulate privileges; an old grant does not survive).
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM :"role";
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM :"role";
REVOKE ALL ON SCHEMA public FROM :"role";

-- The database and the schema.
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'role') \gexec
GRANT USAGE ON SCHEMA public TO :"role";
-- No DDL: creating objects in `public` is revoked from PUBLIC (everyone). This is the default since
-- PostgreSQL 15 (a no-op there); on older servers it is the "secure schema usage pattern" of the PostgreSQL
-- documentation. If another application relies on creating objects in `public` as a non-owner, grant it
-- CREATE ON SCHEMA public explicitly.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- Upload: readings in, never out.
GRANT INSERT ON TABLE meter_readings TO :"role";
SELECT format('GRANT USAGE ON SEQUENCE %s TO %I', pg_get_serial_sequence('meter_readings', 'id'), :'role')
WHERE pg_get_serial_sequence('meter_readings', 'id') IS NOT NULL
\gexec

-- The upload ledger: write a row per batch, look batch ids up, prune old rows of this site.
GRANT INSERT, SELECT, DELETE ON TABLE sync_upload_ledger TO :"role";
-- The upload chain (UPLOAD_BATCHES_IN_FLIGHT > 1): this site's head row, inserted once, then updated.
GRANT INSERT, SELECT, UPDATE ON TABLE sync_upload_chain TO :"role";
GRANT EXECUTE ON FUNCTION sync_upload_turn(text, uuid, uuid, integer) TO :"role";

-- Download: read the configuration.
GRANT SELECT ON TABLE meters, tenant TO :"role";

COMMIT;

\if :{?password}
\elif :{?no_password}
\else
  \echo 'Password for role' :"role" '(not shown; only its SCRAM hash is sent):'
  \password :"role"
\endif

\echo 'role' :"role" 'can now run the sync (INSERT readings, INSERT/SELECT/DELETE ledger, INSERT/SELECT/UPDATE chain, SELECT meters and tenant)'
