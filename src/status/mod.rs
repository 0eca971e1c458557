//! Status: the daemon's state as others see it, and the small HTTP server that shows it.
//!
//! Owns: [`SyncStatus`] (the design's SyncStatus, JSON in camelCase, plus oldestPendingAge, quarantinedCount,
//! consecutiveFailures, cycleInProgress, activeAlerts, stale, lastCycleResult and clientCertificates
//! ([`CertificateStatus`])), [`Snapshot`] (the status plus
//! the counters behind /metrics) and [`health`]. The parts: `fresh.rs` ([`Fresh`]: queueSize, oldestPendingAge,
//! quarantinedCount and localDbConnected measured at request time on the server's own one-connection local pool,
//! waited for at most [`FRESH_DEADLINE`]), `history.rs` ([`History`]: the bounded ring behind GET /history),
//! `metrics.rs` (GET /metrics), `http.rs` (reading one request within size and time bounds), `server.rs`
//! ([`StatusServer`]: an accept thread and a few workers, the Host check, [`route`]), `listener.rs`
//! ([`StatusListener`]: a taken STATUS_BIND tried again each interval), `dashboard.rs` (GET /
//! and its script and style), `command.rs` (the `sync-process status` client: [`print_status`],
//! [`StatusOutcome`]). The server never takes a lock the sync loop holds for longer than a copy, and never uses
//! the loop's pools, so it can neither block nor be blocked by the sync loop.
//! Does not own: measuring after a cycle (the scheduler writes the snapshot and pushes the history).

mod command;
mod dashboard;
mod fresh;
mod history;
mod http;
mod listener;
mod metrics;
mod process;
mod server;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::report::SyncCycleResult;

pub use command::{client_addr, daemon_get, fetch_status, human, print_status, url_addr, StatusOutcome, STATUS_OFF};
pub use fresh::{Fresh, Measured, FRESH_DEADLINE, FRESH_SQL};
pub use history::{lock_history, unix_ms_of, CycleEntry, History, SharedHistory, HISTORY_LEN};
pub use listener::{StatusListener, BIND_ATTEMPTS_UNDER_SYSTEMD};
pub use metrics::{render_metrics, render_metrics_with, PartStats, DURATION_BUCKETS_MS};
pub use process::ProcessStats;
pub use server::{host_allowed, route, Reply, StatusServer, QUEUED, WORKERS};

/// The status JSON (GET /status). Times are RFC 3339 UTC; `oldestPendingAge` is in seconds (null: empty queue).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// The daemon loop is running (false once shutdown has begun).
    pub is_running: bool,
    /// A cycle is being run right now.
    pub cycle_in_progress: bool,
    pub last_sync_time: Option<String>,
    pub last_sync_success: bool,
    pub last_sync_error: Option<String>,
    pub queue_size: u64,
    /// Readings uploaded since the daemon started.
    pub total_records_synced: u64,
    pub local_meter_count: u64,
    pub remote_meter_count: u64,
    pub local_tenant_count: u64,
    pub remote_tenant_count: u64,
    pub local_db_connected: bool,
    pub remote_db_connected: bool,
    pub oldest_pending_age: Option<u64>,
    pub quarantined_count: u64,
    /// Readings uploaded and kept for UPLOAD_CONFIRM_SECONDS until the ledger is asked again (not in
    /// `queueSize`).
    pub awaiting_confirmation: u64,
    /// Seconds since the oldest batch awaiting confirmation was first acknowledged (null: none).
    pub oldest_awaiting_confirmation_age: Option<u64>,
    pub consecutive_failures: u32,
    /// The alerts raised and not cleared (names as in the log lines and webhooks), in name order.
    pub active_alerts: Vec<String>,
    /// True when queueSize, oldestPendingAge and quarantinedCount are the last measured values, not values
    /// measured for this request (the local database did not answer in time, or failed).
    pub stale: bool,
    pub last_cycle_result: Option<SyncCycleResult>,
    /// Conditions an operator should act on before they fail a cycle (e.g. the central's int4 id past half
    /// of its range); absent from the JSON when there are none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The client certificates presented (`*_SSLCERT`), with their expiry; absent when none is configured.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub client_certificates: Vec<CertificateStatus>,
}

/// One client certificate as /status shows it: `{"database": "remote", "file": ..., "subject": "CN", "notAfter":
/// RFC 3339}`; /metrics exports `notAfterUnix` as sync_process_tls_certificate_expiry_timestamp_seconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// `local` or `remote`.
    pub database: String,
    pub file: String,
    /// The certificate's subject CN (the user name `cert` authentication checks).
    pub subject: String,
    pub not_after: String,
    #[serde(skip)]
    pub not_after_unix: i64,
}

/// Everything the server shows: the status and the counters of /metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub status: SyncStatus,
    pub cycles_total: u64,
    pub cycle_failures_total: u64,
    pub records_quarantined_total: u64,
    /// Batches uploaded again because their ledger row had vanished (the confirmation window).
    pub batches_resent_total: u64,
    /// Conflicts with local changes reported by the downloads (meters, tenants), counted each cycle they are
    /// reported (keep-local reports a conflict every cycle until it is undone).
    pub download_conflicts_total: [u64; 2],
    /// Batches uploaded (each one ledger row), and chain breaks among them (UPLOAD_BATCHES_IN_FLIGHT > 1: a
    /// batch in flight came back out of turn and the batches in flight were sent again).
    pub upload_batches_total: u64,
    pub upload_chain_breaks_total: u64,
    /// Readings quarantined for failing each UPLOAD_VALIDATE check (`upload::validate::Check::ALL` order).
    pub readings_invalid_total: [u64; 4],
    /// Duration of the last cycle, milliseconds.
    pub last_cycle_duration_ms: Option<u64>,
    /// Unix seconds of the end of the last successful cycle.
    pub last_success_unix: Option<u64>,
    /// Unix seconds when the daemon started (health grace before the first success).
    pub started_unix: u64,
    /// SYNC_INTERVAL_SECONDS.
    pub interval_secs: u64,
    /// When queueSize, oldestPendingAge and quarantinedCount were last measured after a cycle (the status
    /// server serves the newer of these and its own measurement when it has to answer stale).
    pub queue_measured_at: Option<Instant>,
    // For /metrics (metrics.rs): the site's SYNC_SOURCE_ID, and per part, in `report::SYNC_TYPES` order
    // (upload, download_meters, download_tenants), its failures and durations.
    pub source_id: String,
    pub parts: [PartStats; 3],
}

/// The snapshot shared by the sync loop (writer) and the status server (reader).
pub type SharedSnapshot = Arc<Mutex<Snapshot>>;

/// Locks the snapshot, ignoring poisoning (a panic elsewhere must not stop status reporting).
pub fn lock(shared: &SharedSnapshot) -> MutexGuard<'_, Snapshot> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// GET /healthz: healthy while the last cycle succeeded, or while the last success (or, before any, the start)
/// is younger than three intervals.
pub fn health(s: &Snapshot, now_unix: u64) -> bool {
    if s.cycles_total > 0 && s.status.last_sync_success {
        return true;
    }
    let since = s.last_success_unix.unwrap_or(s.started_unix);
    now_unix.saturating_sub(since) < s.interval_secs.max(1).saturating_mul(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_rules() {
        let mut s = Snapshot {
            started_unix: 1000,
            interval_secs: 60,
            ..Default::default()
        };
        assert!(health(&s, 1100), "grace before the first cycle");
        assert!(!health(&s, 1180), "three intervals without any success");
        s.cycles_total = 1;
        s.status.last_sync_success = true;
        assert!(health(&s, 99_999));
        s.status.last_sync_success = false;
        s.last_success_unix = Some(5000);
        assert!(health(&s, 5179));
        assert!(!health(&s, 5180));
    }
}
