-- Remote (client server) seed schema, as in the design document. IF NOT EXISTS: an existing central
-- database is left as it is.

CREATE TABLE IF NOT EXISTS meter_readings (
  id SERIAL PRIMARY KEY,
  meter_id VARCHAR(255) NOT NULL,
  timestamp TIMESTAMP NOT NULL,
  value NUMERIC NOT NULL,
  unit VARCHAR(50) NOT NULL,
  metadata JSONB,
  created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX IF NOT EXISTS idx_meter_readings_meter_time ON meter_readings(meter_id, timestamp);

CREATE TABLE IF NOT EXISTS meters (
  meter_id VARCHAR(255) PRIMARY KEY,
  name VARCHAR(255) NOT NULL,
  location_id VARCHAR(255),
  meter_type VARCHAR(100) NOT NULL,
  unit VARCHAR(50) NOT NULL,
  configuration JSONB,
  updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE IF NOT EXISTS tenant (
  tenant_id VARCHAR(255) PRIMARY KEY,
  name VARCHAR(255) NOT NULL,
  configuration JSONB,
  metadata JSONB,
  updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);
