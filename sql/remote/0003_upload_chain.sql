-- The upload chain: used only with UPLOAD_BATCHES_IN_FLIGHT > 1, when a site uploads several batches at once on
-- separate connections. One row per site names the last batch it uploaded (its head). The statement that
-- uploads a batch moves the head from the batch before it to itself: it waits on this row's lock until the
-- batch before it commits, and inserts nothing if that batch did not commit. So batches reach the remote in
-- their claim order even when their statements overlap. See ARCHITECTURE.md, "The upload protocol".
CREATE TABLE IF NOT EXISTS sync_upload_chain (
  source_id TEXT PRIMARY KEY,
  head UUID NOT NULL,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
