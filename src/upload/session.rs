//! The local side of a drain: one connection holding the upload lock, and the local statements on it.
//!
//! Owns: [`Session`] (the connection, taken on first use with [`LockKey::Drain`] held by an RAII
//! [`AdvisoryLock`], its prepared statements, and dropping it after trouble) and the protocol's local steps:
//! claim, finish, finish-and-claim, the pending batches and their rows, the control readings of the poison
//! probe, the quarantine statement and failure notes. Does not own: the statement texts (sql.rs), the remote
//! side (uplink.rs), the order of steps (drain.rs).

use std::collections::HashMap;

use postgres::types::{ToSql, Type};
use postgres::{Client, Statement};

use super::batch::{batch_from_rows, reading_from_row, ClaimCursor, ClaimedBatch, QueuedReading};
use super::sql;
use super::validate::{record_invalid, Check, Validation};
use super::wire::{Timestamp, Wire};
use crate::db::{AdvisoryLock, ConnectionManager, LockKey, Side};
use crate::error::{Error, Result};

/// Where a claim starts: the start of the queue, after a key (keyset paging), or the start of the queue for
/// only the ids above one (sql::CLAIM_LATE).
#[derive(Clone, Debug)]
enum ClaimStart {
    Start,
    After(ClaimCursor),
    Above(i64),
}

/// The local connection one drain holds, with the upload lock. If it breaks it is dropped and the next use
/// takes a fresh one (retried with backoff by `ConnectionManager::get`) and locks again. Remote statements
/// take a pooled connection each, through `ConnectionManager::call_bounded`.
pub(super) struct Session<'a> {
    conns: &'a ConnectionManager,
    /// Statements prepared on `local`, by their SQL (the steady drain's statements are parsed and planned once
    /// per connection, not per batch). Declared first: dropped before the connection.
    prepared: HashMap<&'static str, Statement>,
    /// The connection with the upload lock; dropping it releases the lock before the pool gets it back.
    local: Option<AdvisoryLock>,
    /// UPLOAD_CONFIRM_SECONDS > 0: FINISH marks the batch acknowledged and its readings synchronized instead of
    /// deleting them (confirm.rs deletes them later).
    confirm: bool,
    /// UPLOAD_VALIDATE: the claims quarantine the readings that fail a check (None: the unvalidated claims).
    validation: Option<Validation>,
    /// Readings the claims quarantined since [`Session::take_invalid`] was last asked.
    invalid: u64,
}

impl<'a> Session<'a> {
    pub fn new(conns: &'a ConnectionManager) -> Session<'a> {
        Session {
            conns,
            prepared: HashMap::new(),
            local: None,
            confirm: false,
            validation: None,
            invalid: 0,
        }
    }

    /// With UPLOAD_VALIDATE's checks (None: no validation).
    pub fn validating(mut self, validation: Option<Validation>) -> Session<'a> {
        self.validation = validation;
        self
    }

    /// Readings the claims quarantined for failing a check since this was last asked.
    pub fn take_invalid(&mut self) -> u64 {
        std::mem::take(&mut self.invalid)
    }

    /// With a confirmation window: FINISH marks instead of deleting.
    pub fn confirming(mut self, on: bool) -> Session<'a> {
        self.confirm = on;
        self
    }

    /// Runs a local statement, prepared once per connection. `context` names it in errors.
    pub fn query(
        &mut self,
        sql: &'static str,
        types: &[Type],
        params: &[&(dyn ToSql + Sync)],
        context: &dyn Fn() -> String,
    ) -> Result<Vec<postgres::Row>> {
        let db = &self.conns.local;
        let statement = match self.prepared.get(sql) {
            Some(st) => st.clone(),
            None => {
                let st = self
                    .local()?
                    .prepare_typed(sql, types)
                    .map_err(|e| db.err(context(), e))?;
                self.prepared.insert(sql, st.clone());
                st
            }
        };
        let c = self.local()?;
        c.query(&statement, params).map_err(|e| db.err(context(), e))
    }

    /// The locked connection, taken (and locked) first if there is none. [`Error::Busy`] when another
    /// process drains this database.
    pub fn local(&mut self) -> Result<&mut Client> {
        let lock = match self.local.take() {
            Some(lock) => lock,
            None => {
                let db = &self.conns.local;
                AdvisoryLock::try_acquire(self.conns.get(Side::Local)?, LockKey::Drain, db.name())?
            }
        };
        Ok(self.local.insert(lock))
    }

    /// After an error: drops the local connection if it is closed or, after a transient local error, may be
    /// half-broken.
    pub fn forget_broken(&mut self, e: &Error) {
        let local_trouble = e.side() == Some(Side::Local);
        if self
            .local
            .as_ref()
            .is_some_and(|c| c.is_closed() || (local_trouble && e.is_transient()))
        {
            self.prepared.clear();
            // Releases the upload lock before the connection goes back to the pool (the guard's drop).
            self.local = None;
        }
    }

    // ----- The local statements. -----

    /// CLAIM of the next `batch_size` readings after `after` (from the start of the queue when None).
    pub fn claim(&mut self, batch_size: u32, after: Option<&ClaimCursor>) -> Result<Option<ClaimedBatch>> {
        let start = after.map_or(ClaimStart::Start, |k| ClaimStart::After(k.clone()));
        self.claim_from(batch_size, start)
    }

    /// CLAIM from the start of the queue of only the readings with an id above `above` (sql::CLAIM_LATE).
    pub fn claim_late(&mut self, batch_size: u32, above: i64) -> Result<Option<ClaimedBatch>> {
        self.claim_from(batch_size, ClaimStart::Above(above))
    }

    fn claim_from(&mut self, batch_size: u32, start: ClaimStart) -> Result<Option<ClaimedBatch>> {
        if let Some(v) = self.validation.clone() {
            return self.claim_checked(batch_size, start, &v);
        }
        let limit = i64::from(batch_size);
        let context = || format!("claiming the next batch of up to {batch_size} readings");
        let rows = match start {
            ClaimStart::Start => self.query(sql::CLAIM_FIRST, &[Type::INT8], &[&limit], &context)?,
            ClaimStart::After(k) => self.query(
                sql::CLAIM_NEXT,
                &[Type::INT8, Type::TIMESTAMP, Type::INT8],
                &[&limit, &k.timestamp, &k.id],
                &context,
            )?,
            ClaimStart::Above(id) => {
                self.query(sql::CLAIM_LATE, &[Type::INT8, Type::INT8], &[&limit, &id], &context)?
            }
        };
        batch_from_rows(&rows, 0).map_err(|e| self.conns.local.err(context(), e))
    }

    /// The largest reading id now (queued or not); None when the table is empty.
    pub fn max_reading_id(&mut self) -> Result<Option<i64>> {
        let rows = self.query(sql::MAX_READING_ID, &[], &[], &|| {
            "reading the largest reading id".to_string()
        })?;
        Ok(rows.first().and_then(|r| r.get(0)))
    }

    /// FINISH: returns (batch rows finished, readings deleted). With a confirmation window the batch is
    /// acknowledged and its readings marked instead (none deleted).
    pub fn finish(&mut self, batch_id: &str) -> Result<(i64, u64)> {
        if self.confirm {
            return self.acknowledge(batch_id).map(|batches| (batches, 0));
        }
        let context = || format!("deleting the uploaded readings of batch {batch_id}");
        let rows = self.query(sql::FINISH, &[Type::TEXT], &[&batch_id], &context)?;
        let (batches, readings): (i64, i64) = rows.first().map_or((0, 0), |r| (r.get(0), r.get(1)));
        Ok((batches, readings.max(0) as u64))
    }

    /// The batch row acknowledged now (the window starts) and its readings marked synchronized. Returns the
    /// batch rows changed.
    pub fn acknowledge(&mut self, batch_id: &str) -> Result<i64> {
        let context = || format!("marking the uploaded readings of batch {batch_id} as awaiting confirmation");
        let rows = self.query(sql::MARK, &[Type::TEXT], &[&batch_id], &context)?;
        Ok(rows.first().map_or(0, |r| r.get(0)))
    }

    /// The batches awaiting confirmation for at least `window`, oldest claim first, at most `limit`: (id, when
    /// first acknowledged).
    pub fn due_for_confirmation(&mut self, window: std::time::Duration, limit: i64) -> Result<Vec<(String, String)>> {
        let secs = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
        let context = || "reading the batches due for confirmation".to_string();
        let rows = self.query(
            sql::DUE_FOR_CONFIRMATION,
            &[Type::INT8, Type::INT8],
            &[&secs, &limit],
            &context,
        )?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// CONFIRM: deletes the batches `ids` (awaiting confirmation) and exactly their readings, in one statement.
    /// Returns the readings deleted.
    pub fn confirm(&mut self, ids: &[String]) -> Result<u64> {
        let context = || format!("deleting {} confirmed batch(es) and their readings", ids.len());
        let rows = self.query(sql::CONFIRM, &[Type::TEXT_ARRAY], &[&ids], &context)?;
        let deleted: i64 = rows.first().map_or(0, |r| r.get(1));
        Ok(deleted.max(0) as u64)
    }

    /// Every local batch id, pending or awaiting confirmation.
    pub fn batch_ids(&mut self) -> Result<Vec<String>> {
        let rows = self.query(sql::BATCH_IDS, &[], &[], &|| "reading the upload batch ids".to_string())?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// FINISH of `batch_id` and CLAIM after `after` in one statement: the readings deleted and the next batch,
    /// if any.
    pub fn finish_and_claim(
        &mut self,
        batch_id: &str,
        batch_size: u32,
        after: &ClaimCursor,
    ) -> Result<(u64, Option<ClaimedBatch>)> {
        let limit = i64::from(batch_size);
        let context = || format!("deleting the uploaded readings of batch {batch_id} and claiming the next batch");
        let validation = self.validation.clone();
        let statement = match (self.confirm, validation.is_some()) {
            (true, false) => sql::MARK_AND_CLAIM,
            (false, false) => sql::FINISH_AND_CLAIM,
            (true, true) => sql::MARK_AND_CLAIM_CHECKED,
            (false, true) => sql::FINISH_AND_CLAIM_CHECKED,
        };
        let rows = match &validation {
            None => self.query(
                statement,
                &[Type::INT8, Type::TIMESTAMP, Type::INT8, Type::TEXT],
                &[&limit, &after.timestamp, &after.id, &batch_id],
                &context,
            )?,
            Some(v) => {
                let (types, params) = with_checks(
                    vec![Type::INT8, Type::TIMESTAMP, Type::INT8, Type::TEXT],
                    vec![&limit, &after.timestamp, &after.id, &batch_id],
                    v,
                );
                self.query(statement, &types, &params, &context)?
            }
        };
        let (finished, deleted): (i64, i64) = rows.first().map_or((0, 0), |r| (r.get(0), r.get(1)));
        if finished != 1 {
            log::warn!("upload: batch {batch_id} was no longer pending when it was finished");
        }
        // Marked readings are not deleted (yet).
        let deleted = if self.confirm { 0 } else { deleted.max(0) as u64 };
        let next = match &validation {
            None => batch_from_rows(&rows, 2).map_err(|e| self.conns.local.err(context(), e))?,
            Some(v) => match self
                .checked_rows(&rows, 2)
                .map_err(|e| self.conns.local.err(context(), e))?
            {
                Checked::Batch(b) => Some(b),
                Checked::Nothing => None,
                Checked::AllFailed(last) => self.claim_checked(batch_size, ClaimStart::After(last), v)?,
            },
        };
        Ok((deleted, next))
    }

    /// CLAIM with UPLOAD_VALIDATE's checks: the readings taken that fail one are quarantined by the same
    /// statement; when every reading taken failed, the claim goes on after them (until a batch, the end of the
    /// queue, or shutdown).
    fn claim_checked(
        &mut self,
        batch_size: u32,
        mut start: ClaimStart,
        v: &Validation,
    ) -> Result<Option<ClaimedBatch>> {
        let limit = i64::from(batch_size);
        let context = || format!("claiming (and validating) the next batch of up to {batch_size} readings");
        loop {
            let (statement, types, params): (_, _, Vec<&(dyn ToSql + Sync)>) = match &start {
                ClaimStart::Start => (sql::CLAIM_FIRST_CHECKED, vec![Type::INT8], vec![&limit]),
                ClaimStart::After(k) => (
                    sql::CLAIM_NEXT_CHECKED,
                    vec![Type::INT8, Type::TIMESTAMP, Type::INT8],
                    vec![&limit, &k.timestamp, &k.id],
                ),
                ClaimStart::Above(id) => (sql::CLAIM_LATE_CHECKED, vec![Type::INT8, Type::INT8], vec![&limit, id]),
            };
            let (types, params) = with_checks(types, params, v);
            let rows = self.query(statement, &types, &params, &context)?;
            match self
                .checked_rows(&rows, 0)
                .map_err(|e| self.conns.local.err(context(), e))?
            {
                Checked::Batch(b) => return Ok(Some(b)),
                Checked::Nothing => return Ok(None),
                // The queue stays; the next drain goes on from here.
                Checked::AllFailed(_) if self.conns.shutdown.is_requested() => return Ok(None),
                Checked::AllFailed(last) => start = ClaimStart::After(last),
            }
        }
    }

    /// The rows of a validated claim from `offset` (the per-check counts, the last key taken, then the batch):
    /// counts the quarantined readings (here and for /metrics) and logs them.
    fn checked_rows(&mut self, rows: &[postgres::Row], offset: usize) -> std::result::Result<Checked, postgres::Error> {
        let Some(first) = rows.first() else {
            return Ok(Checked::Nothing);
        };
        let counts: Vec<i64> = first.get::<_, Option<Vec<i64>>>(offset).unwrap_or_default();
        let n = record_invalid(&counts);
        self.invalid += n;
        if n > 0 {
            let per: Vec<String> = Check::ALL
                .iter()
                .zip(&counts)
                .filter(|(_, &k)| k > 0)
                .map(|(c, k)| format!("{c}: {k}"))
                .collect();
            log::warn!(
                "upload: {n} reading(s) failed validation and were quarantined ({}); `sync-process quarantine \
                 list` shows why",
                per.join(", ")
            );
        }
        let last: Option<Wire<Timestamp>> = first.try_get(offset + 1)?;
        let last_id: Option<i64> = first.try_get(offset + 2)?;
        Ok(match (batch_from_rows(rows, offset + 3)?, last, last_id) {
            (Some(b), _, _) => Checked::Batch(b),
            (None, Some(timestamp), Some(id)) if n > 0 => Checked::AllFailed(ClaimCursor { timestamp, id }),
            _ => Checked::Nothing,
        })
    }

    /// (batch id, number of reading ids), oldest claim first.
    pub fn pending(&mut self) -> Result<Vec<(String, i32)>> {
        let rows = self.query(sql::PENDING, &[], &[], &|| {
            "reading the claimed upload batches".to_string()
        })?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// A pending batch with its readings, in claim order.
    pub fn load_batch(&mut self, batch_id: &str) -> Result<ClaimedBatch> {
        let context = || format!("reading the readings of claimed batch {batch_id}");
        let rows = self.query(sql::BATCH_ROWS, &[Type::TEXT], &[&batch_id], &context)?;
        let readings = rows
            .iter()
            .map(|r| reading_from_row(r, 0))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.conns.local.err(context(), e))?;
        Ok(ClaimedBatch {
            batch_id: batch_id.to_string(),
            readings,
            row_bytes: 0,
        })
    }

    /// A few queued readings from outside `batch`.
    pub fn control_readings(&mut self, batch: &ClaimedBatch) -> Result<Vec<QueuedReading>> {
        let ids: Vec<i64> = batch.readings.iter().map(|r| r.id).collect();
        let context = || format!("reading control readings for rejected batch {}", batch.batch_id);
        let rows = self.query(sql::CONTROL_READINGS, &[Type::INT8_ARRAY], &[&ids], &context)?;
        rows.iter()
            .map(|r| reading_from_row(r, 0))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.conns.local.err(context(), e))
    }

    /// Moves the readings `bad` (id, error text, SQLSTATE) of `batch_id` into the quarantine and narrows the
    /// batch row to `good_ids`, in one statement. Returns how many moved.
    pub fn quarantine(&mut self, batch_id: &str, bad: &[(i64, &str, Option<&str>)], good_ids: &[i64]) -> Result<u64> {
        let db = &self.conns.local;
        let ids: Vec<i64> = bad.iter().map(|(id, _, _)| *id).collect();
        let errors: Vec<&str> = bad.iter().map(|(_, e, _)| *e).collect();
        let states: Vec<Option<&str>> = bad.iter().map(|(_, _, s)| *s).collect();
        let note = format!("{} reading(s) quarantined", ids.len());
        let row = self
            .local()?
            .query_typed_one(
                sql::QUARANTINE,
                &[
                    (&batch_id, Type::TEXT),
                    (&ids, Type::INT8_ARRAY),
                    (&errors, Type::TEXT_ARRAY),
                    (&states, Type::TEXT_ARRAY),
                    (&good_ids, Type::INT8_ARRAY),
                    (&note, Type::TEXT),
                ],
            )
            .map_err(|e| db.err(format!("quarantining {} reading(s) of batch {batch_id}", ids.len()), e))?;
        let moved: i64 = row.get(0);
        Ok(moved.max(0) as u64)
    }

    /// Records a failure on the batch row for operators (best effort: the error itself is returned anyway).
    pub fn note_failure(&mut self, batch_id: &str, msg: &str) {
        let db = &self.conns.local;
        let r = self.local().and_then(|c| {
            c.query_typed(sql::NOTE_FAILURE, &[(&batch_id, Type::TEXT), (&msg, Type::TEXT)])
                .map_err(|e| db.err(format!("recording the failure of batch {batch_id}"), e))
        });
        if let Err(e) = r {
            log::warn!("upload: {e}");
        }
    }
}

/// What a validated claim found.
enum Checked {
    /// A batch of the readings that passed.
    Batch(ClaimedBatch),
    /// Nothing to claim after the key.
    Nothing,
    /// Readings were taken, and every one failed a check (quarantined): claim again after this key.
    AllFailed(ClaimCursor),
}

/// A validated statement's parameters: `types` and `params` of its own, then UPLOAD_VALIDATE's four (the
/// checks' names, the window's bounds in seconds and its text), which every validated claim takes last.
fn with_checks<'p>(
    mut types: Vec<Type>,
    mut params: Vec<&'p (dyn ToSql + Sync)>,
    v: &'p Validation,
) -> (Vec<Type>, Vec<&'p (dyn ToSql + Sync)>) {
    types.extend([Type::TEXT_ARRAY, Type::INT8, Type::INT8, Type::TEXT]);
    params.extend([
        &v.checks as &(dyn ToSql + Sync),
        &v.window.lower_secs,
        &v.window.upper_secs,
        &v.window.text,
    ]);
    (types, params)
}
