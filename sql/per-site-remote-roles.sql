-- sync-process: one role per site on the REMOTE (central, "client server") database, each confined to its
-- own rows of the upload bookkeeping by row-level security.
--
-- Why: with one shared role (sql/least-privilege-remote-role.sql alone) every box can read every site's
-- upload ledger and delete other sites' ledger rows -- and a site whose ledger row vanished uploads that batch
-- again at its next recovery: duplicates in the central, caused from another box. A shared role also cannot
-- be revoked for one box.
--
-- What this script does, for one site per run (run it once per box; it is idempotent):
--   * creates or resets the site's role with exactly the grants of sql/least-privilege-remote-role.sql
--     (included below: one list of grants);
--   * records the mapping role -> source id in the central table sync_site_role (created here): the role's
--     SYNC_SOURCE_ID. One source id per role; several roles may map to one source id (e.g. while a box's
--     role is being replaced);
--   * enables row-level security on sync_upload_ledger and sync_upload_chain with one policy each: a role
--     sees, inserts, updates and deletes only the rows whose source_id is the one sync_site_role maps it to.
--     A role with no mapping sees nothing and can write nothing there. sync_site_role itself is
--     row-level secured too: a role reads only its own mapping.
-- The daemon needs no change: its statements always name its own source id (the upload's ledger row, the
-- recovery and confirmation lookups, the prune, the chain head). A box configured with another site's
-- SYNC_SOURCE_ID is refused ("new row violates row-level security policy", SQLSTATE 42501) and its readings
-- stay queued; its lookups of that site's batches find nothing.
--
-- The table owner (who runs the migrations) and superusers are not subject to these policies (they are not
-- FORCEd): monitoring and support queries as the owner see every site. ANY OTHER ROLE that uploads into this
-- central database must be mapped too: once this script has run, an unmapped role (e.g. a shared sync_remote
-- role from before) can no longer upload. Move every box to its own role before (or right after) the first run.
--
-- Usage (as the owner of the tables or a superuser, connected to the central database; the tables must exist,
-- i.e. `sync-process migrate --remote-only` ran as the owner):
--
--   psql -h central.example.com -U owner -d meterit_client \
--        -v role=site_box_0042 -v source_id=box-0042 -f sql/per-site-remote-roles.sql
--
-- psql variables:
--   role         the site's role                           (required)
--   source_id    the site's SYNC_SOURCE_ID on its box        (required)
--   password     its password (default: asked for with \password, not shown; pass -v password=... only in
--                automation)
--   no_password  set for a box that authenticates with its client certificate alone (pg_hba.conf `cert`; the
--                certificate's CN must be the role name)
--   conn_limit   its maximum concurrent sessions            (default: 20)
--
-- Revoking one box (README: Security, "Revoking one box"): ALTER ROLE <role> NOLOGIN (its next connection is
-- refused: "role ... is not permitted to log in"), then end its sessions with
-- SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '<role>'. Deleting its
-- sync_site_role row also stops its uploads (nothing of the ledger is visible or writable for it any more).
-- A box with a client certificate: also add its certificate to the CRL in the server's ssl_crl_file.

\set ON_ERROR_STOP on

\if :{?role}
\else
  \echo 'per-site-remote-roles.sql: set -v role=<the site''s role>'
  \quit
\endif
\if :{?source_id}
\else
  \echo 'per-site-remote-roles.sql: set -v source_id=<the site''s SYNC_SOURCE_ID>'
  \quit
\endif

-- The role and its grants: one list, in the least-privilege script (its own transaction).
\ir least-privilege-remote-role.sql

BEGIN;

-- The mapping: which source id each site role uploads as. Only the owner writes it.
CREATE TABLE IF NOT EXISTS sync_site_role (
  role_name NAME PRIMARY KEY,
  source_id TEXT NOT NULL,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS idx_sync_site_role_source_id ON sync_site_role(source_id);
REVOKE ALL ON TABLE sync_site_role FROM PUBLIC;

INSERT INTO sync_site_role (role_name, source_id) VALUES (:'role', :'source_id')
ON CONFLICT (role_name) DO UPDATE SET source_id = EXCLUDED.source_id, updated_at = now();

-- A role reads its own mapping row only (the policies below look it up as the connecting role).
ALTER TABLE sync_site_role ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS sync_site_role_own ON sync_site_role;
CREATE POLICY sync_site_role_own ON sync_site_role FOR SELECT USING (role_name = current_user);
GRANT SELECT ON TABLE sync_site_role TO :"role";

-- The ledger and the chain: only the rows of the connecting role's source id, for every command. The scalar
-- subquery is evaluated once per statement, so the ledger's (source_id, ...) indexes still serve the lookups.
ALTER TABLE sync_upload_ledger ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS sync_site_own_rows ON sync_upload_ledger;
CREATE POLICY sync_site_own_rows ON sync_upload_ledger FOR ALL
  USING (source_id = (SELECT m.source_id FROM sync_site_role m WHERE m.role_name = current_user))
  WITH CHECK (source_id = (SELECT m.source_id FROM sync_site_role m WHERE m.role_name = current_user));

ALTER TABLE sync_upload_chain ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS sync_site_own_rows ON sync_upload_chain;
CREATE POLICY sync_site_own_rows ON sync_upload_chain FOR ALL
  USING (source_id = (SELECT m.source_id FROM sync_site_role m WHERE m.role_name = current_user))
  WITH CHECK (source_id = (SELECT m.source_id FROM sync_site_role m WHERE m.role_name = current_user));

COMMIT;

\echo 'role' :"role" 'uploads as source id' :'source_id' '(row-level security on sync_upload_ledger and sync_upload_chain)'
