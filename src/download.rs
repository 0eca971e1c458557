//! Download Sync Manager: mirrors `meters` and `tenant` from the remote into the local database, reporting
//! exactly what changed.
//!
//! Owns: [`DownloadSyncManager`] and its results ([`MeterSyncResult`], [`TenantSyncResult`], the contract's
//! JSON shapes), and one generic download driven by a [`TableSpec`] (table.rs: the two tables and all SQL;
//! diff.rs: the pure comparison, guard and checks). Does not own: connections and retries (db.rs), writing
//! `sync_logs` or ordering the parts of a cycle (scheduler.rs), the remote schema.
//!
//! One download of one table, every cycle a full comparison that stays cheap when little changed:
//! 1. both servers, concurrently: per bucket of rows (4096 buckets by a hash of the key), the row count and
//!    a digest of the rows' keys and compared values as text. Nothing changed: done (one small row per
//!    bucket crossed the link; no local write).
//! 2. for the buckets that differ, both servers: each row's key and 64-bit digest.
//! 3. for the keys whose digest differs or that exist on one side only: the full rows as text, from the
//!    side(s) that have them; [`diff::diff_rows`] turns them into inserts, updates (with the differing
//!    columns) and deletes.
//! 4. the delete guard, then the remote rows checked against the local column limits; then all local writes
//!    in ONE transaction (`unnest` of array parameters, in chunks), synced_at set on each written row.
//!    Unchanged rows are never written.
//!
//! Invariants: a failed download (remote table missing or unreadable, guard, bad remote data, any database
//! error) changes nothing locally and is returned as `success=false` with the table named in `error`; the
//! methods never panic and never return `Err`. Changes are judged on the values, not on `updated_at`.

mod diff;
mod table;

use std::collections::BTreeMap;
use std::time::Instant;

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{ToSql, Type};
use serde::Serialize;

use crate::config::Config;
use crate::db::{ConnectionManager, Database};
use crate::error::{Error, Result, Side};

pub use diff::{
    change_lines, changed_fields, check_rows, delete_guard, diff_rows, differing_buckets, differing_keys, BucketDigest,
    Diff, Limit, Rows, Update, Values,
};
pub use table::{Column, Kind, TableSpec, BUCKET_MASK, METERS, TENANTS};

/// Keys per read of full rows, rows per local write statement: bounds the size of one message.
const CHUNK: usize = 5_000;

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
    pub error: Option<String>,
    pub duration: u64,
}

/// What one successful download of a table did. Id lists sorted bytewise.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Outcome {
    new_ids: Vec<String>,
    /// Updated keys with the names of their differing columns, in schema order.
    updated: Vec<(String, Vec<String>)>,
    deleted_ids: Vec<String>,
    /// Rows in the local table after the download.
    total: u64,
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
        let duration = millis(started);
        match outcome {
            Ok(o) => MeterSyncResult {
                success: true,
                new_meters: o.new_ids.len() as u64,
                updated_meters: o.updated.len() as u64,
                deleted_meters: o.deleted_ids.len() as u64,
                total_meters: o.total,
                new_meter_ids: o.new_ids,
                updated_meter_ids: o.updated.into_iter().map(|(k, _)| k).collect(),
                deleted_meter_ids: o.deleted_ids,
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
        let duration = millis(started);
        match outcome {
            Ok(o) => TenantSyncResult {
                success: true,
                new_tenants: o.new_ids.len() as u64,
                updated_tenants: o.updated.len() as u64,
                deleted_tenants: o.deleted_ids.len() as u64,
                total_tenants: o.total,
                new_tenant_ids: o.new_ids,
                updated_tenant_ids: o.updated.iter().map(|(k, _)| k.clone()).collect(),
                deleted_tenant_ids: o.deleted_ids,
                tenant_changes: o
                    .updated
                    .into_iter()
                    .map(|(tenant_id, changed_fields)| TenantChange {
                        tenant_id,
                        changed_fields,
                    })
                    .collect(),
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
        self.count(Side::Local, &METERS)
    }
    pub fn remote_meter_count(&self) -> Result<i64> {
        self.count(Side::Remote, &METERS)
    }
    pub fn local_tenant_count(&self) -> Result<i64> {
        self.count(Side::Local, &TENANTS)
    }
    pub fn remote_tenant_count(&self) -> Result<i64> {
        self.count(Side::Remote, &TENANTS)
    }

    fn count(&self, side: Side, spec: &TableSpec) -> Result<i64> {
        let target = self.conns.db(side).target().to_string();
        let sql = spec.count_sql();
        let context = format!("counting {}", spec.table);
        let what = format!("{context} in the {side} database {target}");
        self.conns.with_conn_bounded(side, &what, move |c| {
            let row = c
                .query_typed_one(&sql, &[])
                .map_err(|e| Error::db(side, &target, &context, e))?;
            row.try_get(0).map_err(|e| Error::db(side, &target, &context, e))
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
                let ms = millis(started);
                if o.new_ids.is_empty() && o.updated.is_empty() && o.deleted_ids.is_empty() {
                    log::debug!("{}: no change ({} rows, {ms} ms)", spec.table, o.total);
                } else {
                    // The scheduler logs each download's counts at info; the changes themselves are logged
                    // one by one above at info (Properties 9 and 14).
                    log::debug!(
                        "{}: downloaded {} new, {} updated, {} deleted; {} rows locally ({ms} ms)",
                        spec.table,
                        o.new_ids.len(),
                        o.updated.len(),
                        o.deleted_ids.len(),
                        o.total
                    );
                }
                let total = o.total;
                (Ok(o), total)
            }
            Err(f) => {
                log::error!("download of {} failed ({} error): {}", spec.table, f.kind, f.message);
                let total = match local_rows {
                    Some(n) => n,
                    // One attempt, no backoff: this only fills in the report.
                    None => self.count_once(spec).unwrap_or(0),
                };
                (Err(f.message), total)
            }
        }
    }

    fn count_once(&self, spec: &TableSpec) -> Option<u64> {
        let mut conn = self.conns.local.try_get().ok()?;
        let n: i64 = conn.query_one(&spec.count_sql(), &[]).ok()?.try_get(0).ok()?;
        u64::try_from(n).ok()
    }

    /// The download itself (see the module docs for the steps). `local_rows` is set as soon as known.
    fn download(&self, spec: &TableSpec, local_rows: &mut Option<u64>) -> std::result::Result<Outcome, Failure> {
        let ratio = self.cfg.download_max_delete_ratio;

        // 1. Bucket digests.
        let (remote, local) = self.on_both(|side| self.bucket_digests(side, spec));
        let local = local.map_err(|e| Failure::db(spec, e))?;
        let local_total: u64 = local.values().map(|(n, _)| u64::try_from(*n).unwrap_or(0)).sum();
        *local_rows = Some(local_total);
        let remote = remote.map_err(|e| Failure::db(spec, e))?;
        let remote_total: u64 = remote.values().map(|(n, _)| u64::try_from(*n).unwrap_or(0)).sum();
        let buckets = differing_buckets(&local, &remote);
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

        // 2. Row digests of the differing buckets.
        let (remote, local) = self.on_both(|side| self.row_digests(side, spec, &buckets));
        let remote = index_digests(spec, Side::Remote, remote.map_err(|e| Failure::db(spec, e))?)?;
        let local = index_digests(spec, Side::Local, local.map_err(|e| Failure::db(spec, e))?)?;
        let (remote_keys, local_keys) = differing_keys(&local, &remote);
        drop((remote, local));

        // 3. Full rows of the differing keys, and the diff.
        let (remote, local) = self.on_both(|side| match side {
            Side::Remote => self.rows(side, spec, &remote_keys),
            Side::Local => self.rows(side, spec, &local_keys),
        });
        let remote = index_rows(spec, Side::Remote, remote.map_err(|e| Failure::db(spec, e))?)?;
        let local = index_rows(spec, Side::Local, local.map_err(|e| Failure::db(spec, e))?)?;
        let diff = diff_rows(local, remote);
        if diff.unchanged > 0 {
            log::warn!(
                "{}: {} rows had different digests on the two servers but equal values (changed during the \
                 download, or the servers hash differently: then these rows are compared in full every cycle)",
                spec.table,
                diff.unchanged
            );
        }

        // 4. Guard, checks, one transaction.
        delete_guard(local_total, remote_total, diff.deletes.len() as u64, ratio)
            .map_err(|m| Failure::new("guard", spec, m))?;
        if diff.is_empty() {
            return Ok(Outcome {
                total: local_total,
                ..Default::default()
            });
        }
        if !diff.inserts.is_empty() || !diff.updates.is_empty() {
            let limits = self.local_limits(spec)?;
            let written = diff
                .inserts
                .iter()
                .map(|(k, v)| (k.as_str(), v))
                .chain(diff.updates.iter().map(|u| (u.key.as_str(), &u.values)));
            check_rows(spec, &limits, written)
                .map_err(|m| Failure::new("data", spec, format!("bad remote data: {m}")))?;
        }
        self.apply(spec, &diff).map_err(|e| Failure::db(spec, e))?;

        for line in change_lines(spec, &diff) {
            log::info!("{line}");
        }
        let total = (local_total + diff.inserts.len() as u64).saturating_sub(diff.deletes.len() as u64);
        Ok(Outcome {
            new_ids: diff.inserts.into_iter().map(|(k, _)| k).collect(),
            updated: diff
                .updates
                .into_iter()
                .map(|u| (u.key, changed_fields(spec, &u.changed)))
                .collect(),
            deleted_ids: diff.deletes,
            total,
        })
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
                    .unwrap_or_else(|_| Err(Error::Other("the remote read panicked".into()))),
                // No thread to be had: do it here, one after the other.
                Err(_) => op(Side::Remote),
            };
            (remote, local)
        })
    }

    fn bucket_digests(&self, side: Side, spec: &TableSpec) -> Result<BTreeMap<i32, BucketDigest>> {
        let target = self.conns.db(side).target().to_string();
        let sql = spec.bucket_digests_sql();
        let context = format!("reading the {} bucket digests", spec.table);
        let what = format!("{context} from the {side} database {target}");
        self.conns.with_conn_bounded(side, &what, move |c| {
            let rows = c
                .query_typed(&sql, &[])
                .map_err(|e| Error::db(side, &target, &context, e))?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?))))
                .collect::<std::result::Result<_, postgres::Error>>()
                .map_err(|e| Error::db(side, &target, &context, e))
        })
    }

    fn row_digests(&self, side: Side, spec: &TableSpec, buckets: &[i32]) -> Result<Vec<(Option<String>, i64)>> {
        let target = self.conns.db(side).target().to_string();
        let sql = spec.row_digests_sql();
        let context = format!("reading the {} row digests of {} buckets", spec.table, buckets.len());
        let what = format!("{context} from the {side} database {target}");
        let buckets = buckets.to_vec();
        self.conns.with_conn_bounded(side, &what, move |c| {
            let err = |e| Error::db(side, &target, &context, e);
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
        let target = self.conns.db(side).target().to_string();
        let sql = spec.rows_sql();
        let context = format!("reading {} {} rows", keys.len(), spec.table);
        let what = format!("{context} from the {side} database {target}");
        let width = spec.columns.len();
        let keys = keys.to_vec();
        self.conns.with_conn_bounded(side, &what, move |c| {
            let err = |e| Error::db(side, &target, &context, e);
            let mut out = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(CHUNK) {
                let mut it = c.query_typed_raw(&sql, [(chunk, Type::TEXT_ARRAY)]).map_err(err)?;
                while let Some(r) = it.next().map_err(err)? {
                    let key: Option<String> = r.try_get(0).map_err(err)?;
                    let values = (1..=width)
                        .map(|i| r.try_get::<_, Option<String>>(i))
                        .collect::<std::result::Result<Values, _>>()
                        .map_err(err)?;
                    out.push((key, values));
                }
            }
            Ok(out)
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
                format!("the local database {} has no table {}", db.target(), spec.table),
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

    /// All local writes of one download in one transaction; a failure rolls everything back (the
    /// transaction is dropped uncommitted). Retried whole on a transient error.
    fn apply(&self, spec: &TableSpec, diff: &Diff) -> Result<()> {
        let db: &Database = &self.conns.local;
        let (delete_sql, update_sql, insert_sql) = (spec.delete_sql(), spec.update_sql(), spec.insert_sql());
        let width = spec.columns.len();
        let what = format!(
            "writing the {} download to the local database {}",
            spec.table,
            db.target()
        );
        self.conns.with_conn(Side::Local, &what, |c| {
            let mut tx = c
                .transaction()
                .map_err(|e| db.err(format!("starting the {} transaction", spec.table), e))?;
            for chunk in diff.deletes.chunks(CHUNK) {
                tx.execute_typed(&delete_sql, &[(&chunk, Type::TEXT_ARRAY)])
                    .map_err(|e| db.err(format!("deleting {} {} rows", chunk.len(), spec.table), e))?;
            }
            for chunk in diff.updates.chunks(CHUNK) {
                let rows: Vec<(&str, &Values)> = chunk.iter().map(|u| (u.key.as_str(), &u.values)).collect();
                write_rows(&mut tx, &update_sql, &rows, width)
                    .map_err(|e| db.err(format!("updating {} {} rows", rows.len(), spec.table), e))?;
            }
            for chunk in diff.inserts.chunks(CHUNK) {
                let rows: Vec<(&str, &Values)> = chunk.iter().map(|(k, v)| (k.as_str(), v)).collect();
                write_rows(&mut tx, &insert_sql, &rows, width)
                    .map_err(|e| db.err(format!("inserting {} {} rows", rows.len(), spec.table), e))?;
            }
            tx.commit()
                .map_err(|e| db.err(format!("committing the {} download", spec.table), e))
        })
    }
}

/// One update or insert statement: the keys as `$1`, each column's values as `$2..`, all text arrays.
fn write_rows(
    tx: &mut postgres::Transaction<'_>,
    sql: &str,
    rows: &[(&str, &Values)],
    width: usize,
) -> std::result::Result<u64, postgres::Error> {
    let keys: Vec<&str> = rows.iter().map(|(k, _)| *k).collect();
    let columns: Vec<Vec<Option<&str>>> = (0..width)
        .map(|i| rows.iter().map(|(_, v)| v.get(i).and_then(|x| x.as_deref())).collect())
        .collect();
    let mut params: Vec<(&(dyn ToSql + Sync), Type)> = Vec::with_capacity(width + 1);
    params.push((&keys, Type::TEXT_ARRAY));
    for col in &columns {
        params.push((col, Type::TEXT_ARRAY));
    }
    tx.execute_typed(sql, &params)
}

/// Row digests by key. A NULL or duplicated key (a remote table without a primary key) fails the download.
fn index_digests(
    spec: &TableSpec,
    side: Side,
    rows: Vec<(Option<String>, i64)>,
) -> std::result::Result<BTreeMap<String, i64>, Failure> {
    let mut out = BTreeMap::new();
    for (key, digest) in rows {
        let key = key.ok_or_else(|| null_key(spec, side))?;
        if out.insert(key.clone(), digest).is_some() {
            return Err(duplicate_key(spec, side, &key));
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

fn millis(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}
