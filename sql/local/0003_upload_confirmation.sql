-- The confirmation window (UPLOAD_CONFIRM_SECONDS > 0; see ARCHITECTURE.md, "The upload protocol").
-- Additions only.
--
-- A batch whose upload the remote acknowledged is kept locally, its readings marked is_synchronized = true (so
-- they are out of the queue: the claim never picks them), until the ledger is asked again after the window:
-- present -> the batch row and its readings are deleted; absent (the central failed over to a standby that
-- never received it) -> uploaded again under the same batch id, and the window starts again.
--   uploaded_at     -- when the remote first acknowledged the batch (for the warning when it has vanished)
--   acknowledged_at -- when it last did: the window counts from here. NULL: the batch is pending (claimed, its
--                      upload not known to have arrived), which recovery settles.
ALTER TABLE sync_upload_batches ADD COLUMN IF NOT EXISTS uploaded_at TIMESTAMPTZ;
ALTER TABLE sync_upload_batches ADD COLUMN IF NOT EXISTS acknowledged_at TIMESTAMPTZ;

-- Serves the confirmation step's "which batches are due" (only batches awaiting confirmation are indexed).
CREATE INDEX IF NOT EXISTS idx_sync_upload_batches_acknowledged_at ON sync_upload_batches(acknowledged_at)
  WHERE acknowledged_at IS NOT NULL;
