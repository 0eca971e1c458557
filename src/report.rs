//! Cycle report: what one sync cycle did, as `once` prints it, sync_logs stores it and the log says it.
//!
//! Owns: [`SyncCycleResult`] (the contract's JSON of a cycle), the per-part view of it ([`PartSummary`],
//! [`part_summaries`], [`first_error`], the `sync_type` names [`SYNC_TYPES`]), the log lines of Property 11
//! ([`cycle_start_line`], [`cycle_result_lines`]) and the result of a cycle that could not run ([`not_run`]).
//! Pure: no I/O, no clock; Property 11 is tested here. Does not own: running the parts or writing sync_logs
//! (scheduler.rs), the status JSON that embeds the last result (status/).

use std::time::Duration;

use serde::Serialize;

use crate::download::{MeterSyncResult, TenantSyncResult};
use crate::upload::UploadSyncResult;

/// The contract's SyncCycleResult: what `once` prints. Durations in milliseconds; timestamp RFC 3339 UTC (the
/// cycle's start).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncCycleResult {
    pub success: bool,
    pub upload_result: UploadSyncResult,
    pub meter_download_result: MeterSyncResult,
    pub tenant_download_result: TenantSyncResult,
    pub total_duration: u64,
    pub timestamp: String,
}

/// The `sync_type` values of sync_logs, one per part.
pub const SYNC_TYPES: [&str; 3] = ["upload", "download_meters", "download_tenants"];

/// One part of a cycle as sync_logs and the log see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartSummary {
    pub sync_type: &'static str,
    pub success: bool,
    pub records: u64,
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// The three parts of a result: records are uploaded readings, or new + updated + deleted rows.
pub fn part_summaries(r: &SyncCycleResult) -> [PartSummary; 3] {
    let u = &r.upload_result;
    let m = &r.meter_download_result;
    let t = &r.tenant_download_result;
    [
        PartSummary {
            sync_type: SYNC_TYPES[0],
            success: u.success,
            records: u.records_uploaded,
            error: u.error.clone(),
            duration_ms: u.duration,
        },
        PartSummary {
            sync_type: SYNC_TYPES[1],
            success: m.success,
            records: m.new_meters + m.updated_meters + m.deleted_meters,
            error: m.error.clone(),
            duration_ms: m.duration,
        },
        PartSummary {
            sync_type: SYNC_TYPES[2],
            success: t.success,
            records: t.new_tenants + t.updated_tenants + t.deleted_tenants,
            error: t.error.clone(),
            duration_ms: t.duration,
        },
    ]
}

/// The first error of a result, prefixed with its part (`upload: ...`).
pub fn first_error(r: &SyncCycleResult) -> Option<String> {
    part_summaries(r).into_iter().find(|p| !p.success).map(|p| {
        format!(
            "{}: {}",
            p.sync_type,
            p.error.as_deref().unwrap_or("failed without an error message")
        )
    })
}

/// Property 11's first line: the cycle starts, with the queue size (or why it is unknown).
pub fn cycle_start_line(cycle: u64, queue: &std::result::Result<u64, String>) -> String {
    match queue {
        Ok(n) => format!("sync cycle {cycle} starting: {n} readings queued"),
        Err(e) => format!("sync cycle {cycle} starting: queue size unknown ({e})"),
    }
}

/// Property 11's other lines, for a finished cycle: the upload with counts and duration, the delete with its
/// count, each download, every error with its part and the error's own context, and the cycle's outcome.
pub fn cycle_result_lines(cycle: u64, r: &SyncCycleResult) -> Vec<(log::Level, String)> {
    use log::Level::{Error as E, Info as I, Warn as W};
    let mut lines = Vec::new();
    let err = |e: &Option<String>| {
        e.clone()
            .unwrap_or_else(|| "failed without an error message".to_string())
    };
    // Conflicts with local changes (DOWNLOAD_CONFLICT_POLICY), when there are any.
    let conflicts = |n: usize| match n {
        0 => String::new(),
        1 => ", 1 conflict".to_string(),
        n => format!(", {n} conflicts"),
    };
    let u = &r.upload_result;
    if u.success {
        lines.push((
            I,
            format!(
                "upload succeeded: {} readings uploaded in {} ms",
                u.records_uploaded, u.duration
            ),
        ));
        lines.push((
            I,
            format!(
                "delete succeeded: {} uploaded readings deleted locally",
                u.records_deleted
            ),
        ));
    } else {
        lines.push((
            E,
            format!(
                "upload failed after {} ms ({} readings uploaded and {} deleted before the failure): {}",
                u.duration,
                u.records_uploaded,
                u.records_deleted,
                err(&u.error)
            ),
        ));
    }
    if u.records_quarantined > 0 {
        lines.push((
            W,
            format!(
                "upload: {} readings rejected by the remote were quarantined (see `sync-process quarantine list`)",
                u.records_quarantined
            ),
        ));
    }
    if u.backlog_remains {
        lines.push((
            I,
            "upload: readings remain queued; the next cycle continues the drain".to_string(),
        ));
    }
    let m = &r.meter_download_result;
    if m.success {
        lines.push((
            I,
            format!(
                "meter download succeeded in {} ms: {} new, {} updated, {} deleted, {} meters{}",
                m.duration,
                m.new_meters,
                m.updated_meters,
                m.deleted_meters,
                m.total_meters,
                conflicts(m.conflict_meter_ids.len())
            ),
        ));
    } else {
        lines.push((
            E,
            format!("meter download failed after {} ms: {}", m.duration, err(&m.error)),
        ));
    }
    let t = &r.tenant_download_result;
    if t.success {
        lines.push((
            I,
            format!(
                "tenant download succeeded in {} ms: {} new, {} updated, {} deleted, {} tenants{}",
                t.duration,
                t.new_tenants,
                t.updated_tenants,
                t.deleted_tenants,
                t.total_tenants,
                conflicts(t.conflict_tenant_ids.len())
            ),
        ));
    } else {
        lines.push((
            E,
            format!("tenant download failed after {} ms: {}", t.duration, err(&t.error)),
        ));
    }
    let failed: Vec<&str> = part_summaries(r)
        .iter()
        .filter(|p| !p.success)
        .map(|p| p.sync_type)
        .collect();
    if r.success && failed.is_empty() {
        lines.push((
            I,
            format!(
                "sync cycle {cycle} finished in {} ms: every part succeeded",
                r.total_duration
            ),
        ));
    } else {
        let which = if failed.is_empty() {
            "the cycle".to_string()
        } else {
            failed.join(", ")
        };
        lines.push((
            W,
            format!(
                "sync cycle {cycle} finished in {} ms with failures: {which}",
                r.total_duration
            ),
        ));
    }
    lines
}

/// A duration in whole milliseconds, as the results carry it (saturating).
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A result whose parts did not run, all failed with `why`.
pub fn not_run(why: &str, timestamp: String, took: Duration) -> SyncCycleResult {
    let error = Some(format!("not run: {why}"));
    SyncCycleResult {
        success: false,
        upload_result: UploadSyncResult {
            error: error.clone(),
            ..Default::default()
        },
        meter_download_result: MeterSyncResult {
            error: error.clone(),
            ..Default::default()
        },
        tenant_download_result: TenantSyncResult {
            error,
            ..Default::default()
        },
        total_duration: duration_ms(took),
        timestamp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::download::TenantChange;
    use quickcheck::{Arbitrary, Gen, QuickCheck};

    #[derive(Clone, Debug)]
    struct ArbResult(SyncCycleResult, Result<u64, String>);

    fn arb_error(g: &mut Gen) -> Option<String> {
        let n = u16::arbitrary(g);
        bool::arbitrary(g).then(|| {
            format!(
                "remote database 10.0.0.{}:5432/central: inserting batch {n}: boom",
                n % 250
            )
        })
    }

    impl Arbitrary for ArbResult {
        fn arbitrary(g: &mut Gen) -> ArbResult {
            let small = |g: &mut Gen| u64::from(u16::arbitrary(g));
            let upload_error = arb_error(g);
            let upload = UploadSyncResult {
                success: upload_error.is_none(),
                records_uploaded: small(g),
                records_deleted: small(g),
                records_quarantined: small(g) % 3,
                error: upload_error,
                duration: small(g),
                backlog_remains: bool::arbitrary(g),
                central_fault: None,
                batches: small(g),
                chain_breaks: 0,
            };
            let meter_error = arb_error(g);
            let meters = MeterSyncResult {
                success: meter_error.is_none(),
                new_meters: small(g),
                updated_meters: small(g),
                deleted_meters: small(g),
                total_meters: small(g),
                error: meter_error,
                duration: small(g),
                ..Default::default()
            };
            let tenant_error = arb_error(g);
            let tenants = TenantSyncResult {
                success: tenant_error.is_none(),
                new_tenants: small(g),
                updated_tenants: small(g),
                deleted_tenants: small(g),
                total_tenants: small(g),
                tenant_changes: vec![TenantChange {
                    tenant_id: "t1".into(),
                    changed_fields: vec!["name".into()],
                }],
                error: tenant_error,
                duration: small(g),
                ..Default::default()
            };
            let success = upload.success && meters.success && tenants.success;
            let queue = if u8::arbitrary(g) % 5 == 0 {
                Err("local database down".to_string())
            } else {
                Ok(small(g))
            };
            ArbResult(
                SyncCycleResult {
                    success,
                    upload_result: upload,
                    meter_download_result: meters,
                    tenant_download_result: tenants,
                    total_duration: small(g),
                    timestamp: "2024-01-01T00:00:00.000Z".into(),
                },
                queue,
            )
        }
    }

    // **Feature: database-sync-process, Property 11: Comprehensive logging**
    // For any cycle result: a start line with the queue size; the upload's success with its count and duration,
    // or its failure at error level with the error's context; the delete with its count; each download's outcome;
    // every error at error level naming its part; and a closing line saying whether every part succeeded.
    fn prop_cycle_log_lines(r: ArbResult, cycle: u32) -> bool {
        let ArbResult(r, queue) = r;
        let cycle = u64::from(cycle);
        let start = cycle_start_line(cycle, &queue);
        let lines = cycle_result_lines(cycle, &r);
        let has = |level: log::Level, needles: &[&str]| {
            lines
                .iter()
                .any(|(l, text)| *l == level && needles.iter().all(|n| text.contains(n)))
        };
        use log::Level::{Error, Info, Warn};
        let u = &r.upload_result;
        let start_ok = start.contains(&format!("sync cycle {cycle} starting"))
            && match &queue {
                Ok(q) => start.contains(&format!("{q} readings queued")),
                Err(e) => start.contains(e.as_str()),
            };
        let upload_ok = if u.success {
            has(
                Info,
                &[
                    "upload succeeded",
                    &format!("{} readings uploaded", u.records_uploaded),
                    &format!("{} ms", u.duration),
                ],
            ) && has(
                Info,
                &[
                    "delete succeeded",
                    &format!("{} uploaded readings deleted", u.records_deleted),
                ],
            )
        } else {
            has(
                Error,
                &[
                    "upload failed",
                    &format!("{} ms", u.duration),
                    u.error.as_deref().unwrap_or(""),
                ],
            )
        };
        let quarantine_ok =
            u.records_quarantined == 0 || has(Warn, &[&format!("{} readings rejected", u.records_quarantined)]);
        let m = &r.meter_download_result;
        let meters_ok = if m.success {
            has(
                Info,
                &[
                    "meter download succeeded",
                    &format!("{} new", m.new_meters),
                    &format!("{} ms", m.duration),
                ],
            )
        } else {
            has(Error, &["meter download failed", m.error.as_deref().unwrap_or("")])
        };
        let t = &r.tenant_download_result;
        let tenants_ok = if t.success {
            has(
                Info,
                &["tenant download succeeded", &format!("{} updated", t.updated_tenants)],
            )
        } else {
            has(Error, &["tenant download failed", t.error.as_deref().unwrap_or("")])
        };
        let errors_ok = [&u.error, &m.error, &t.error]
            .into_iter()
            .flatten()
            .all(|e| lines.iter().any(|(l, text)| *l == Error && text.contains(e.as_str())));
        let last = lines.last().map(|(_, t)| t.as_str()).unwrap_or("");
        let end_ok = last.contains(&format!("sync cycle {cycle} finished in {} ms", r.total_duration))
            && (last.contains("every part succeeded") == r.success);
        start_ok && upload_ok && quarantine_ok && meters_ok && tenants_ok && errors_ok && end_ok
    }

    #[test]
    fn property_11_cycle_log_lines() {
        QuickCheck::new()
            .tests(200)
            .max_tests(2000)
            .quickcheck(prop_cycle_log_lines as fn(ArbResult, u32) -> bool);
    }
}
