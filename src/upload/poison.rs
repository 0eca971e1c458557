//! Poison isolation: which readings of a rejected batch the remote refuses, and moving them aside.
//!
//! Owns: the probe (bisection under savepoints inside a remote transaction that is always rolled back), the
//! control readings that tell poison from a remote that rejects everything ([`Error::RejectsEverything`]),
//! and quarantining the bad readings while narrowing their batch. Changes nothing remotely. Does not own: the
//! statement texts (sql.rs), the local statements (session.rs), when to isolate (drain.rs: `upload_part`).

use std::collections::HashSet;
use std::sync::Arc;

use postgres::types::{ToSql, Type};

use super::batch::{ClaimedBatch, Columns, QueuedReading};
use super::fault::{maybe_data, CentralFault};
use super::session::Session;
use super::{sql, UploadSyncManager};
use crate::db::{Side, Target};
use crate::error::{describe_pg_error, Error, Result};

/// How often a batch whose probes found no bad reading is uploaded again before the part fails.
pub(super) const MAX_UNEXPLAINED_REJECTIONS: u32 = 2;

/// A reading the remote rejects on its own: its index in the batch, the error text, the SQLSTATE.
pub(super) type Rejected = (usize, String, Option<String>);

/// What the probes of a rejected batch found.
pub(super) enum Isolation {
    /// These readings are rejected on their own.
    Bad(Vec<Rejected>),
    /// Every part passes on its own: the rejection is not explained by any reading.
    Unexplained,
}

impl UploadSyncManager<'_> {
    /// Finds the readings the remote rejects on their own: bisects the batch inside one remote transaction,
    /// each part under a savepoint (so later parts see earlier good ones, exactly as the real insert would),
    /// then rolls the whole transaction back. Changes nothing anywhere.
    ///
    /// When every reading of a batch of several is rejected (or its only reading, with XX000), the batch alone
    /// cannot tell poison (these rows) from a remote that rejects everything (a schema change): a few queued
    /// readings from outside the batch are probed the same way. If one of them passes, the batch's readings are poison and are quarantined;
    /// if none does (or there is none), it is [`Error::RejectsEverything`] and nothing is quarantined.
    pub(super) fn isolate_rejected(
        &self,
        s: &mut Session,
        batch: &Arc<ClaimedBatch>,
        first: &Error,
    ) -> Result<Isolation> {
        let n = batch.len();
        let bad = if n == 1 {
            let text = match first {
                Error::Db { source, .. } => describe_pg_error(source),
                other => other.to_string(),
            };
            vec![(0, text, first.sqlstate().map(str::to_string))]
        } else {
            let context = format!("probing rejected batch {} ({n} readings)", batch.batch_id);
            let b = Arc::clone(batch);
            let p = self.probe_statement();
            self.probe_remotely(context, move |tx, target, context, bad| {
                let mid = n / 2;
                probe(tx, &p, maybe_data, target, context, &b.readings, 0, mid, bad)?;
                probe(tx, &p, maybe_data, target, context, &b.readings, mid, n, bad)
            })?
        };
        if bad.is_empty() {
            log::warn!(
                "upload: every part of batch {} passes on its own; uploading it again",
                batch.batch_id
            );
            return Ok(Isolation::Unexplained);
        }
        // A lone reading rejected with a data error is at fault; one rejected with XX000 is not proved so (Citus
        // reports a worker's rejection so, but so does a fault of the central's own): controls decide.
        let unproved = n > 1 || bad.iter().all(|(_, _, state)| state.as_deref() == Some("XX000"));
        if bad.len() == n && unproved {
            let (controls, passed) = self.probe_controls(s, batch)?;
            if passed == 0 {
                return Err(Error::RejectsEverything {
                    target: self.conns.remote.name().clone(),
                    batch_id: batch.batch_id.clone(),
                    readings: n,
                    controls,
                    first_error: bad[0].1.clone(),
                });
            }
            log::warn!(
                "upload: every reading of batch {} is rejected while {passed} of {controls} other queued readings \
                 pass: quarantining the batch's readings",
                batch.batch_id
            );
        }
        Ok(Isolation::Bad(bad))
    }

    /// Probes up to CONTROL_READINGS queued readings from outside `batch` in a remote transaction that is rolled
    /// back. Returns (readings probed, readings the remote accepts).
    fn probe_controls(&self, s: &mut Session, batch: &ClaimedBatch) -> Result<(usize, usize)> {
        let controls = s.control_readings(batch)?;
        if controls.is_empty() {
            return Ok((0, 0));
        }
        let n = controls.len();
        let context = format!("probing {n} control readings for rejected batch {}", batch.batch_id);
        let p = self.probe_statement();
        let rejected = self
            .probe_remotely(context, move |tx, target, context, bad| {
                probe(tx, &p, maybe_data, target, context, &controls, 0, n, bad)
            })?
            .len();
        Ok((n, n - rejected.min(n)))
    }

    /// The readings of `batch` (indexes, in order) the central has no partition for: found by the same
    /// bisection as poison, in a remote transaction that is rolled back, to name the timestamps an operator
    /// must create partitions for. Nothing is quarantined.
    pub(super) fn without_partition(&self, batch: &Arc<ClaimedBatch>) -> Result<Vec<usize>> {
        let n = batch.len();
        let context = format!(
            "locating the readings of batch {} that have no partition",
            batch.batch_id
        );
        let b = Arc::clone(batch);
        let p = self.probe_statement();
        let no_partition = |e: &postgres::Error| matches!(CentralFault::of(e), Some(CentralFault::NoPartition { .. }));
        let mut found: Vec<usize> = self
            .probe_remotely(context, move |tx, target, context, bad| {
                probe(tx, &p, no_partition, target, context, &b.readings, 0, n, bad)
            })?
            .into_iter()
            .map(|(i, _, _)| i)
            .collect();
        found.sort_unstable();
        Ok(found)
    }

    /// The probe's statement (with UPLOAD_SOURCE_COLUMN written in, as the upload writes it) and this source.
    fn probe_statement(&self) -> ProbeStatement {
        ProbeStatement {
            text: sql::with_source_column(sql::PROBE, self.cfg.upload_source_column.as_deref(), "$6"),
            source_id: self.cfg.source_id.clone(),
        }
    }

    /// Runs `probes` in one remote transaction (bounded in time) that is then rolled back; returns the
    /// readings they found rejected.
    fn probe_remotely<F>(&self, context: String, probes: F) -> Result<Vec<Rejected>>
    where
        F: FnOnce(&mut postgres::Transaction<'_>, &Target, &str, &mut Vec<Rejected>) -> Result<()> + Send + 'static,
    {
        let target = self.conns.remote.name().clone();
        self.conns.call_bounded(Side::Remote, &context.clone(), move |c| {
            let mut bad = Vec::new();
            let mut tx = c.transaction().map_err(|e| target.err(&context, e))?;
            probes(&mut tx, &target, &context, &mut bad)?;
            tx.rollback().map_err(|e| target.err(&context, e))?;
            Ok(bad)
        })
    }

    /// Moves the bad readings into sync_quarantine and narrows the batch to the good ones, in one local
    /// statement. The batch keeps its id: the failed statement proved that id absent from the ledger.
    /// Returns how many moved, and the batch narrowed to its good readings.
    pub(super) fn quarantine_rejected(
        &self,
        s: &mut Session,
        batch: &ClaimedBatch,
        bad: Vec<Rejected>,
    ) -> Result<(u64, ClaimedBatch)> {
        let bad_idx: HashSet<usize> = bad.iter().map(|(i, _, _)| *i).collect();
        let good = batch.without(&bad_idx);
        let good_ids: Vec<i64> = good.readings.iter().map(|r| r.id).collect();
        let rows: Vec<(i64, &str, Option<&str>)> = bad
            .iter()
            .map(|(i, e, state)| (batch.readings[*i].id, e.as_str(), state.as_deref()))
            .collect();
        let moved = s.quarantine(&batch.batch_id, &rows, &good_ids)?;
        for (i, err, _) in &bad {
            let r = &batch.readings[*i];
            log::warn!("upload: reading {} (meter {:?}) quarantined: {err}", r.id, r.meter_id);
        }
        Ok((moved, good))
    }
}

/// The probe's text and the source id it writes (as `$6`, when the text names a source column).
struct ProbeStatement {
    text: String,
    source_id: String,
}

/// Inserts `readings[from..to]` under a savepoint of `tx`; on an error that may be about the readings (a
/// data error, or Citus's XX000 for a worker's rejection: `at_fault`) rolls the savepoint back and bisects,
/// recording single rejected readings in `bad`. Any other error ends the probing.
#[allow(clippy::too_many_arguments)]
fn probe(
    tx: &mut postgres::Transaction<'_>,
    p: &ProbeStatement,
    at_fault: fn(&postgres::Error) -> bool,
    db: &Target,
    context: &str,
    readings: &[QueuedReading],
    from: usize,
    to: usize,
    bad: &mut Vec<Rejected>,
) -> Result<()> {
    if from >= to {
        return Ok(());
    }
    let mut sp = tx.savepoint("sync_probe").map_err(|e| db.err(context, e))?;
    let cols = Columns::of(&readings[from..to]);
    let params: [(&(dyn ToSql + Sync), Type); 6] = [
        (&cols.meter, Type::TEXT_ARRAY),
        (&cols.ts, Type::TIMESTAMP_ARRAY),
        (&cols.value, Type::NUMERIC_ARRAY),
        (&cols.unit, Type::TEXT_ARRAY),
        (&cols.metadata, Type::JSONB_ARRAY),
        (&p.source_id, Type::TEXT),
    ];
    let used = if p.text.contains("$6") { 6 } else { 5 };
    match sp.query_typed(&p.text, &params[..used]) {
        Ok(_) => sp.commit().map_err(|e| db.err(context, e)),
        Err(e) if at_fault(&e) => {
            sp.rollback().map_err(|e| db.err(context, e))?;
            if to - from == 1 {
                let state = e.code().map(|c| c.code().to_string());
                bad.push((from, describe_pg_error(&e), state));
                Ok(())
            } else {
                let mid = from + (to - from) / 2;
                probe(tx, p, at_fault, db, context, readings, from, mid, bad)?;
                probe(tx, p, at_fault, db, context, readings, mid, to, bad)
            }
        }
        Err(e) => Err(db.err(context, e)),
    }
}
