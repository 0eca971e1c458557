//! The integration tests: one binary, one shared throwaway PostgreSQL server (support::pg), a fresh database
//! pair per test. A module per area.

mod support;

mod central_faults;
mod citus;
mod cli;
mod dashboard;
mod db;
mod download;
mod download_conflict;
mod failover;
mod fleet_security;
mod harness;
mod hostile;
mod journald;
mod mcp;
mod migrate;
mod monitoring;
mod output;
mod packaging;
mod pooler;
mod security;
mod service;
mod status;
mod status_bind;
mod upload;
mod webhooks;
