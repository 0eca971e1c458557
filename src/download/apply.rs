//! The local transaction of one download: the deletes, then the keys to compare and to insert chunk by
//! chunk, with the remote rows read ahead on a second thread, then the digests of what it left recorded.
//!
//! Owns: [`Applied`] (what the transaction wrote), [`Stop`] (why it stopped without committing: a local
//! database error, retried whole when transient, or a failure that is final), and the writes themselves.
//! Does not own: the plan and the guard (diff.rs), the SQL texts (table.rs), reading rows and the result
//! (download.rs).

use postgres::types::{ToSql, Type};

use super::text_list::TextList;
use super::{
    check_rows, diff, diff_rows, index_rows, read_rows, DownloadSyncManager, Failure, Limit, Plan, Reconciled, Rows,
    TableSpec, Values, CHUNK,
};
use crate::db::{Database, Side};
use crate::error::Error;

/// Why the local transaction stopped without committing (it is dropped, so it rolls back).
pub(super) enum Stop {
    /// A local database error: the whole transaction is tried again when it is transient.
    Local(Error),
    /// The download fails for good (a remote read, bad remote data, the guard): never retried here.
    Refused(Failure),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Stop {
        Stop::Local(e)
    }
}

/// How one attempt at the transaction ended, when not by a local database error. (One value per attempt:
/// the size of its variants does not matter.)
#[allow(clippy::large_enum_variant)]
enum Attempt {
    Committed(Applied),
    Refused(Failure),
}

/// What the local transaction wrote, collected chunk by chunk.
#[derive(Debug, Default)]
pub(super) struct Applied {
    /// Inserted keys, and the [`diff::label`] of each for its log line.
    pub inserted: TextList,
    pub labels: TextList,
    /// Updated keys, and the [`diff::changed_mask`] of each.
    pub updated: TextList,
    pub masks: Vec<u64>,
    /// Keys deleted beyond the plan: their remote row went away between steps 2 and 4.
    pub extra_deletes: Vec<String>,
    /// Keys whose digests differed but whose values were equal.
    pub unchanged: usize,
}

impl DownloadSyncManager<'_> {
    /// All local writes of one download in one transaction, streamed chunk by chunk (see the module docs);
    /// a failure anywhere rolls everything back (the transaction is dropped uncommitted). `recheck` is the
    /// delete guard on the number of rows actually deleted, asked before the commit. A transient local
    /// database error retries the whole transaction; a remote read error, bad remote data or the guard are
    /// final.
    pub(super) fn apply(
        &self,
        spec: &TableSpec,
        rec: &Reconciled,
        limits: &[Limit],
        recheck: &dyn Fn(u64) -> std::result::Result<(), String>,
    ) -> std::result::Result<Applied, Failure> {
        let what = format!("writing the {} download to the {}", spec.table, self.conns.local.name());
        let attempt = self.conns.with_conn(Side::Local, &what, |c| {
            match self.write(c, spec, rec, limits, recheck) {
                Ok(applied) => Ok(Attempt::Committed(applied)),
                Err(Stop::Local(e)) => Err(e),
                Err(Stop::Refused(failure)) => Ok(Attempt::Refused(failure)),
            }
        });
        match attempt.map_err(|e| Failure::db(spec, e))? {
            Attempt::Committed(applied) => Ok(applied),
            Attempt::Refused(failure) => Err(failure),
        }
    }

    /// One attempt at the transaction of [`DownloadSyncManager::apply`].
    fn write(
        &self,
        c: &mut postgres::Client,
        spec: &TableSpec,
        rec: &Reconciled,
        limits: &[Limit],
        recheck: &dyn Fn(u64) -> std::result::Result<(), String>,
    ) -> std::result::Result<Applied, Stop> {
        let db: &Database = &self.conns.local;
        let plan = &rec.plan;
        let delete_sql = spec.delete_sql();
        let mut tx = c
            .transaction()
            .map_err(|e| db.err(format!("starting the {} transaction", spec.table), e))?;
        for chunk in plan.deletes.chunks(CHUNK) {
            tx.execute_typed(&delete_sql, &[(&chunk, Type::TEXT_ARRAY)])
                .map_err(|e| db.err(format!("deleting {} {} rows", chunk.len(), spec.table), e))?;
        }
        let applied = self.stream(&mut tx, spec, plan, limits)?;
        record_digests(&mut tx, db, spec, rec, &applied.extra_deletes)?;
        let deleted = plan.deletes.len() + applied.extra_deletes.len();
        recheck(deleted as u64).map_err(|m| Stop::Refused(Failure::new("guard", spec, m)))?;
        tx.commit()
            .map_err(|e| db.err(format!("committing the {} download", spec.table), e))?;
        Ok(applied)
    }

    /// Steps through the plan's keys to compare, then its keys to insert, [`CHUNK`] at a time: a reader
    /// thread fetches each chunk's remote rows and hands them over through a rendezvous channel (so it is at
    /// most one chunk ahead); this thread reads the chunk's local rows in `tx` (keys to compare only), takes
    /// the remote ones, diffs, checks the limits and writes.
    fn stream(
        &self,
        tx: &mut postgres::Transaction<'_>,
        spec: &TableSpec,
        plan: &Plan,
        limits: &[Limit],
    ) -> std::result::Result<Applied, Stop> {
        let db: &Database = &self.conns.local;
        let (rows_sql, update_sql, insert_sql, delete_sql) =
            (spec.rows_sql(), spec.update_sql(), spec.insert_sql(), spec.delete_sql());
        let width = spec.columns.len();
        // (read the local rows too, keys) per chunk, in the order they are written.
        let chunks = || {
            let compare = plan.changed.chunks(CHUNK).map(|keys| (true, keys));
            compare.chain(plan.new.chunks(CHUNK).map(|keys| (false, keys)))
        };
        std::thread::scope(|s| {
            let (sender, receiver) = std::sync::mpsc::sync_channel::<std::result::Result<Rows, Failure>>(0);
            let reader = std::thread::Builder::new()
                .name("download-remote".into())
                .spawn_scoped(s, move || {
                    for (_, keys) in chunks() {
                        let rows = self
                            .rows(Side::Remote, spec, keys)
                            .map_err(|e| Failure::db(spec, e))
                            .and_then(|rows| index_rows(spec, Side::Remote, rows));
                        let failed = rows.is_err();
                        // A send fails when the writer has stopped: so does the reader.
                        if sender.send(rows).is_err() || failed {
                            break;
                        }
                    }
                });
            if let Err(e) = reader {
                return Err(Stop::Refused(Failure::new(
                    "io",
                    spec,
                    format!("could not start the thread that reads the remote rows: {e}"),
                )));
            }
            // Sized for the plan (the usual case: every key to compare is updated, every new key inserted).
            let mut applied = Applied {
                inserted: TextList::with_capacity(plan.new.len()),
                labels: TextList::with_capacity(plan.new.len()),
                updated: TextList::with_capacity(plan.changed.len()),
                masks: Vec::with_capacity(plan.changed.len()),
                ..Applied::default()
            };
            for (with_local, keys) in chunks() {
                // The local rows first: the reader is fetching the remote ones meanwhile.
                let local = if with_local {
                    let rows = read_rows(&mut *tx, &rows_sql, keys, width)
                        .map_err(|e| db.err(format!("reading {} local {} rows", keys.len(), spec.table), e))?;
                    index_rows(spec, Side::Local, rows).map_err(Stop::Refused)?
                } else {
                    Rows::new()
                };
                let remote = match receiver.recv() {
                    Ok(Ok(rows)) => rows,
                    Ok(Err(failure)) => return Err(Stop::Refused(failure)),
                    Err(_) => {
                        return Err(Stop::Refused(Failure::new(
                            "panic",
                            spec,
                            "internal error: the thread reading the remote rows ended early",
                        )))
                    }
                };
                let diff = diff_rows(local, remote);
                let written = diff
                    .inserts
                    .iter()
                    .map(|(k, v)| (k.as_str(), v))
                    .chain(diff.updates.iter().map(|u| (u.key.as_str(), &u.values)));
                if let Err(m) = check_rows(spec, limits, written) {
                    return Err(Stop::Refused(Failure::new(
                        "data",
                        spec,
                        format!("bad remote data: {m}"),
                    )));
                }
                if !diff.deletes.is_empty() {
                    tx.execute_typed(&delete_sql, &[(&diff.deletes, Type::TEXT_ARRAY)])
                        .map_err(|e| db.err(format!("deleting {} {} rows", diff.deletes.len(), spec.table), e))?;
                }
                if !diff.updates.is_empty() {
                    let rows: Vec<(&str, &Values)> = diff.updates.iter().map(|u| (u.key.as_str(), &u.values)).collect();
                    write_rows(tx, &update_sql, &rows, width)
                        .map_err(|e| db.err(format!("updating {} {} rows", rows.len(), spec.table), e))?;
                }
                if !diff.inserts.is_empty() {
                    let rows: Vec<(&str, &Values)> = diff.inserts.iter().map(|(k, v)| (k.as_str(), v)).collect();
                    write_rows(tx, &insert_sql, &rows, width)
                        .map_err(|e| db.err(format!("inserting {} {} rows", rows.len(), spec.table), e))?;
                }
                for (key, values) in &diff.inserts {
                    applied.inserted.push(key);
                    applied.labels.push(diff::label(spec, values));
                }
                for u in &diff.updates {
                    applied.updated.push(&u.key);
                    applied.masks.push(diff::changed_mask(&u.changed));
                }
                applied.extra_deletes.extend(diff.deletes);
                applied.unchanged += diff.unchanged;
            }
            Ok(applied)
        })
    }
}

/// The digests of what the transaction leaves, recorded in it: every updated or inserted key's anew from its
/// row as written, the rows equal on both sides as read in step 2; the digests of the deleted keys (planned,
/// or `extra_deletes`) and of keys on neither side dropped. A conflict kept by keep-local is in none of these
/// lists: its digest stays.
fn record_digests(
    tx: &mut postgres::Transaction<'_>,
    db: &Database,
    spec: &TableSpec,
    rec: &Reconciled,
    extra_deletes: &[String],
) -> std::result::Result<(), Stop> {
    let context = |n: usize| format!("recording the digests of {n} {} rows", spec.table);
    let refresh = spec.refresh_digests_sql();
    for keys in [&rec.plan.changed, &rec.plan.new] {
        for chunk in keys.chunks(CHUNK) {
            tx.execute_typed(&refresh, &[(&chunk, Type::TEXT_ARRAY)])
                .map_err(|e| db.err(context(chunk.len()), e))?;
        }
    }
    let record = spec.record_digests_sql();
    for chunk in rec.record.chunks(CHUNK) {
        let keys: Vec<&str> = chunk.iter().map(|(k, _)| k.as_str()).collect();
        let digests: Vec<i64> = chunk.iter().map(|(_, d)| *d).collect();
        tx.execute_typed(&record, &[(&keys, Type::TEXT_ARRAY), (&digests, Type::INT8_ARRAY)])
            .map_err(|e| db.err(context(chunk.len()), e))?;
    }
    let forget = spec.forget_digests_sql();
    for keys in [&rec.plan.deletes[..], extra_deletes, &rec.forget[..]] {
        for chunk in keys.chunks(CHUNK) {
            tx.execute_typed(&forget, &[(&chunk, Type::TEXT_ARRAY)])
                .map_err(|e| db.err(format!("dropping {} recorded {} digests", chunk.len(), spec.table), e))?;
        }
    }
    Ok(())
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
