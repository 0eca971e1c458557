-- sync-process on a Citus central, layout (a): readings distributed by meter_id; the upload ledger and chain,
-- meters and tenant as reference tables. README.md, "At fleet scale", says what each layout costs per batch.
--
-- Run ONCE on the coordinator, as the owner, right after `sync-process migrate --remote-only` and before any
-- reading arrives (Citus refuses to change the id's type once the table is distributed). Then run
-- sql/least-privilege-remote-role.sql, and
--   ALTER ROLE <the daemon's role> SET citus.multi_shard_modify_mode = 'sequential';
-- (with Citus's default, a batch opens a connection and a two-phase commit per shard it touches).

-- The seed's `id SERIAL` is int4 (2^31 ids: months, for a fleet) and Citus cannot widen it later; writes
-- through a worker also need a bigint sequence.
ALTER TABLE meter_readings ALTER COLUMN id TYPE bigint;
ALTER SEQUENCE meter_readings_id_seq AS bigint;
-- A distributed table's primary key must include its distribution column.
ALTER TABLE meter_readings DROP CONSTRAINT meter_readings_pkey;
ALTER TABLE meter_readings ADD PRIMARY KEY (meter_id, id);

SELECT create_distributed_table('meter_readings', 'meter_id');
SELECT create_reference_table('sync_upload_ledger');
SELECT create_reference_table('sync_upload_chain');
SELECT create_reference_table('meters');
SELECT create_reference_table('tenant');
