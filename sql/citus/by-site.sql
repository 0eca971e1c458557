-- sync-process on a Citus central, layout (b): co-located by site. Each reading carries the site that sent it
-- (the daemon fills the column named by UPLOAD_SOURCE_COLUMN with its SYNC_SOURCE_ID; here `site_id`), and
-- readings, the upload ledger and chain are distributed by site and co-located, so one batch is a
-- single-shard transaction (no two-phase commit). Meters and tenant are reference tables. README.md, "At fleet
-- scale", says what each layout costs per batch.
--
-- Run ONCE on the coordinator, as the owner, right after `sync-process migrate --remote-only` and before any
-- reading arrives. Then run sql/least-privilege-remote-role.sql, and
--   ALTER ROLE <the daemon's role> SET citus.multi_shard_modify_mode = 'sequential';
-- and set UPLOAD_SOURCE_COLUMN=site_id on every daemon (a reading without it is refused: NOT NULL).

-- The seed's `id SERIAL` is int4 (2^31 ids: months, for a fleet) and Citus cannot widen it later.
ALTER TABLE meter_readings ALTER COLUMN id TYPE bigint;
ALTER SEQUENCE meter_readings_id_seq AS bigint;
ALTER TABLE meter_readings ADD COLUMN site_id TEXT NOT NULL;
-- A distributed table's primary key must include its distribution column.
ALTER TABLE meter_readings DROP CONSTRAINT meter_readings_pkey;
ALTER TABLE meter_readings ADD PRIMARY KEY (site_id, id);

SELECT create_distributed_table('sync_upload_ledger', 'source_id');
SELECT create_distributed_table('sync_upload_chain', 'source_id', colocate_with => 'sync_upload_ledger');
SELECT create_distributed_table('meter_readings', 'site_id', colocate_with => 'sync_upload_ledger');
SELECT create_reference_table('meters');
SELECT create_reference_table('tenant');
