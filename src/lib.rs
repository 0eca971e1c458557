//! sync-process: keeps an edge PostgreSQL (the sync server) in step with a central one (the client server).
//!
//! Readings flow up, exactly once (upload/); meters and tenants flow down, mirrored (download.rs); the
//! scheduler runs cycles (scheduler.rs). ARCHITECTURE.md is the map.

// stdout is written through output.rs only (a closed or full stdout must not panic, as println! does).
#![deny(clippy::print_stdout)]

pub mod alerts;
pub mod check;
pub mod cli;
pub mod config;
pub mod db;
pub mod demo;
pub mod download;
pub mod error;
pub mod jitter;
pub mod logging;
pub mod mcp;
pub mod migrate;
pub mod output;
pub mod pgtemp;
pub mod quarantine;
pub mod report;
pub mod retry;
pub mod scheduler;
pub mod shutdown;
pub mod signals;
pub mod status;
pub mod systemd;
pub mod upload;
