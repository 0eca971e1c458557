-- Local (sync server) seed schema, as in the design document.
-- Additions only: a database that already holds these tables (created by the program that collects
-- readings) keeps every row; missing columns and indexes are added, nothing is rewritten or dropped.

CREATE TABLE IF NOT EXISTS meter_readings (
  id SERIAL PRIMARY KEY,
  meter_id VARCHAR(255) NOT NULL,
  timestamp TIMESTAMP NOT NULL,
  value NUMERIC NOT NULL,
  unit VARCHAR(50) NOT NULL,
  metadata JSONB,
  is_synchronized BOOLEAN DEFAULT FALSE,
  created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
ALTER TABLE meter_readings ADD COLUMN IF NOT EXISTS metadata JSONB;
ALTER TABLE meter_readings ADD COLUMN IF NOT EXISTS is_synchronized BOOLEAN DEFAULT FALSE;
ALTER TABLE meter_readings ADD COLUMN IF NOT EXISTS created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP;
CREATE INDEX IF NOT EXISTS idx_meter_readings_sync ON meter_readings(is_synchronized, timestamp);
CREATE INDEX IF NOT EXISTS idx_meter_readings_meter_time ON meter_readings(meter_id, timestamp);

CREATE TABLE IF NOT EXISTS meters (
  meter_id VARCHAR(255) PRIMARY KEY,
  name VARCHAR(255) NOT NULL,
  location_id VARCHAR(255),
  meter_type VARCHAR(100) NOT NULL,
  unit VARCHAR(50) NOT NULL,
  configuration JSONB,
  updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
  synced_at TIMESTAMP
);
ALTER TABLE meters ADD COLUMN IF NOT EXISTS configuration JSONB;
ALTER TABLE meters ADD COLUMN IF NOT EXISTS synced_at TIMESTAMP;

CREATE TABLE IF NOT EXISTS tenant (
  tenant_id VARCHAR(255) PRIMARY KEY,
  name VARCHAR(255) NOT NULL,
  configuration JSONB,
  metadata JSONB,
  updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
  synced_at TIMESTAMP
);
ALTER TABLE tenant ADD COLUMN IF NOT EXISTS configuration JSONB;
ALTER TABLE tenant ADD COLUMN IF NOT EXISTS metadata JSONB;
ALTER TABLE tenant ADD COLUMN IF NOT EXISTS synced_at TIMESTAMP;

CREATE TABLE IF NOT EXISTS sync_logs (
  id SERIAL PRIMARY KEY,
  sync_type VARCHAR(50) NOT NULL,
  success BOOLEAN NOT NULL,
  records_processed INTEGER,
  error_message TEXT,
  duration_ms INTEGER,
  timestamp TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX IF NOT EXISTS idx_sync_logs_timestamp ON sync_logs(timestamp DESC);
