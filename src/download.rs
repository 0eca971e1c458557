//! Download Sync Manager: mirrors `meters` and `tenant` from the remote into the local database, reporting
//! exactly what changed.
//!
//! Owns: [`DownloadSyncManager`] and its results ([`MeterSyncResult`], [`TenantSyncResult`], the contract's
//! JSON shapes), and one generic download driven by a [`TableSpec`] (table.rs: the two tables and all SQL;
//! diff.rs: the pure comparison, guard and checks; apply.rs: the local transaction; text_list.rs: the paged
//! per-key lists). Does not own: connections and retries (db.rs), writing
//! `sync_logs` or ordering the parts of a cycle (scheduler.rs), the remote schema.
//!
//! One download of one table, every cycle a full comparison that stays cheap when little changed:
//! 1. both servers, concurrently: per bucket of rows (4096 buckets by a hash of the key), the row count and
//!    a digest of the rows' keys and compared values as text. Nothing changed: done (one small row per
//!    bucket crossed the link; no local write).
//! 2. for the buckets that differ, both servers: each row's key and 64-bit digest, merged by [`diff::plan`]
//!    into the keys to delete (local only), to compare (digests differ) and to insert (remote only).
//!    The local side also reads the digests recorded when its rows were last mirrored (local bookkeeping,
//!    `sync_mirror_digest`): a bucket where they differ from the local rows is looked into too, and
//!    [`diff::reconcile`] finds the rows changed locally since (conflicts) and applies
//!    DOWNLOAD_CONFLICT_POLICY: remote-wins writes them like any other row, keep-local leaves them out.
//! 3. the delete guard, on the keys to delete and the row counts, before anything is written (before the
//!    policy: rows that keep-local leaves count as deletions).
//! 4. ONE local transaction: the deletes; then the keys to compare, [`CHUNK`] keys at a time in key order
//!    (that chunk's full rows from both sides, [`diff::diff_rows`], the local column limits checked, the
//!    updates written); then the keys to insert likewise. A reader thread fetches the next chunk's remote
//!    rows while this one is written. The guard is checked again on what was actually deleted, then commit.
//!    synced_at is set on each written row; unchanged rows are never written. The digests of the written rows
//!    are recorded anew from the rows as written (and those of rows equal on both sides, when not yet
//!    recorded as they are) in the same transaction; a conflict kept by keep-local keeps its old digest, so
//!    it is found again next cycle until the local change is undone.
//!
//! Memory: full rows are held for at most three chunks at a time (the local and remote rows of the chunk being
//! written, the next chunk's remote rows being read), whatever the number of differing rows. What grows with
//! that number is only per-key bookkeeping: the keys and digests of step 2 (the recorded ones too, and the
//! digests to record, which a first download after an upgrade holds for every row), and the ids the result reports
//! (kept end to end in 64 KiB pages until the result is built) with a bit set of changed columns per updated
//! row and the first 101 characters of each new row's name for its log line (BENCHMARKS.md has the bytes
//! per differing key). The remote reads of a chunk happen while the local transaction is open (idle in
//! it); each is one bounded call of at most [`CHUNK`] rows.
//!
//! Invariants: a failed download (remote table missing or unreadable, guard, bad remote data, any database
//! error, also in the last chunk) changes nothing locally (the transaction is dropped uncommitted) and is
//! returned as `success=false` with the table named in `error`; the methods never panic and never return
//! `Err`. Changes are judged on the values, not on `updated_at`.

mod apply;
mod diff;
mod table;
mod text_list;

use std::collections::BTreeMap;
use std::time::Instant;

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::Type;
use postgres::GenericClient;
use serde::Serialize;

use crate::config::{Config, ConflictPolicy};
use crate::db::{ConnectionManager, Side};
use crate::error::{Error, Result};

pub use diff::{
    change_lines, changed_fields, check_rows, conflict_line, delete_guard, diff_rows, differing_buckets,
    examined_buckets, plan, reconcile, BucketDigest, Conflict, ConflictKind, Diff, Limit, Plan, Reconciled, Rows,
    Update, Values,
};
pub use table::{Column, Kind, TableSpec, BUCKET_MASK, DIGEST_TABLE, METERS, TENANTS};

/// Conflicts logged one by one per table and download; beyond it one line counts the rest (all are in the
/// result). Bounds the log, and the rows read for the warnings, when a whole table was edited locally
/// (keep-local reports it every cycle).
pub const CONFLICT_LINES: usize = 1_000;

/// Keys per read of full rows and rows per local write statement: bounds the size of one message and the
/// memory of a download (at most three chunks of full rows are held at once; see the module docs).
pub const CHUNK: usize = 5_000;

/// The contract's `meterDownloadResult`. `duration` is in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeterSyncResult {
    pub success: bool,
    pub new_meters: u64,
    pub updated_meters: u64,
    pub deleted_meters: u64,
    pub total_meters: u64,
    pub new_meter_ids: Vec<String>,
    pub updated_meter_ids: Vec<String>,
    pub deleted_meter_ids: Vec<String>,
    /// Meters changed (or deleted) locally since they were last mirrored and now different from the remote,
    /// whatever DOWNLOAD_CONFLICT_POLICY did with them; sorted.
    pub conflict_meter_ids: Vec<String>,
    pub error: Option<String>,
    pub duration: u64,
}

/// One updated tenant and the columns that differed, in schema order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TenantChange {
    pub tenant_id: String,
    #[serde(rename = "changedFields")]
    pub changed_fields: Vec<String>,
}

/// The contract's `tenantDownloadResult`. `duration` is in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantSyncResult {
    pub success: bool,
    pub new_tenants: u64,
    pub updated_tenants: u64,
    pub deleted_tenants: u64,
    pub total_tenants: u64,
    pub new_tenant_ids: Vec<String>,
    pub updated_tenant_ids: Vec<String>,
    pub deleted_tenant_ids: Vec<String>,
    pub tenant_changes: Vec<TenantChange>,
    /// Tenants changed (or deleted) locally since they were last mirrored and now different from the remote,
    /// whatever DOWNLOAD_CONFLICT_POLICY did with them; sorted.
    pub conflict_tenant_ids: Vec<String>,
    pub error: Option<String>,
    pub duration: u64,
}

/// What one successful download of a table did. Id lists sorted bytewise.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Outcome {
    new_ids: Vec<String>,
    updated_ids: Vec<String>,
    /// Per updated key, its differing columns as a [`diff::changed_mask`].
    updated_masks: Vec<u64>,
    deleted_ids: Vec<String>,
    /// Keys in conflict with a local change (see [`diff::reconcile`]).
    conflict_ids: Vec<String>,
    /// Rows in the local table after the download.
    total: u64,
}

impl Outcome {
    fn is_empty(&self) -> bool {
        self.new_ids.is_empty() && self.updated_ids.is_empty() && self.deleted_ids.is_empty()
    }
}

/// Why a download failed: a short kind for the log line and the message (which names the table).
#[derive(Debug)]
struct Failure {
    kind: &'static str,
    message: String,
}

impl Failure {
    fn new(kind: &'static str, spec: &TableSpec, message: impl std::fmt::Display) -> Failure {
        Failure {
            kind,
            message: format!("{}: {message}", spec.table),
        }
    }
    fn db(spec: &TableSpec, e: Error) -> Failure {
        Failure::new(e.kind(), spec, e)
    }
}

pub struct DownloadSyncManager<'a> {
    pub conns: &'a ConnectionManager,
    pub cfg: &'a Config,
}

impl<'a> DownloadSyncManager<'a> {
    pub fn new(conns: &'a ConnectionManager, cfg: &'a Config) -> DownloadSyncManager<'a> {
        DownloadSyncManager { conns, cfg }
    }

    /// Makes the local `meters` equal to the remote one (Properties 8, 9, 10).
    pub fn sync_meter_configurations(&self) -> MeterSyncResult {
        let started = Instant::now();
        let (outcome, total) = self.run(&METERS);
        let duration = elapsed_ms(started);
        match outcome {
            Ok(o) => MeterSyncResult {
                success: true,
                new_meters: o.new_ids.len() as u64,
                updated_meters: o.updated_ids.len() as u64,
                deleted_meters: o.deleted_ids.len() as u64,
                total_meters: o.total,
                new_meter_ids: o.new_ids,
                updated_meter_ids: o.updated_ids,
                deleted_meter_ids: o.deleted_ids,
                conflict_meter_ids: o.conflict_ids,
                error: None,
                duration,
            },
            Err(error) => MeterSyncResult {
                total_meters: total,
                error: Some(error),
                duration,
                ..Default::default()
            },
        }
    }

    /// Makes the local `tenant` equal to the remote one (Properties 13, 14, 15).
    pub fn sync_tenant_data(&self) -> TenantSyncResult {
        let started = Instant::now();
        let (outcome, total) = self.run(&TENANTS);
        let duration = elapsed_ms(started);
        match outcome {
            Ok(o) => TenantSyncResult {
                success: true,
                new_tenants: o.new_ids.len() as u64,
                updated_tenants: o.updated_ids.len() as u64,
                deleted_tenants: o.deleted_ids.len() as u64,
                total_tenants: o.total,
                new_tenant_ids: o.new_ids,
                tenant_changes: o
                    .updated_ids
                    .iter()
                    .zip(&o.updated_masks)
                    .map(|(tenant_id, &mask)| TenantChange {
                        tenant_id: tenant_id.clone(),
                        changed_fields: diff::mask_fields(&TENANTS, mask),
                    })
                    .collect(),
                updated_tenant_ids: o.updated_ids,
                deleted_tenant_ids: o.deleted_ids,
                conflict_tenant_ids: o.conflict_ids,
                error: None,
                duration,
            },
            Err(error) => TenantSyncResult {
                total_tenants: total,
                error: Some(error),
                duration,
                ..Default::default()
            },
        }
    }

    pub fn local_meter_count(&self) -> Result<i64> {
        self.table_rows(Side::Local, &METERS)
    }
    pub fn remote_meter_count(&self) -> Result<i64> {
        self.table_rows(Side::Remote, &METERS)
    }
    pub fn local_tenant_count(&self) -> Result<i64> {
        self.table_rows(Side::Local, &TENANTS)
    }
    pub fn remote_tenant_count(&self) -> Result<i64> {
        self.table_rows(Side::Remote, &TENANTS)
    }

    fn table_rows(&self, side: Side, spec: &TableSpec) -> Result<i64> {
        let target = self.conns.db(side).name().clone();
        let sql = spec.count_sql();
        let context = format!("counting {}", spec.table);
        let what = format!("{context} in the {target}");
        self.conns.with_conn_bounded(side, &what, move |c| {
            let row = c.query_typed_one(&sql, &[]).map_err(|e| target.err(&context, e))?;
            row.try_get(0).map_err(|e| target.err(&context, e))
        })
    }

    /// One download of `spec`, logged; never panics. Returns the outcome or the error message, and the
    /// local row count to report (after the download, or as it stands when it failed).
    fn run(&self, spec: &TableSpec) -> (std::result::Result<Outcome, String>, u64) {
        let started = Instant::now();
        let mut local_rows = None;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.download(spec, &mut local_rows)))
            .unwrap_or_else(|_| {
                Err(Failure::new(
                    "panic",
                    spec,
                    "internal error: the download panicked (an uncommitted transaction rolls back)",
                ))
            });
        match result {
            Ok(o) => {
                let ms = elapsed_ms(started);
                if o.is_empty() {
                    log::debug!("{}: no change ({} rows, {ms} ms)", spec.table, o.total);
                } else {
                    // The scheduler logs each download's counts at info; the changes themselves are logged
                    // one by one above at info (Properties 9 and 14).
                    log::debug!(
                        "{}: downloaded {} new, {} updated, {} deleted; {} rows locally ({ms} ms)",
                        spec.table,
                        o.new_ids.len(),
                        o.updated_ids.len(),
                        o.deleted_ids.len(),
                        o.total
                    );
                }
                let total = o.total;
                (Ok(o), total)
            }
            Err(f) => {
                // A stop requested during the download's retries is no failure (the scheduler reports it).
                let level = if f.kind == Error::Shutdown.kind() {
                    log::Level::Info
                } else {
                    log::Level::Error
                };
                log::log!(
                    level,
                    "download of {} failed ({} error): {}",
                    spec.table,
                    f.kind,
                    f.message
                );
                let total = match local_rows {
                    Some(n) => n,
                    // One attempt, no backoff: this only fills in the report.
                    None => self.table_rows_once(spec).unwrap_or(0),
                };
                (Err(f.message), total)
            }
        }
    }

    fn table_rows_once(&self, spec: &TableSpec) -> Option<u64> {
        let mut conn = self.conns.local.try_get().ok()?;
        let n: i64 = conn.query_one(&spec.count_sql(), &[]).ok()?.try_get(0).ok()?;
        u64::try_from(n).ok()
    }

    /// The download itself (see the module docs for the steps). `local_rows` is set as soon as known.
    fn download(&self, spec: &TableSpec, local_rows: &mut Option<u64>) -> std::result::Result<Outcome, Failure> {
        let ratio = self.cfg.download_max_delete_ratio;
        let policy = self.cfg.download_conflict_policy;

        // 1. Bucket digests; on the local side also those of the digests recorded when the rows were last
        //    mirrored (while the remote is still computing its own).
        let (remote, local) = self.on_both(|side| {
            let rows = self.bucket_digests(side, spec)?;
            let stored = (side == Side::Local).then(|| self.stored_bucket_digests(spec));
            Ok((rows, stored))
        });
        let (local, stored) = local.map_err(|e| Failure::db(spec, e))?;
        let local_total: u64 = local.values().map(|(n, _)| u64::try_from(*n).unwrap_or(0)).sum();
        *local_rows = Some(local_total);
        let (remote, _) = remote.map_err(|e| Failure::db(spec, e))?;
        let remote_total: u64 = remote.values().map(|(n, _)| u64::try_from(*n).unwrap_or(0)).sum();
        let stored = stored.unwrap_or_else(|| Ok(BTreeMap::new()))?;
        let buckets = examined_buckets(&local, &remote, &stored);
        log::debug!(
            "{}: {} of {} buckets differ ({local_total} rows local, {remote_total} remote)",
            spec.table,
            buckets.len(),
            remote.len().max(local.len())
        );
        if buckets.is_empty() {
            return Ok(Outcome {
                total: local_total,
                ..Default::default()
            });
        }
        // An empty remote is refused before anything else is read.
        delete_guard(local_total, remote_total, 0, ratio).map_err(|m| Failure::new("guard", spec, m))?;

        // 2. Row digests of those buckets (and their recorded digests), merged into what is to be done.
        let (remote, local) = self.on_both(|side| self.row_digests(side, spec, &buckets));
        let remote = sorted_digests(spec, Side::Remote, remote.map_err(|e| Failure::db(spec, e))?)?;
        let local = sorted_digests(spec, Side::Local, local.map_err(|e| Failure::db(spec, e))?)?;
        let stored = self.stored_row_digests(spec, &buckets)?;
        let rec = reconcile(local, remote, stored, policy);

        // 3. The delete guard, before anything is written (and before the policy): the keys to delete are
        //    known from the digests.
        delete_guard(local_total, remote_total, rec.guard_deletes, ratio)
            .map_err(|m| Failure::new("guard", spec, m))?;
        // The columns in which each conflicting row differs, for its warning, read before it is overwritten.
        let conflict_masks = self.conflict_masks(spec, &rec.conflicts)?;
        if rec.writes_nothing() {
            report_conflicts(spec, &rec.conflicts, &conflict_masks, policy);
            return Ok(Outcome {
                conflict_ids: rec.conflicts.into_iter().map(|c| c.key).collect(),
                total: local_total,
                ..Default::default()
            });
        }
        let limits = if rec.plan.changed.is_empty() && rec.plan.new.is_empty() {
            Vec::new()
        } else {
            self.local_limits(spec)?
        };

        // 4. One transaction, chunk by chunk, the digests recorded; the guard again on what was deleted, then
        //    commit.
        let recheck = |deletes: u64| delete_guard(local_total, remote_total, deletes, ratio);
        let applied = self.apply(spec, &rec, &limits, &recheck)?;
        report_conflicts(spec, &rec.conflicts, &conflict_masks, policy);
        let Reconciled {
            plan:
                Plan {
                    deletes: mut deleted_ids,
                    changed,
                    new,
                },
            conflicts,
            record,
            forget,
            ..
        } = rec;
        drop((changed, new, record, forget));
        if applied.unchanged > 0 {
            log::warn!(
                "{}: {} rows had different digests on the two servers but equal values (changed during the \
                 download, or the servers hash differently: then these rows are compared in full every cycle)",
                spec.table,
                applied.unchanged
            );
        }
        if !applied.extra_deletes.is_empty() {
            deleted_ids.extend(applied.extra_deletes);
            deleted_ids.sort_unstable();
        }
        for (key, label) in applied.inserted.iter().zip(applied.labels.iter()) {
            log::info!("{}", diff::new_line(spec, key, label));
        }
        drop(applied.labels);
        for (key, &mask) in applied.updated.iter().zip(&applied.masks) {
            log::info!("{}", diff::changed_line(spec, key, &diff::mask_fields(spec, mask)));
        }
        for key in &deleted_ids {
            log::info!("{}", diff::deleted_line(spec, key));
        }
        let total = (local_total + applied.inserted.len() as u64).saturating_sub(deleted_ids.len() as u64);
        let mut new_ids = applied.inserted.to_vec();
        drop(applied.inserted);
        if !new_ids.windows(2).all(|w| w[0] < w[1]) {
            // Only when a local row went away during the download (then it is inserted from the compare pass).
            new_ids.sort_unstable();
        }
        Ok(Outcome {
            new_ids,
            updated_ids: applied.updated.to_vec(),
            updated_masks: applied.masks,
            deleted_ids,
            conflict_ids: conflicts.into_iter().map(|c| c.key).collect(),
            total,
        })
    }

    /// Per conflict logged one by one (the first [`CONFLICT_LINES`]), the columns in which the local row
    /// differs from the remote one (a [`diff::changed_mask`]; 0 when a side has no row), read from both sides.
    fn conflict_masks(&self, spec: &TableSpec, conflicts: &[Conflict]) -> std::result::Result<Vec<u64>, Failure> {
        let conflicts = &conflicts[..conflicts.len().min(CONFLICT_LINES)];
        let keys: Vec<String> = conflicts
            .iter()
            .filter(|c| c.kind == ConflictKind::Changed)
            .map(|c| c.key.clone())
            .collect();
        let mut masks = BTreeMap::new();
        for chunk in keys.chunks(CHUNK) {
            let (remote, local) = self.on_both(|side| self.rows(side, spec, chunk));
            let remote = index_rows(spec, Side::Remote, remote.map_err(|e| Failure::db(spec, e))?)?;
            let local = index_rows(spec, Side::Local, local.map_err(|e| Failure::db(spec, e))?)?;
            for u in diff_rows(local, remote).updates {
                masks.insert(u.key, diff::changed_mask(&u.changed));
            }
        }
        Ok(conflicts
            .iter()
            .map(|c| masks.get(&c.key).copied().unwrap_or(0))
            .collect())
    }

    fn stored_bucket_digests(&self, spec: &TableSpec) -> std::result::Result<BTreeMap<i32, BucketDigest>, Failure> {
        let db = &self.conns.local;
        let sql = spec.stored_bucket_digests_sql();
        let context = format!("reading the recorded {} digests ({DIGEST_TABLE})", spec.table);
        self.conns
            .with_conn(Side::Local, &format!("{context} from the {}", db.name()), |c| {
                let rows = c.query_typed(&sql, &[]).map_err(|e| db.err(&context, e))?;
                rows.iter()
                    .map(|r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?))))
                    .collect::<std::result::Result<_, postgres::Error>>()
                    .map_err(|e| db.err(&context, e))
            })
            .map_err(|e| unmigrated(spec, e))
    }

    /// The recorded digests of the rows in `buckets`, sorted by key.
    fn stored_row_digests(
        &self,
        spec: &TableSpec,
        buckets: &[i32],
    ) -> std::result::Result<Vec<(String, i64)>, Failure> {
        let db = &self.conns.local;
        let sql = spec.stored_row_digests_sql();
        let context = format!(
            "reading the recorded {} digests of {} buckets",
            spec.table,
            buckets.len()
        );
        let mut out = self
            .conns
            .with_conn(Side::Local, &format!("{context} from the {}", db.name()), |c| {
                let rows = c
                    .query_typed(&sql, &[(&buckets, Type::INT4_ARRAY)])
                    .map_err(|e| db.err(&context, e))?;
                rows.iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect::<std::result::Result<Vec<(String, i64)>, postgres::Error>>()
                    .map_err(|e| db.err(&context, e))
            })
            .map_err(|e| unmigrated(spec, e))?;
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Runs `op` for the remote on a scoped thread and for the local side on this one, concurrently.
    fn on_both<T: Send>(&self, op: impl Fn(Side) -> Result<T> + Sync) -> (Result<T>, Result<T>) {
        std::thread::scope(|s| {
            let spawned = std::thread::Builder::new()
                .name("download-remote".into())
                .spawn_scoped(s, || op(Side::Remote));
            let local = op(Side::Local);
            let remote = match spawned {
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|_| Err(Error::Internal("the remote read panicked".into()))),
                // No thread to be had: do it here, one after the other.
                Err(_) => op(Side::Remote),
            };
            (remote, local)
        })
    }

    fn bucket_digests(&self, side: Side, spec: &TableSpec) -> Result<BTreeMap<i32, BucketDigest>> {
        let target = self.conns.db(side).name().clone();
        let sql = spec.bucket_digests_sql();
        let context = format!("reading the {} bucket digests", spec.table);
        let what = format!("{context} from the {target}");
        self.conns.with_conn_bounded(side, &what, move |c| {
            let rows = c.query_typed(&sql, &[]).map_err(|e| target.err(&context, e))?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?))))
                .collect::<std::result::Result<_, postgres::Error>>()
                .map_err(|e| target.err(&context, e))
        })
    }

    fn row_digests(&self, side: Side, spec: &TableSpec, buckets: &[i32]) -> Result<Vec<(Option<String>, i64)>> {
        let target = self.conns.db(side).name().clone();
        let sql = spec.row_digests_sql();
        let context = format!("reading the {} row digests of {} buckets", spec.table, buckets.len());
        let what = format!("{context} from the {target}");
        let buckets = buckets.to_vec();
        self.conns.with_conn_bounded(side, &what, move |c| {
            let err = |e| target.err(&context, e);
            let mut out = Vec::new();
            let mut it = c.query_typed_raw(&sql, [(&buckets, Type::INT4_ARRAY)]).map_err(err)?;
            while let Some(r) = it.next().map_err(err)? {
                out.push((r.try_get(0).map_err(err)?, r.try_get(1).map_err(err)?));
            }
            Ok(out)
        })
    }

    fn rows(&self, side: Side, spec: &TableSpec, keys: &[String]) -> Result<Vec<(Option<String>, Values)>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let target = self.conns.db(side).name().clone();
        let sql = spec.rows_sql();
        let context = format!("reading {} {} rows", keys.len(), spec.table);
        let what = format!("{context} from the {target}");
        let width = spec.columns.len();
        let keys = keys.to_vec();
        self.conns.with_conn_bounded(side, &what, move |c| {
            read_rows(&mut **c, &sql, &keys, width).map_err(|e| target.err(&context, e))
        })
    }

    /// What the local table can hold: the key's and each compared column's limits, in that order.
    fn local_limits(&self, spec: &TableSpec) -> std::result::Result<Vec<Limit>, Failure> {
        let db = &self.conns.local;
        let context = format!("reading the column limits of the local {} table", spec.table);
        let rows = self
            .conns
            .with_conn(Side::Local, &format!("{context} ({})", db.target()), |c| {
                let rows = c
                    .query_typed(table::LOCAL_LIMITS_SQL, &[(&spec.table, Type::TEXT)])
                    .map_err(|e| db.err(&context, e))?;
                rows.iter()
                    .map(|r| {
                        let name: String = r.try_get(0)?;
                        let max: Option<i32> = r.try_get(1)?;
                        let not_null: bool = r.try_get(2)?;
                        Ok((
                            name,
                            Limit {
                                max_chars: max.and_then(|m| usize::try_from(m).ok()),
                                not_null,
                            },
                        ))
                    })
                    .collect::<std::result::Result<BTreeMap<String, Limit>, postgres::Error>>()
                    .map_err(|e| db.err(&context, e))
            })
            .map_err(|e| Failure::db(spec, e))?;
        if rows.is_empty() {
            return Err(Failure::new(
                "schema",
                spec,
                format!("the {} has no table {}", db.name(), spec.table),
            ));
        }
        spec.checked_columns()
            .into_iter()
            .map(|c| {
                rows.get(c)
                    .copied()
                    .ok_or_else(|| Failure::new("schema", spec, format!("the local table has no column {c}")))
            })
            .collect()
    }
}

/// One warning per conflict (up to [`CONFLICT_LINES`], then one line for the rest): the key, the differing
/// columns (never the values), what the policy did.
fn report_conflicts(spec: &TableSpec, conflicts: &[Conflict], masks: &[u64], policy: ConflictPolicy) {
    for (c, &mask) in conflicts.iter().zip(masks) {
        log::warn!(
            "{}",
            conflict_line(spec, &c.key, c.kind, &diff::mask_fields(spec, mask), policy)
        );
    }
    if conflicts.len() > masks.len() {
        log::warn!(
            "{}: {} more conflicts not logged one by one (DOWNLOAD_CONFLICT_POLICY={}; every conflicting key is in \
             the result)",
            spec.table,
            conflicts.len() - masks.len(),
            policy.as_str()
        );
    }
}

/// A failure to read the recorded digests; a missing table is named with its fix.
fn unmigrated(spec: &TableSpec, e: Error) -> Failure {
    if e.sqlstate() == Some("42P01") {
        Failure::new(
            "schema",
            spec,
            format!("{e}: the local bookkeeping table {DIGEST_TABLE} is missing: run `sync-process migrate`"),
        )
    } else {
        Failure::db(spec, e)
    }
}

/// Row digests sorted by key (bytewise), as [`diff::plan`] takes them. A NULL or duplicated key (a remote table
/// without a primary key) fails the download.
fn sorted_digests(
    spec: &TableSpec,
    side: Side,
    rows: Vec<(Option<String>, i64)>,
) -> std::result::Result<Vec<(String, i64)>, Failure> {
    let mut out = rows
        .into_iter()
        .map(|(key, digest)| key.map(|k| (k, digest)).ok_or_else(|| null_key(spec, side)))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    if let Some(w) = out.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(duplicate_key(spec, side, &w[0].0));
    }
    Ok(out)
}

/// The rows of `keys` (at most [`CHUNK`]: one statement) as `(key, values as text)`, on either side.
fn read_rows(
    c: &mut impl GenericClient,
    sql: &str,
    keys: &[String],
    width: usize,
) -> std::result::Result<Vec<(Option<String>, Values)>, postgres::Error> {
    let mut out = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(CHUNK) {
        let mut it = c.query_typed_raw(sql, [(chunk, Type::TEXT_ARRAY)])?;
        while let Some(r) = it.next()? {
            let key: Option<String> = r.try_get(0)?;
            let values = (1..=width)
                .map(|i| r.try_get::<_, Option<String>>(i))
                .collect::<std::result::Result<Values, _>>()?;
            out.push((key, values));
        }
    }
    Ok(out)
}

fn index_rows(spec: &TableSpec, side: Side, rows: Vec<(Option<String>, Values)>) -> std::result::Result<Rows, Failure> {
    let mut out = Rows::new();
    for (key, values) in rows {
        let key = key.ok_or_else(|| null_key(spec, side))?;
        if out.insert(key.clone(), values).is_some() {
            return Err(duplicate_key(spec, side, &key));
        }
    }
    Ok(out)
}

fn null_key(spec: &TableSpec, side: Side) -> Failure {
    Failure::new(
        "data",
        spec,
        format!(
            "bad {side} data: a row has a NULL {}, the local column is NOT NULL",
            spec.key
        ),
    )
}

fn duplicate_key(spec: &TableSpec, side: Side, key: &str) -> Failure {
    Failure::new(
        "data",
        spec,
        format!(
            "bad {side} data: more than one row has {} {}, the local column is the primary key",
            spec.key,
            diff::quoted(key)
        ),
    )
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}
