-- The upload ledger: one row per uploaded batch, written in the same statement (hence the same
-- transaction) as the batch's readings. A batch id present here means "these readings are in"; absent means
-- "none of them are". See ARCHITECTURE.md, "The upload protocol".
CREATE TABLE IF NOT EXISTS sync_upload_ledger (
  source_id TEXT NOT NULL,
  batch_id UUID NOT NULL,
  row_count INTEGER NOT NULL,
  uploaded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (source_id, batch_id)
);
-- Serves the prune: this source's rows older than the retention window.
CREATE INDEX IF NOT EXISTS idx_sync_upload_ledger_source_uploaded_at ON sync_upload_ledger(source_id, uploaded_at);
