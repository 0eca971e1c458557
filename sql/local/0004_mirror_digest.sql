-- Conflicts on the mirrored tables (DOWNLOAD_CONFLICT_POLICY; see ARCHITECTURE.md, "The download"). Additions only.
--
-- Per mirrored row, the digest of its values as the download last left them: the local server's own row digest
-- (hashtextextended of the key and the compared columns as text, synced_at excluded), the same expression
-- the download compares. A local row whose digest now differs from this one, or a row gone locally that still
-- has one here, was changed locally since it was last mirrored: a conflict. A row without a digest here (rows
-- mirrored before this table existed) counts as unchanged; the next download records its digest.
--   table_name  -- the mirrored table: meters or tenant
--   key         -- its primary key as text
--   bucket      -- the key's bucket, as the download computes it (hashtextextended(key COLLATE "C", 0) & 4095)
--   digest      -- the row digest
--   mirrored_at -- when the download last recorded it
-- Written only by the download, in the transaction that writes the rows.
CREATE TABLE IF NOT EXISTS sync_mirror_digest (
  table_name TEXT NOT NULL,
  key TEXT NOT NULL,
  bucket INTEGER NOT NULL,
  digest BIGINT NOT NULL,
  mirrored_at TIMESTAMP NOT NULL DEFAULT LOCALTIMESTAMP,
  PRIMARY KEY (table_name, key)
);

-- Serves the per-bucket sums and the rows of some buckets.
CREATE INDEX IF NOT EXISTS idx_sync_mirror_digest_bucket ON sync_mirror_digest(table_name, bucket);
