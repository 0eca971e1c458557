-- Bookkeeping of the exactly-once upload (see ARCHITECTURE.md, "The upload protocol").

-- The claim query walks the queue in (timestamp, id) order from a remembered key: this index serves exactly it.
-- The queue is the readings not marked synchronized (this daemon deletes uploaded readings and never sets the
-- flag; rows another program marked true are not uploaded again).
CREATE INDEX IF NOT EXISTS idx_meter_readings_claim ON meter_readings(timestamp, id)
  WHERE is_synchronized IS NOT TRUE;

-- A claimed batch: its id (also the remote ledger key) and the exact reading ids it holds, in upload order.
-- A batch row exists from the claim until the readings are deleted locally (finish) or split (poison).
CREATE TABLE IF NOT EXISTS sync_upload_batches (
  batch_id UUID PRIMARY KEY,
  reading_ids BIGINT[] NOT NULL,
  claimed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  attempts INTEGER NOT NULL DEFAULT 0,
  last_error TEXT
);

-- Readings the remote rejected for a data reason, kept until an operator retries or discards them.
CREATE TABLE IF NOT EXISTS sync_quarantine (
  id BIGINT PRIMARY KEY,
  meter_id TEXT NOT NULL,
  timestamp TIMESTAMP NOT NULL,
  value NUMERIC NOT NULL,
  unit TEXT NOT NULL,
  metadata JSONB,
  created_at TIMESTAMP,
  error TEXT NOT NULL,
  sqlstate TEXT,
  quarantined_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
