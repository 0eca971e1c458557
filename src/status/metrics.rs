//! GET /metrics: the snapshot in Prometheus text exposition format 0.0.4.
//!
//! Owns: [`render_metrics`] (names, help texts, types). Does not own: the values (the scheduler measures them
//! into the [`Snapshot`]).

use std::fmt::Write as _;

use super::Snapshot;

/// GET /metrics: Prometheus text exposition format 0.0.4.
pub fn render_metrics(s: &Snapshot) -> String {
    let st = &s.status;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    metric(
        "sync_cycles_total",
        "counter",
        "Sync cycles run since the daemon started.",
        &[("", s.cycles_total.to_string())],
    );
    metric(
        "sync_cycle_failures_total",
        "counter",
        "Sync cycles with at least one failed part since the daemon started.",
        &[("", s.cycle_failures_total.to_string())],
    );
    metric(
        "sync_records_uploaded_total",
        "counter",
        "Readings uploaded to the remote database since the daemon started.",
        &[("", st.total_records_synced.to_string())],
    );
    metric(
        "sync_records_quarantined_total",
        "counter",
        "Readings quarantined (rejected by the remote for a data reason) since the daemon started.",
        &[("", s.records_quarantined_total.to_string())],
    );
    metric(
        "sync_last_cycle_duration_seconds",
        "gauge",
        "Duration of the last sync cycle.",
        &[("", seconds(s.last_cycle_duration_ms.unwrap_or(0)))],
    );
    metric(
        "sync_queue_size",
        "gauge",
        "Readings waiting in the local queue.",
        &[("", st.queue_size.to_string())],
    );
    metric(
        "sync_oldest_pending_age_seconds",
        "gauge",
        "Age of the oldest reading in the local queue (0 when empty).",
        &[("", st.oldest_pending_age.unwrap_or(0).to_string())],
    );
    metric(
        "sync_quarantined_readings",
        "gauge",
        "Readings currently held in the local quarantine.",
        &[("", st.quarantined_count.to_string())],
    );
    metric(
        "sync_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the end of the last successful sync cycle (0: none yet).",
        &[("", s.last_success_unix.unwrap_or(0).to_string())],
    );
    metric(
        "sync_database_up",
        "gauge",
        "Whether the database answered after the last cycle (1) or not (0).",
        &[
            ("{database=\"local\"}", u8::from(st.local_db_connected).to_string()),
            ("{database=\"remote\"}", u8::from(st.remote_db_connected).to_string()),
        ],
    );
    out
}

fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}
