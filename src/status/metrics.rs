//! GET /metrics: the snapshot in Prometheus text exposition format 0.0.4, named for a fleet.
//!
//! Owns: [`render_metrics`] (names, help texts, types, label escaping), [`PartStats`] (a part's failure counter
//! and cycle-duration histogram, [`DURATION_BUCKETS_MS`]) and the metric names: one namespace
//! `sync_process_`, `readings` for readings, the unit last (`_seconds`, `_bytes`, counters `_total`), plus the
//! standard `process_*` metrics from /proc (process.rs). packaging/monitoring/ (rules, dashboard) and the
//! tests depend on these names: renaming one is a breaking change for every fleet that scrapes us.
//! Does not own: the values (the scheduler measures them into the [`Snapshot`]).

use std::fmt::Write as _;

use super::process::ProcessStats;
use super::Snapshot;
use crate::report::SYNC_TYPES;
use crate::upload::validate::Check;

/// Upper bounds of the cycle-duration histogram's buckets, in milliseconds (rendered in seconds: `le="0.01"`
/// ... `le="300"`); `+Inf` follows.
pub const DURATION_BUCKETS_MS: [u64; 12] = [10, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 300_000];

/// One part of the cycle (upload, download_meters, download_tenants) since the daemon started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartStats {
    /// Cycles in which this part failed (including cycles that could not run at all).
    pub failures_total: u64,
    /// Cumulative: `buckets[i]` counts the runs that took at most `DURATION_BUCKETS_MS[i]` ms.
    pub buckets: [u64; DURATION_BUCKETS_MS.len()],
    /// Runs observed (the histogram's `+Inf` bucket and `_count`).
    pub runs: u64,
    /// Sum of the observed durations, milliseconds.
    pub duration_sum_ms: u64,
}

impl PartStats {
    /// One run of the part that took `duration_ms`.
    pub fn observe_run(&mut self, duration_ms: u64) {
        self.runs += 1;
        self.duration_sum_ms = self.duration_sum_ms.saturating_add(duration_ms);
        for (count, bound) in self.buckets.iter_mut().zip(DURATION_BUCKETS_MS) {
            if duration_ms <= bound {
                *count += 1;
            }
        }
    }
}

/// GET /metrics: Prometheus text exposition format 0.0.4, with this process's /proc figures.
pub fn render_metrics(s: &Snapshot) -> String {
    render_metrics_with(s, &ProcessStats::read())
}

/// [`render_metrics`] with the process figures given (pure: tests compare every value).
pub fn render_metrics_with(s: &Snapshot, p: &ProcessStats) -> String {
    let st = &s.status;
    let mut out = Exposition::default();
    out.family(
        "sync_process_build_info",
        "gauge",
        "Always 1; the labels say which version runs and which site (SYNC_SOURCE_ID) it is.",
        &[(
            labels(&[("version", env!("CARGO_PKG_VERSION")), ("source_id", &s.source_id)]),
            "1".into(),
        )],
    );
    out.family(
        "sync_process_cycles_total",
        "counter",
        "Sync cycles run since the daemon started.",
        &[(String::new(), s.cycles_total.to_string())],
    );
    out.family(
        "sync_process_cycle_failures_total",
        "counter",
        "Sync cycles with at least one failed part since the daemon started.",
        &[(String::new(), s.cycle_failures_total.to_string())],
    );
    let per_part = |f: &dyn Fn(&PartStats) -> String| -> Vec<(String, String)> {
        SYNC_TYPES
            .iter()
            .zip(&s.parts)
            .map(|(part, stats)| (labels(&[("part", part)]), f(stats)))
            .collect()
    };
    out.family(
        "sync_process_part_failures_total",
        "counter",
        "Cycles in which this part (upload, download_meters, download_tenants) failed since the daemon started.",
        &per_part(&|p| p.failures_total.to_string()),
    );
    out.family(
        "sync_process_consecutive_failures",
        "gauge",
        "Failed sync cycles in a row, up to the last one (0 after a success).",
        &[(String::new(), st.consecutive_failures.to_string())],
    );
    out.histogram(
        "sync_process_cycle_duration_seconds",
        "Time each part of a sync cycle took (parts that could not run are not observed).",
        s,
    );
    out.family(
        "sync_process_last_cycle_duration_seconds",
        "gauge",
        "Duration of the last whole sync cycle.",
        &[(String::new(), seconds(s.last_cycle_duration_ms.unwrap_or(0)))],
    );
    out.family(
        "sync_process_readings_uploaded_total",
        "counter",
        "Readings uploaded to the remote database since the daemon started.",
        &[(String::new(), st.total_records_synced.to_string())],
    );
    out.family(
        "sync_process_readings_quarantined_total",
        "counter",
        "Readings quarantined (rejected by the remote for a data reason, or failing an UPLOAD_VALIDATE check) since the daemon started.",
        &[(String::new(), s.records_quarantined_total.to_string())],
    );
    out.family(
        "sync_process_readings_invalid_total",
        "counter",
        "Readings quarantined before upload for failing this UPLOAD_VALIDATE check since the daemon started (also \
         counted in sync_process_readings_quarantined_total).",
        &Check::ALL
            .iter()
            .zip(s.readings_invalid_total)
            .map(|(c, n)| (labels(&[("check", c.name())]), n.to_string()))
            .collect::<Vec<_>>(),
    );
    out.family(
        "sync_process_queued_readings",
        "gauge",
        "Readings waiting in the local queue.",
        &[(String::new(), st.queue_size.to_string())],
    );
    out.family(
        "sync_process_oldest_pending_reading_age_seconds",
        "gauge",
        "Age of the oldest reading in the local queue (0 when the queue is empty).",
        &[(String::new(), st.oldest_pending_age.unwrap_or(0).to_string())],
    );
    out.family(
        "sync_process_quarantined_readings",
        "gauge",
        "Readings currently held in the local quarantine.",
        &[(String::new(), st.quarantined_count.to_string())],
    );
    out.family(
        "sync_process_readings_awaiting_confirmation",
        "gauge",
        "Readings uploaded and kept locally until the confirmation window (UPLOAD_CONFIRM_SECONDS) has passed.",
        &[(String::new(), st.awaiting_confirmation.to_string())],
    );
    out.family(
        "sync_process_oldest_awaiting_confirmation_age_seconds",
        "gauge",
        "Seconds since the oldest batch awaiting confirmation was first acknowledged (0 when none).",
        &[(
            String::new(),
            st.oldest_awaiting_confirmation_age.unwrap_or(0).to_string(),
        )],
    );
    out.family(
        "sync_process_batches_resent_total",
        "counter",
        "Batches uploaded again because their ledger row had vanished from the remote (a failover) since the daemon started.",
        &[(String::new(), s.batches_resent_total.to_string())],
    );
    out.family(
        "sync_process_download_conflicts_total",
        "counter",
        "Mirrored rows found changed locally since they were last mirrored (DOWNLOAD_CONFLICT_POLICY), per table; \
         keep-local counts a conflict again every cycle until it is undone.",
        &[
            (
                labels(&[("table", "meters")]),
                s.download_conflicts_total[0].to_string(),
            ),
            (
                labels(&[("table", "tenant")]),
                s.download_conflicts_total[1].to_string(),
            ),
        ],
    );
    out.family(
        "sync_process_upload_batches_total",
        "counter",
        "Batches uploaded to the remote database (each one ledger row) since the daemon started.",
        &[(String::new(), s.upload_batches_total.to_string())],
    );
    out.family(
        "sync_process_upload_chain_breaks_total",
        "counter",
        "Times a batch in flight (UPLOAD_BATCHES_IN_FLIGHT > 1) ran before the batch ahead of it was in, so the batches in flight were sent again, since the daemon started.",
        &[(String::new(), s.upload_chain_breaks_total.to_string())],
    );
    out.family(
        "sync_process_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the end of the last successful sync cycle (0: none yet).",
        &[(String::new(), s.last_success_unix.unwrap_or(0).to_string())],
    );
    let sides = |local: String, remote: String| {
        vec![
            (labels(&[("database", "local")]), local),
            (labels(&[("database", "remote")]), remote),
        ]
    };
    let certificates: Vec<(String, String)> = st
        .client_certificates
        .iter()
        .map(|c| (labels(&[("database", &c.database)]), c.not_after_unix.to_string()))
        .collect();
    if !certificates.is_empty() {
        out.family(
            "sync_process_tls_certificate_expiry_timestamp_seconds",
            "gauge",
            "Unix time at which the client certificate that this database's connections present (POSTGRES_*_SSLCERT) expires.",
            &certificates,
        );
    }
    out.family(
        "sync_process_database_up",
        "gauge",
        "Whether the database answered after the last cycle (1) or not (0).",
        &sides(
            u8::from(st.local_db_connected).to_string(),
            u8::from(st.remote_db_connected).to_string(),
        ),
    );
    out.family(
        "sync_process_meters",
        "gauge",
        "Meters in each database, as last counted.",
        &sides(st.local_meter_count.to_string(), st.remote_meter_count.to_string()),
    );
    out.family(
        "sync_process_tenants",
        "gauge",
        "Tenants in each database, as last counted.",
        &sides(st.local_tenant_count.to_string(), st.remote_tenant_count.to_string()),
    );
    if let Some(b) = p.resident_memory_bytes {
        out.family(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            &[(String::new(), b.to_string())],
        );
    }
    if let Some(c) = p.cpu_seconds {
        out.family(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            &[(String::new(), float(c))],
        );
    }
    if let Some(t) = p.start_time_seconds {
        out.family(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            &[(String::new(), float(t))],
        );
    }
    out.text
}

/// The text being built.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    /// `# HELP`, `# TYPE`, then one `name{labels} value` line per sample.
    fn family(&mut self, name: &str, kind: &str, help: &str, samples: &[(String, String)]) {
        self.head(name, kind, help);
        for (labels, value) in samples {
            let _ = writeln!(self.text, "{name}{labels} {value}");
        }
    }

    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(
            self.text,
            "# HELP {name} {}",
            help.replace('\\', "\\\\").replace('\n', "\\n")
        );
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// A histogram with one series per part: `_bucket{part,le}` (cumulative, `+Inf` last), `_sum`, `_count`.
    fn histogram(&mut self, name: &str, help: &str, s: &Snapshot) {
        self.head(name, "histogram", help);
        for (part, stats) in SYNC_TYPES.iter().zip(&s.parts) {
            for (count, bound) in stats.buckets.iter().zip(DURATION_BUCKETS_MS) {
                let le = float(bound as f64 / 1000.0);
                let _ = writeln!(
                    self.text,
                    "{name}_bucket{} {count}",
                    labels(&[("part", part), ("le", &le)])
                );
            }
            let _ = writeln!(
                self.text,
                "{name}_bucket{} {}",
                labels(&[("part", part), ("le", "+Inf")]),
                stats.runs
            );
            let _ = writeln!(
                self.text,
                "{name}_sum{} {}",
                labels(&[("part", part)]),
                seconds(stats.duration_sum_ms)
            );
            let _ = writeln!(self.text, "{name}_count{} {}", labels(&[("part", part)]), stats.runs);
        }
    }
}

/// `{k="v",...}` with each value escaped as the exposition format requires (backslash, quote, newline).
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// Milliseconds as seconds with three decimals, exactly (no float on the way).
fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// A float as Prometheus reads it (Rust's shortest round-trip form: `0.25`, `1`, `1796161611.5`).
fn float(x: f64) -> String {
    format!("{x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut p = PartStats::default();
        for ms in [5, 10, 11, 999, 1000, 1001, 400_000] {
            p.observe_run(ms);
        }
        assert_eq!(p.runs, 7);
        assert_eq!(p.duration_sum_ms, 5 + 10 + 11 + 999 + 1000 + 1001 + 400_000);
        // <=10ms: 5, 10; <=50ms: +11; <=1s: +999, 1000; <=2.5s: +1001; 400 s only in +Inf.
        assert_eq!(p.buckets, [2, 3, 3, 3, 3, 5, 6, 6, 6, 6, 6, 6]);
        assert!(p.buckets.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(
            labels(&[("source_id", "a\"b\\c\nd"), ("version", "1")]),
            "{source_id=\"a\\\"b\\\\c\\nd\",version=\"1\"}"
        );
    }

    #[test]
    fn process_metrics_only_when_read() {
        let s = Snapshot::default();
        let none = render_metrics_with(&s, &ProcessStats::default());
        assert!(!none.contains("\nprocess_") && !none.contains(" process_"), "{none}");
        let p = ProcessStats {
            resident_memory_bytes: Some(4096),
            cpu_seconds: Some(1.5),
            start_time_seconds: Some(1_700_000_000.25),
        };
        let text = render_metrics_with(&s, &p);
        assert!(text.contains("\nprocess_resident_memory_bytes 4096\n"), "{text}");
        assert!(text.contains("\nprocess_cpu_seconds_total 1.5\n"), "{text}");
        assert!(text.contains("\nprocess_start_time_seconds 1700000000.25\n"), "{text}");
        assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"), "{text}");
    }
}
