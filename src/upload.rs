//! Upload Sync Manager: exactly-once store-and-forward of meter readings (local -> remote).
//!
//! Owns: the upload protocol and all of its SQL on both sides — claim (local), upload (remote, readings and
//! ledger row in ONE statement), finish (local), recover (by the remote ledger), poison isolation (probing
//! inside a rolled-back remote transaction, then quarantining locally), the drain loop with its time budget,
//! pacing and shutdown checks, and the ledger prune. This is the only module that writes remote readings.
//! Does not own: connections and backoff (db.rs, retry.rs), what counts as transient or data errors
//! (error.rs), the quarantine commands (quarantine.rs), scheduling cycles (scheduler.rs).
//!
//! The protocol (ARCHITECTURE.md, "The upload protocol", is the long form):
//! 1. CLAIM — one local statement takes the next BATCH_SIZE readings in (timestamp, id) order after a
//!    remembered key and records them as a batch (random uuid, the reading ids in upload order).
//! 2. UPLOAD — one remote statement inserts the ledger row (source, batch id) and the readings; it is its own
//!    transaction. A unique violation on the ledger key means the batch is already in.
//! 3. FINISH — one local statement deletes the batch row and exactly the readings it names.
//! 4. RECOVER — at the start of a drain and after any error, every claimed batch is looked up in the ledger:
//!    present -> finish; absent -> upload the same rows under the same id, then finish.
//!
//! Values travel as text (`value::text`, `timestamp::text`, `metadata::text`) and are cast back remotely;
//! sessions pin `DateStyle=ISO, YMD`, so every value arrives verbatim. Nothing here parses a value.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::types::{ToSql, Type};
use postgres::{Client, Statement};
use serde::Serialize;

use crate::config::Config;
use crate::db::{Conn, ConnectionManager};

use crate::error::{describe_pg_error, pg_error_is_data_error, Error, Result, Side};

/// Ledger rows older than this, whose batch is not pending locally, are pruned.
pub const LEDGER_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The ledger of one remote and source is pruned at most this often (per process).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Session advisory lock held on the local database while a drain runs, so that two processes (a daemon and
/// an operator's `once`) never claim the same readings. ("sync" in ASCII, then 2; migrate.rs uses 1.)
const UPLOAD_LOCK: (i32, i32) = (0x7379_6e63, 2);

/// How often a batch whose probes found no bad reading is uploaded again before the part fails.
const MAX_UNEXPLAINED_REJECTIONS: u32 = 2;

/// The result of one upload part of a cycle (the contract's `uploadResult`). `duration` is in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadSyncResult {
    pub success: bool,
    pub records_uploaded: u64,
    pub records_deleted: u64,
    pub records_quarantined: u64,
    pub error: Option<String>,
    pub duration: u64,
    /// The drain stopped (budget spent or shutdown) while readings were still queued: run again at once.
    #[serde(skip)]
    pub backlog_remains: bool,
}

/// One queued reading as it travels: every value as PostgreSQL's own text form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedReading {
    pub id: i64,
    pub meter_id: String,
    /// `timestamp::text` under DateStyle ISO: `2024-01-02 03:04:05.123456`, `infinity`, `0044-03-15 00:00:00 BC`.
    pub timestamp: String,
    /// `value::text`: exact digits and scale, or `NaN`.
    pub value: String,
    pub unit: String,
    /// `metadata::text`; None is SQL NULL (JSON null is `Some("null")`).
    pub metadata: Option<String>,
}

/// A claimed batch: its id (also its key in the remote ledger) and its readings in upload order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedBatch {
    /// The batch uuid as text.
    pub batch_id: String,
    pub readings: Vec<QueuedReading>,
}

impl ClaimedBatch {
    /// The key to continue claiming after this batch.
    pub fn cursor(&self) -> Option<ClaimCursor> {
        self.readings.last().map(|r| ClaimCursor {
            timestamp: r.timestamp.clone(),
            id: r.id,
        })
    }

    pub fn len(&self) -> usize {
        self.readings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.readings.is_empty()
    }
}

/// The last claimed (timestamp, id): the next claim continues strictly after it (keyset paging, so a drain
/// never rescans the dead index entries its own deletes left behind).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimCursor {
    pub timestamp: String,
    pub id: i64,
}

/// What the remote statement of [`UploadSyncManager::upload_batch`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadOutcome {
    /// The readings and the ledger row were inserted (this many readings).
    Uploaded(u64),
    /// The ledger already holds this batch id: its readings are in; nothing was inserted.
    AlreadyPresent,
    /// With several batches in flight: the batch before it was not in (yet) when it ran, so nothing was
    /// inserted; it is sent again.
    OutOfTurn,
}

/// Counters of one drain.
#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    uploaded: u64,
    deleted: u64,
    quarantined: u64,
    batches: u64,
}

/// How a drain ended without error.
enum Drained {
    Empty,
    Stopped,
}

/// What one step of the drain did.
enum Step {
    /// A batch went up (it is finished locally by the next step's statement); the drain goes on.
    Delivered,
    /// The queue is empty.
    Empty,
    /// Shutdown or the budget: the batches in flight were finished and nothing else is claimed.
    Stopped,
}

/// Where the drain stands between steps. Cleared by recovery, which settles every pending batch.
#[derive(Default)]
struct Pipe {
    /// The key of the newest claimed batch: the next claim continues after it. None: from the start.
    cursor: Option<ClaimCursor>,
    /// Claimed ahead (while the batch before it was uploading), not yet sent.
    next: Option<ClaimedBatch>,
    /// Sent to the remote, not yet waited for, oldest first.
    in_flight: VecDeque<(Arc<ClaimedBatch>, InFlight)>,
    /// In the remote ledger, not yet deleted locally: the next local statement finishes it.
    uploaded: Option<String>,
}

impl Pipe {
    /// Sends `batch` after the batches in flight (chained to the newest of them when several may overlap).
    fn send(&mut self, up: &mut Uplink, batch: ClaimedBatch) -> Result<()> {
        let batch = Arc::new(batch);
        let order = match self.in_flight.back() {
            Some((before, _)) => Order::After(before.batch_id.clone()),
            None => up.alone(),
        };
        let sent = up.send(Arc::clone(&batch), order)?;
        self.in_flight.push_back((batch, sent));
        Ok(())
    }
}

/// What the probes of a rejected batch found.
enum Isolation {
    /// These readings (index into the batch, error text, SQLSTATE) are rejected on their own.
    Bad(Vec<(usize, String, Option<String>)>),
    /// Every reading of a batch of several is rejected: a schema mismatch, not poison.
    Storm(String),
    /// Every part passes on its own: the rejection is not explained by any reading.
    Unexplained,
}

pub struct UploadSyncManager<'a> {
    pub conns: &'a ConnectionManager,
    pub cfg: &'a Config,
}

impl<'a> UploadSyncManager<'a> {
    pub fn new(conns: &'a ConnectionManager, cfg: &'a Config) -> UploadSyncManager<'a> {
        UploadSyncManager { conns, cfg }
    }

    /// Recovers claimed batches, then drains the queue batch after batch until it is empty, shutdown is
    /// requested, or `budget` is spent. Never panics on database trouble: a failure is in the result.
    pub fn sync_readings(&self, budget: Duration) -> UploadSyncResult {
        let started = Instant::now();
        let mut stats = Stats::default();
        let outcome = self.drain(started, budget, &mut stats);
        let duration = started.elapsed();
        let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        let mut result = UploadSyncResult {
            success: outcome.is_ok(),
            records_uploaded: stats.uploaded,
            records_deleted: stats.deleted,
            records_quarantined: stats.quarantined,
            error: None,
            duration: ms,
            backlog_remains: false,
        };
        let summary = format!(
            "{} readings uploaded, {} deleted locally, {} quarantined, {} batches in {ms} ms",
            stats.uploaded, stats.deleted, stats.quarantined, stats.batches
        );
        match outcome {
            // The scheduler logs the part's result at info (Property 11); this adds the batch count.
            Ok(Drained::Empty) => log::debug!("upload: {summary}; queue empty"),
            Ok(Drained::Stopped) => {
                result.backlog_remains = self.backlog_exists();
                let why = if self.conns.shutdown.is_requested() {
                    "shutdown requested"
                } else {
                    "time budget spent"
                };
                log::info!(
                    "upload: {summary}; stopped ({why}){}",
                    if result.backlog_remains {
                        ", backlog remains"
                    } else {
                        ""
                    }
                );
            }
            Err(e) => {
                log::error!("upload failed ({} error) after {summary}: {e}", e.kind());
                result.error = Some(e.to_string());
            }
        }
        if result.success && !self.conns.shutdown.is_requested() && self.prune_due() {
            match self.prune_ledger(LEDGER_RETENTION) {
                Ok(n) => log::log!(
                    if n > 0 { log::Level::Info } else { log::Level::Debug },
                    "upload: pruned {n} ledger rows older than {} days",
                    LEDGER_RETENTION.as_secs() / 86_400
                ),
                Err(e) => log::warn!("upload: pruning the ledger failed ({} error): {e}", e.kind()),
            }
        }
        result
    }

    /// Readings waiting locally (claimed or not), not counting quarantined ones. A row that another program
    /// marked `is_synchronized = true` (the design's flag; this daemon deletes instead) is not queued.
    pub fn queue_size(&self) -> Result<i64> {
        let db = &self.conns.local;
        let mut c = self.conns.get(Side::Local)?;
        let row = c
            .query_typed_one(
                "SELECT count(*) FROM meter_readings WHERE is_synchronized IS NOT TRUE",
                &[],
            )
            .map_err(|e| db.err("counting the queue", e))?;
        Ok(row.get(0))
    }

    /// Readings in the local quarantine.
    pub fn quarantined_count(&self) -> Result<i64> {
        let db = &self.conns.local;
        let mut c = self.conns.get(Side::Local)?;
        let row = c
            .query_typed_one("SELECT count(*) FROM sync_quarantine", &[])
            .map_err(|e| db.err("counting quarantined readings", e))?;
        Ok(row.get(0))
    }

    /// Age of the oldest queued reading (now - its created_at), None when the queue is empty.
    pub fn oldest_pending_age(&self) -> Result<Option<Duration>> {
        let db = &self.conns.local;
        let mut c = self.conns.get(Side::Local)?;
        // An age, not a reading: float seconds are fine here.
        let row = c
            .query_typed_one(
                "SELECT extract(epoch FROM localtimestamp - min(created_at))::float8 FROM meter_readings \
                 WHERE is_synchronized IS NOT TRUE",
                &[],
            )
            .map_err(|e| db.err("reading the age of the oldest queued reading", e))?;
        let secs: Option<f64> = row.get(0);
        Ok(secs.map(|s| Duration::from_secs_f64(if s.is_finite() { s.max(0.0) } else { 0.0 })))
    }

    // ----- The protocol's steps, one statement each. Public so that tests can stop between them. -----

    /// CLAIM: records the next BATCH_SIZE readings after `after` (from the start of the queue when None) as a
    /// new batch and returns it, or None when there is nothing after `after`. One local statement. The caller
    /// must not claim while another batch overlapping `after` is pending (the drain claims only after
    /// recovery, and continues strictly after the last claimed key).
    pub fn claim_batch(&self, after: Option<&ClaimCursor>) -> Result<Option<ClaimedBatch>> {
        claim(&mut Session::new(self.conns), self.cfg.batch_size, after)
    }

    /// UPLOAD: the one remote statement (ledger row + readings, atomic). No retry, no poison handling: a data
    /// error comes back as the error (`is_data_error()`).
    pub fn upload_batch(&self, batch: &ClaimedBatch) -> Result<UploadOutcome> {
        let mut up = Uplink::new(self.conns, self.remote_name(), &self.cfg.source_id, 1);
        let sent = up.send(Arc::new(batch.clone()), Order::Serial)?;
        up.wait(sent)
    }

    /// FINISH: deletes the batch row and exactly the readings it names, in one local statement. Returns the
    /// readings deleted.
    pub fn finish_batch(&self, batch_id: &str) -> Result<u64> {
        finish(&mut Session::new(self.conns), batch_id).map(|(_, deleted)| deleted)
    }

    /// FINISH of `batch_id` and CLAIM of the next batch after `after`, in one local statement (one commit
    /// instead of two per batch). Returns the readings deleted and the new batch, if any.
    pub fn finish_and_claim_batch(&self, batch_id: &str, after: &ClaimCursor) -> Result<(u64, Option<ClaimedBatch>)> {
        finish_and_claim(&mut Session::new(self.conns), batch_id, self.cfg.batch_size, after)
    }

    /// The claimed batches still pending locally (oldest first), by id.
    pub fn pending_batches(&self) -> Result<Vec<String>> {
        Ok(pending(&mut Session::new(self.conns))?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// Deletes this source's ledger rows older than `older_than` whose batch is not pending locally.
    pub fn prune_ledger(&self, older_than: Duration) -> Result<u64> {
        // Under the upload lock, so that no batch is claimed between reading the pending ids and the delete.
        let mut session = Session::new(self.conns);
        let keep: Vec<String> = pending(&mut session)?.into_iter().map(|(id, _)| id).collect();
        let secs = i64::try_from(older_than.as_secs()).unwrap_or(i64::MAX);
        let (name, source) = (self.remote_name(), self.cfg.source_id.clone());
        self.conns
            .call_bounded(Side::Remote, "pruning the upload ledger", move |c| {
                let rows = c
                    .query_typed(
                        sql::PRUNE,
                        &[(&source, Type::TEXT), (&secs, Type::INT8), (&keep, Type::TEXT_ARRAY)],
                    )
                    .map_err(|e| name.err("pruning the upload ledger", e))?;
                Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0)).max(0) as u64)
            })
    }

    // ----- The drain. -----

    fn drain(&self, started: Instant, budget: Duration, stats: &mut Stats) -> Result<Drained> {
        let mut session = Session::new(self.conns);
        let mut uplink = Uplink::new(
            self.conns,
            self.remote_name(),
            &self.cfg.source_id,
            self.cfg.upload_batches_in_flight,
        );
        let mut needs_recovery = true;
        let mut pipe = Pipe::default();
        let what = format!(
            "uploading readings to the remote database {}",
            self.conns.remote.target()
        );
        let stop = || self.conns.shutdown.is_requested() || started.elapsed() >= budget;
        loop {
            // Each batch gets the full retry schedule; every retry starts with recovery.
            let step = self.conns.retry_query(&what, || {
                let r = (|| {
                    if needs_recovery {
                        pipe = Pipe::default();
                        self.recover(&mut session, &mut uplink, stats)?;
                        needs_recovery = false;
                    }
                    self.step(&mut session, &mut uplink, &mut pipe, &stop, stats)
                })();
                if let Err(e) = &r {
                    // Uploads still in flight are waited for (bounded), so that recovery does not race them;
                    // not when the remote went silent or shutdown is under way (that would add a wait per batch
                    // in flight): they are abandoned, and the ledger key settles whichever commits first.
                    if matches!(e, Error::Shutdown | Error::Stalled { .. }) {
                        pipe.in_flight.clear();
                        uplink.abandon();
                    }
                    for (_, sent) in pipe.in_flight.drain(..) {
                        let _ = uplink.wait(sent);
                    }
                    needs_recovery = true;
                    session.forget_broken(e);
                }
                r
            })?;
            match step {
                Step::Empty => return Ok(Drained::Empty),
                Step::Stopped => return Ok(Drained::Stopped),
                Step::Delivered => self.pace(started, stats.uploaded),
            }
        }
    }

    /// Delivers one batch, pipelined: while the remote uploads the oldest batch sent (on the uplink's
    /// thread), the local database finishes the batch uploaded before it and claims the next one, in one
    /// statement. With UPLOAD_BATCHES_IN_FLIGHT = 1 uploads are serial on one connection, so at most three
    /// batches are pending locally: one uploaded and not yet deleted, one uploading, one claimed ahead. With N
    /// in flight, N are uploading, chained in claim order on the remote. Recovery settles any of them after an
    /// error.
    fn step(
        &self,
        s: &mut Session,
        up: &mut Uplink,
        pipe: &mut Pipe,
        stop: &dyn Fn() -> bool,
        stats: &mut Stats,
    ) -> Result<Step> {
        // Batches already claimed are delivered first (the batches in flight complete).
        if pipe.in_flight.is_empty() {
            let batch = match pipe.next.take() {
                Some(b) => b,
                None if stop() => {
                    self.finish_uploaded(s, pipe, stats)?;
                    return Ok(Step::Stopped);
                }
                None => match self.claim_after(s, pipe, stats)? {
                    Some(b) => b,
                    None => return Ok(Step::Empty),
                },
            };
            pipe.send(up, batch)?;
        }
        while pipe.in_flight.len() < up.width() && !stop() {
            let batch = match pipe.next.take() {
                Some(b) => b,
                None => match self.claim_ahead(s, pipe, stats)? {
                    Some(b) => b,
                    None => break,
                },
            };
            pipe.send(up, batch)?;
        }
        // Meanwhile, locally: finish the batch uploaded last and claim the one after the newest claimed.
        let local = if pipe.next.is_none() && !stop() {
            self.claim_ahead(s, pipe, stats)
        } else {
            Ok(None)
        };
        let Some((batch, sent)) = pipe.in_flight.pop_front() else {
            return Err(Error::Other("upload: no batch in flight".into()));
        };
        let outcome = up.wait(sent);
        if matches!(outcome, Ok(UploadOutcome::OutOfTurn)) {
            // The chain broke: the batch ahead of this one was not in when it ran (the site's very first chained
            // upload, a rejected batch, or the network delivered this one first). Every batch still in flight
            // was chained to this one, so they come back out of turn too, having inserted nothing.
            // Wait for them all, then recovery sends the pending batches again one by one in claim order (each
            // the new chain head), and the pipeline starts afresh. (Sending them all again at once was measured
            // to break again as often as not: batches sent within a millisecond on different connections can
            // reach the server in either order.)
            for (_, sent) in pipe.in_flight.drain(..) {
                let _ = up.wait(sent);
            }
            local?;
            *pipe = Pipe::default();
            log::debug!(
                "upload: batch {} ran out of turn; settling the batches in flight again",
                batch.batch_id
            );
            self.recover(s, up, stats)?;
            return Ok(Step::Delivered);
        }
        let batch = self.upload_part(s, up, batch, Some(outcome), stats)?;
        pipe.next = local?;
        // The batch uploaded before this one is still pending only where no claim ran (the end of the queue).
        self.finish_uploaded(s, pipe, stats)?;
        pipe.uploaded = Some(batch.batch_id.clone());
        stats.batches += 1;
        if pipe.next.is_none() && pipe.in_flight.is_empty() && stop() {
            self.finish_uploaded(s, pipe, stats)?;
            return Ok(Step::Stopped);
        }
        Ok(Step::Delivered)
    }

    /// The next batch after the newest claimed one (None at the end of the queue), finishing the batch
    /// uploaded last in the same statement. Sets the cursor to the new batch's key.
    fn claim_ahead(&self, s: &mut Session, pipe: &mut Pipe, stats: &mut Stats) -> Result<Option<ClaimedBatch>> {
        let Some(after) = pipe.cursor.take() else {
            return Ok(None);
        };
        let claimed = match pipe.uploaded.take() {
            Some(prev) => {
                let t0 = Instant::now();
                let (deleted, next) = finish_and_claim(s, &prev, self.cfg.batch_size, &after)?;
                self.finished(&prev, deleted, t0, stats);
                next
            }
            None => claim(s, self.cfg.batch_size, Some(&after))?,
        };
        // At the end of the queue the cursor stays cleared: the next claim starts from the beginning.
        pipe.cursor = claimed.as_ref().and_then(ClaimedBatch::cursor);
        Ok(claimed)
    }

    /// The next batch when nothing is in flight: after the cursor, else from the start of the queue (readings
    /// that arrived older than the cursor wait behind it). A claim from the start must overlap nothing
    /// pending, so the uploaded batch is finished first.
    fn claim_after(&self, s: &mut Session, pipe: &mut Pipe, stats: &mut Stats) -> Result<Option<ClaimedBatch>> {
        if let Some(b) = self.claim_ahead(s, pipe, stats)? {
            return Ok(Some(b));
        }
        self.finish_uploaded(s, pipe, stats)?;
        let claimed = claim(s, self.cfg.batch_size, None)?;
        pipe.cursor = claimed.as_ref().and_then(ClaimedBatch::cursor);
        Ok(claimed)
    }

    /// FINISH of the batch uploaded last, if it is still pending.
    fn finish_uploaded(&self, s: &mut Session, pipe: &mut Pipe, stats: &mut Stats) -> Result<()> {
        if let Some(prev) = pipe.uploaded.take() {
            let t0 = Instant::now();
            let (_, deleted) = finish(s, &prev)?;
            self.finished(&prev, deleted, t0, stats);
        }
        Ok(())
    }

    fn finished(&self, batch_id: &str, deleted: u64, t0: Instant, stats: &mut Stats) {
        stats.deleted += deleted;
        log::debug!(
            "upload: batch {batch_id} finished, {deleted} readings deleted locally in {} ms",
            t0.elapsed().as_millis()
        );
    }

    /// RECOVER: every pending batch is finished (already in the ledger) or uploaded again under its id.
    fn recover(&self, s: &mut Session, up: &mut Uplink, stats: &mut Stats) -> Result<()> {
        let pending = pending(s)?;
        if pending.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = pending.iter().map(|(id, _)| id.clone()).collect();
        let (name, source) = (self.remote_name(), self.cfg.source_id.clone());
        let present = self.conns.call_bounded(
            Side::Remote,
            "looking up claimed batches in the upload ledger",
            move |c| ledger_lookup(c, &name, &source, &ids),
        )?;
        log::info!(
            "upload: recovering {} claimed batch(es): {} already in the remote ledger",
            pending.len(),
            present.len()
        );
        for (id, count) in pending {
            if present.contains(&id) {
                let (_, deleted) = finish(s, &id)?;
                stats.deleted += deleted;
                log::info!("upload: batch {id} ({count} readings) was already uploaded; deleted {deleted} locally");
            } else {
                let batch = load_batch(s, &id)?;
                log::info!(
                    "upload: batch {id} is not in the remote ledger; uploading its {} readings again",
                    batch.len()
                );
                let batch = self.upload_part(s, up, Arc::new(batch), None, stats)?;
                let (_, deleted) = finish(s, &batch.batch_id)?;
                stats.deleted += deleted;
                stats.batches += 1;
            }
        }
        Ok(())
    }

    /// UPLOAD one batch through the uplink (`first`: the outcome of a send already waited for), isolating
    /// poison readings on a data error (they are quarantined and the batch narrowed to the good ones, then
    /// sent again). Returns the batch as it now stands in the ledger.
    fn upload_part(
        &self,
        s: &mut Session,
        up: &mut Uplink,
        mut batch: Arc<ClaimedBatch>,
        mut first: Option<Result<UploadOutcome>>,
        stats: &mut Stats,
    ) -> Result<Arc<ClaimedBatch>> {
        let mut unexplained = 0u32;
        loop {
            let t0 = Instant::now();
            let outcome = match first.take() {
                Some(outcome) => outcome,
                None if batch.is_empty() => return Ok(batch),
                None => {
                    let sent = up.send(Arc::clone(&batch), up.alone())?;
                    up.wait(sent)
                }
            };
            match outcome {
                Ok(UploadOutcome::Uploaded(n)) => {
                    stats.uploaded += n;
                    log::debug!(
                        "upload: batch {} uploaded, {n} readings in {} ms",
                        batch.batch_id,
                        t0.elapsed().as_millis()
                    );
                    return Ok(batch);
                }
                Ok(UploadOutcome::AlreadyPresent) => {
                    log::info!(
                        "upload: batch {} is already in the remote ledger; finishing it",
                        batch.batch_id
                    );
                    return Ok(batch);
                }
                Ok(UploadOutcome::OutOfTurn) => {
                    // Sent again with nothing older in flight, it cannot be out of turn.
                    log::debug!(
                        "upload: batch {} ran before the batch ahead of it was in; sending it again",
                        batch.batch_id
                    );
                }
                Err(e) if e.is_data_error() => {
                    log::warn!(
                        "upload: the remote rejected batch {} ({} readings) for a data reason; isolating the bad \
                         readings: {e}",
                        batch.batch_id,
                        batch.len()
                    );
                    match self.isolate(s, &batch, &e)? {
                        Isolation::Bad(bad) => {
                            let (moved, good) = self.quarantine(s, &batch, bad)?;
                            stats.quarantined += moved;
                            batch = Arc::new(good);
                        }
                        Isolation::Storm(msg) => {
                            self.note_failure(s, &batch.batch_id, &msg);
                            return Err(Error::Other(msg));
                        }
                        Isolation::Unexplained => {
                            unexplained += 1;
                            if unexplained >= MAX_UNEXPLAINED_REJECTIONS {
                                self.note_failure(s, &batch.batch_id, &e.to_string());
                                return Err(e);
                            }
                        }
                    }
                }
                Err(e) => {
                    if !e.is_transient() {
                        self.note_failure(s, &batch.batch_id, &e.to_string());
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Finds the readings the remote rejects on their own: bisects the batch inside one remote transaction,
    /// each part under a savepoint (so later parts see earlier good ones, exactly as the real insert would),
    /// then rolls the whole transaction back. Changes nothing anywhere.
    ///
    /// When every reading of a batch of several is rejected, the batch alone cannot tell poison (these rows)
    /// from a remote that rejects everything (a schema change): a few queued readings from outside the batch
    /// are probed the same way. If one of them passes, the batch's readings are poison and are quarantined;
    /// if none does (or there is none), it is a storm and nothing is quarantined.
    fn isolate(&self, s: &mut Session, batch: &Arc<ClaimedBatch>, first: &Error) -> Result<Isolation> {
        let n = batch.len();
        let bad = if n == 1 {
            let text = match first {
                Error::Db { source, .. } => describe_pg_error(source),
                other => other.to_string(),
            };
            vec![(0, text, first.sqlstate().map(str::to_string))]
        } else {
            let context = format!("probing rejected batch {} ({n} readings)", batch.batch_id);
            let (name, b) = (self.remote_name(), Arc::clone(batch));
            self.conns.call_bounded(Side::Remote, &context.clone(), move |c| {
                let mut bad = Vec::new();
                let mut tx = c.transaction().map_err(|e| name.err(&context, e))?;
                let mid = n / 2;
                probe(&mut tx, &name, &context, &b.readings, 0, mid, &mut bad)?;
                probe(&mut tx, &name, &context, &b.readings, mid, n, &mut bad)?;
                tx.rollback().map_err(|e| name.err(&context, e))?;
                Ok(bad)
            })?
        };
        if bad.is_empty() {
            log::warn!(
                "upload: every part of batch {} passes on its own; uploading it again",
                batch.batch_id
            );
            return Ok(Isolation::Unexplained);
        }
        if bad.len() == n && n > 1 {
            let (controls, passed) = self.probe_controls(s, batch)?;
            if passed == 0 {
                return Ok(Isolation::Storm(format!(
                    "the remote database {} rejects every one of the {n} readings of batch {} for a data reason, and \
                     {controls} other queued reading(s) too (a schema change such as a new NOT NULL column?); nothing \
                     quarantined, the batch stays claimed; first error: {}",
                    self.conns.remote.target(),
                    batch.batch_id,
                    bad[0].1
                )));
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
        let ids: Vec<i64> = batch.readings.iter().map(|r| r.id).collect();
        let context = || format!("reading control readings for rejected batch {}", batch.batch_id);
        let rows = s.query(sql::CONTROL_READINGS, &[Type::INT8_ARRAY], &[&ids], &context)?;
        let controls: Vec<QueuedReading> = rows.iter().map(|r| reading_from_row(r, 0)).collect();
        if controls.is_empty() {
            return Ok((0, 0));
        }
        let n = controls.len();
        let context = format!("probing {n} control readings for rejected batch {}", batch.batch_id);
        let name = self.remote_name();
        let rejected = self.conns.call_bounded(Side::Remote, &context.clone(), move |c| {
            let mut bad = Vec::new();
            let mut tx = c.transaction().map_err(|e| name.err(&context, e))?;
            probe(&mut tx, &name, &context, &controls, 0, n, &mut bad)?;
            tx.rollback().map_err(|e| name.err(&context, e))?;
            Ok(bad.len())
        })?;
        Ok((n, n - rejected.min(n)))
    }

    /// Moves the bad readings into sync_quarantine and narrows the batch to the good ones, in one local
    /// statement. The batch keeps its id: the failed statement proved that id absent from the ledger.
    /// Returns how many moved, and the batch narrowed to its good readings.
    fn quarantine(
        &self,
        s: &mut Session,
        batch: &ClaimedBatch,
        bad: Vec<(usize, String, Option<String>)>,
    ) -> Result<(u64, ClaimedBatch)> {
        let db = &self.conns.local;
        let bad_idx: HashSet<usize> = bad.iter().map(|(i, _, _)| *i).collect();
        let ids: Vec<i64> = bad.iter().map(|(i, _, _)| batch.readings[*i].id).collect();
        let errors: Vec<&str> = bad.iter().map(|(_, e, _)| e.as_str()).collect();
        let states: Vec<Option<&str>> = bad.iter().map(|(_, _, s)| s.as_deref()).collect();
        let good: Vec<QueuedReading> = batch
            .readings
            .iter()
            .enumerate()
            .filter(|(i, _)| !bad_idx.contains(i))
            .map(|(_, r)| r.clone())
            .collect();
        let good_ids: Vec<i64> = good.iter().map(|r| r.id).collect();
        let note = format!("{} reading(s) quarantined", ids.len());
        let row = s
            .local()?
            .query_typed_one(
                sql::QUARANTINE,
                &[
                    (&batch.batch_id, Type::TEXT),
                    (&ids, Type::INT8_ARRAY),
                    (&errors, Type::TEXT_ARRAY),
                    (&states, Type::TEXT_ARRAY),
                    (&good_ids, Type::INT8_ARRAY),
                    (&note, Type::TEXT),
                ],
            )
            .map_err(|e| {
                db.err(
                    format!("quarantining {} reading(s) of batch {}", ids.len(), batch.batch_id),
                    e,
                )
            })?;
        let moved: i64 = row.get(0);
        for (i, err, _) in &bad {
            let r = &batch.readings[*i];
            log::warn!("upload: reading {} (meter {:?}) quarantined: {err}", r.id, r.meter_id);
        }
        Ok((
            moved.max(0) as u64,
            ClaimedBatch {
                batch_id: batch.batch_id.clone(),
                readings: good,
            },
        ))
    }

    /// Records a failure on the batch row for operators (best effort: the error itself is returned anyway).
    fn note_failure(&self, s: &mut Session, batch_id: &str, msg: &str) {
        let db = &self.conns.local;
        let r = s.local().and_then(|c| {
            c.query_typed(sql::NOTE_FAILURE, &[(&batch_id, Type::TEXT), (&msg, Type::TEXT)])
                .map_err(|e| db.err(format!("recording the failure of batch {batch_id}"), e))
        });
        if let Err(e) = r {
            log::warn!("upload: {e}");
        }
    }

    fn remote_name(&self) -> RemoteName {
        RemoteName(self.conns.remote.target().to_string())
    }

    /// UPLOAD_MAX_ROWS_PER_SECOND: waits until the rows sent so far fit the rate (ends early on shutdown).
    fn pace(&self, started: Instant, rows: u64) {
        let rate = self.cfg.upload_max_rows_per_second;
        if rate == 0 {
            return;
        }
        let due = Duration::from_secs_f64(rows as f64 / f64::from(rate));
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            self.conns.shutdown.sleep(wait);
        }
    }

    /// Whether any reading is queued (for `backlog_remains`); false when the database cannot say.
    fn backlog_exists(&self) -> bool {
        let Ok(mut c) = self.conns.local.try_get() else {
            return false;
        };
        c.query_typed_one(
            "SELECT EXISTS (SELECT 1 FROM meter_readings WHERE is_synchronized IS NOT TRUE)",
            &[],
        )
        .map(|r| r.get(0))
        .unwrap_or(false)
    }

    /// True at most once per PRUNE_EVERY per remote database and source, in this process.
    fn prune_due(&self) -> bool {
        static LAST: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);
        let key = format!("{}|{}", self.conns.remote.target(), self.cfg.source_id);
        let mut guard = LAST.lock().unwrap_or_else(|p| p.into_inner());
        let map = guard.get_or_insert_with(HashMap::new);
        match map.get(&key) {
            Some(t) if t.elapsed() < PRUNE_EVERY => false,
            _ => {
                map.insert(key, Instant::now());
                true
            }
        }
    }
}

/// The local connection one drain holds, with the upload lock. If it breaks it is dropped and the next use
/// takes a fresh one (retried with backoff by `ConnectionManager::get`) and locks again. Remote statements
/// take a pooled connection each, through `ConnectionManager::call_bounded`.
struct Session<'a> {
    conns: &'a ConnectionManager,
    local: Option<Conn>,
    /// Statements prepared on `local`, by their SQL (the steady drain's statements are parsed and planned once
    /// per connection, not per batch).
    prepared: HashMap<&'static str, Statement>,
}

impl<'a> Session<'a> {
    fn new(conns: &'a ConnectionManager) -> Session<'a> {
        Session {
            conns,
            local: None,
            prepared: HashMap::new(),
        }
    }

    /// Runs a local statement, prepared once per connection. `context` names it in errors.
    fn query(
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

    fn local(&mut self) -> Result<&mut Client> {
        if self.local.is_none() {
            let db = &self.conns.local;
            let mut c = self.conns.get(Side::Local)?;
            let locked: bool = c
                .query_typed_one(
                    "SELECT pg_try_advisory_lock($1, $2)",
                    &[(&UPLOAD_LOCK.0, Type::INT4), (&UPLOAD_LOCK.1, Type::INT4)],
                )
                .map_err(|e| db.err("taking the upload lock", e))?
                .get(0);
            if !locked {
                return Err(Error::Other(format!(
                    "local database {}: another sync-process is uploading from this database; this upload is skipped",
                    db.target()
                )));
            }
            self.local = Some(c);
        }
        match self.local.as_mut() {
            Some(c) => Ok(c),
            None => Err(Error::Other("local connection missing".into())),
        }
    }

    /// After an error: drops the local connection if it is closed or, after a transient local error, may be
    /// half-broken.
    fn forget_broken(&mut self, e: &Error) {
        let local_trouble = match e {
            Error::Db { side, .. } | Error::Connect { side, .. } | Error::Stalled { side, .. } => *side == Side::Local,
            _ => false,
        };
        if self
            .local
            .as_ref()
            .is_some_and(|c| c.is_closed() || (local_trouble && e.is_transient()))
        {
            self.release_local();
        }
    }

    /// Releases the upload lock before the connection goes back to the pool. If that fails the connection
    /// is broken, the pool discards it, and the server ends the lock with the session.
    fn release_local(&mut self) {
        self.prepared.clear();
        if let Some(mut c) = self.local.take() {
            if !c.is_closed() {
                let _ = c.query_typed(
                    "SELECT pg_advisory_unlock($1, $2)",
                    &[(&UPLOAD_LOCK.0, Type::INT4), (&UPLOAD_LOCK.1, Type::INT4)],
                );
            }
        }
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.release_local();
    }
}

/// The drain's remote connections (UPLOAD_BATCHES_IN_FLIGHT of them, one by default), each kept on its own
/// thread, so that uploads run while the drain works on the local database. Batches are sent to the
/// connections in turn; one connection runs its uploads serially. The upload statements are prepared once per
/// connection. Every wait is bounded like [`ConnectionManager::call_bounded`]: a silent remote, a shutdown past
/// its grace, or a broken connection abandons that thread (it ends with the link) and the next send on it
/// starts a fresh one.
struct Uplink<'a> {
    conns: &'a ConnectionManager,
    name: Arc<RemoteName>,
    source_id: Arc<str>,
    lanes: Vec<Option<crossbeam_channel::Sender<Job>>>,
    turn: usize,
}

/// How an upload is ordered against the others in flight (see sql/remote/0003_upload_chain.sql).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Order {
    /// One batch at a time: the plain statement.
    Serial,
    /// Several may overlap and none older is in flight: this batch becomes the site's chain head.
    Lead,
    /// Inserted only once the batch with this id is in, and after it.
    After(String),
}

struct Job {
    batch: Arc<ClaimedBatch>,
    order: Order,
    reply: crossbeam_channel::Sender<Result<UploadOutcome>>,
}

/// An upload sent to the uplink, not yet waited for.
struct InFlight {
    lane: usize,
    what: String,
    started: Instant,
    reply: crossbeam_channel::Receiver<Result<UploadOutcome>>,
}

impl<'a> Uplink<'a> {
    fn new(conns: &'a ConnectionManager, name: RemoteName, source_id: &str, width: u32) -> Uplink<'a> {
        Uplink {
            conns,
            name: Arc::new(name),
            source_id: Arc::from(source_id),
            lanes: (0..width.max(1)).map(|_| None).collect(),
            turn: 0,
        }
    }

    /// How many uploads may be in flight at once.
    fn width(&self) -> usize {
        self.lanes.len()
    }

    /// The order of an upload with nothing older in flight.
    fn alone(&self) -> Order {
        if self.width() == 1 {
            Order::Serial
        } else {
            Order::Lead
        }
    }

    /// Sends `batch` to be uploaded on the next connection in turn; takes a remote connection (with
    /// MAX_CONNECTION_RETRIES) if that one has none.
    fn send(&mut self, batch: Arc<ClaimedBatch>, order: Order) -> Result<InFlight> {
        let what = format!("uploading batch {} ({} readings)", batch.batch_id, batch.len());
        let lane = self.turn % self.lanes.len();
        self.turn = self.turn.wrapping_add(1);
        log::trace!(
            "upload: sending batch {} on connection {lane} ({order:?})",
            batch.batch_id
        );
        let (reply, rx) = crossbeam_channel::bounded(1);
        let mut job = Job { batch, order, reply };
        // A thread that ended (its connection broke after the last job) gives the job back: start a fresh one.
        for _ in 0..2 {
            if self.lanes[lane].is_none() {
                self.lanes[lane] = Some(self.start(&what)?);
            }
            let Some(jobs) = &self.lanes[lane] else {
                continue;
            };
            match jobs.send(job) {
                Ok(()) => {
                    return Ok(InFlight {
                        lane,
                        what,
                        started: Instant::now(),
                        reply: rx,
                    })
                }
                Err(crossbeam_channel::SendError(back)) => {
                    job = back;
                    self.lanes[lane] = None;
                }
            }
        }
        Err(Error::Other(format!(
            "remote database {}: {what}: the upload thread ended at once twice",
            self.name.0
        )))
    }

    /// Gives up every connection (their threads end with their links); the next sends start fresh ones.
    fn abandon(&mut self) {
        self.lanes.iter_mut().for_each(|lane| *lane = None);
    }

    /// Waits for the outcome of an upload sent by [`Uplink::send`]. After a stall, shutdown or a transient
    /// error the connection is given up (a half-broken one is never reused).
    fn wait(&mut self, sent: InFlight) -> Result<UploadOutcome> {
        let r = self
            .conns
            .await_bounded(Side::Remote, &sent.what, &sent.reply, sent.started);
        if matches!(&r, Err(e) if e.is_transient() || matches!(e, Error::Shutdown | Error::Other(_))) {
            self.lanes[sent.lane] = None;
        }
        r
    }

    /// Takes a remote connection and starts its thread, which prepares the upload statements before anything
    /// is sent: a batch sent on a fresh connection must not reach the server later than one sent after it on a
    /// connection that is ready (with several in flight that would break the chain).
    fn start(&self, what: &str) -> Result<crossbeam_channel::Sender<Job>> {
        let mut conn = self.conns.get(Side::Remote)?;
        let (tx, jobs) = crossbeam_channel::unbounded::<Job>();
        let (ready_tx, ready) = crossbeam_channel::bounded(1);
        let (name, source_id) = (Arc::clone(&self.name), Arc::clone(&self.source_id));
        let chained = self.width() > 1;
        let context = format!("{what}: preparing the upload statements");
        std::thread::Builder::new()
            .name("upload-remote".into())
            .spawn(move || {
                let mut statements = match Statements::prepare(&mut conn, &name, &context, chained) {
                    Ok(st) => {
                        let _ = ready_tx.send(Ok(()));
                        st
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                for job in jobs {
                    let r = upload(&mut conn, &mut statements, &name, &source_id, &job.batch, &job.order);
                    let _ = job.reply.send(r);
                    if conn.is_closed() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::io("starting the upload thread", e))?;
        self.conns.await_bounded(Side::Remote, what, &ready, Instant::now())?;
        Ok(tx)
    }
}

// ----- The statements. -----

fn reading_from_row(row: &postgres::Row, offset: usize) -> QueuedReading {
    QueuedReading {
        id: row.get(offset),
        meter_id: row.get(offset + 1),
        timestamp: row.get(offset + 2),
        value: row.get(offset + 3),
        unit: row.get(offset + 4),
        metadata: row.get(offset + 5),
    }
}

fn claim(s: &mut Session, batch_size: u32, after: Option<&ClaimCursor>) -> Result<Option<ClaimedBatch>> {
    let limit = i64::from(batch_size);
    let context = || format!("claiming the next batch of up to {batch_size} readings");
    let rows = match after {
        None => s.query(sql::CLAIM_FIRST, &[Type::INT8], &[&limit], &context)?,
        Some(k) => s.query(
            sql::CLAIM_NEXT,
            &[Type::INT8, Type::TEXT, Type::INT8],
            &[&limit, &k.timestamp, &k.id],
            &context,
        )?,
    };
    Ok(batch_from_rows(&rows, 0))
}

/// The claimed batch of a claim's result rows (batch id in column `offset`, the reading after it).
fn batch_from_rows(rows: &[postgres::Row], offset: usize) -> Option<ClaimedBatch> {
    let batch_id: String = rows.first()?.get::<_, Option<String>>(offset)?;
    let readings = rows.iter().map(|r| reading_from_row(r, offset + 1)).collect();
    Some(ClaimedBatch { batch_id, readings })
}

/// Returns the readings deleted and the next batch claimed after `after`, if any.
fn finish_and_claim(
    s: &mut Session,
    batch_id: &str,
    batch_size: u32,
    after: &ClaimCursor,
) -> Result<(u64, Option<ClaimedBatch>)> {
    let limit = i64::from(batch_size);
    let context = || format!("deleting the uploaded readings of batch {batch_id} and claiming the next batch");
    let rows = s.query(
        sql::FINISH_AND_CLAIM,
        &[Type::INT8, Type::TEXT, Type::INT8, Type::TEXT],
        &[&limit, &after.timestamp, &after.id, &batch_id],
        &context,
    )?;
    let (finished, deleted): (i64, i64) = rows.first().map_or((0, 0), |r| (r.get(0), r.get(1)));
    if finished != 1 {
        log::warn!("upload: batch {batch_id} was no longer pending when it was finished");
    }
    Ok((deleted.max(0) as u64, batch_from_rows(&rows, 2)))
}

/// The reading values as the five text arrays of the upload statement.
struct Columns<'r> {
    meter: Vec<&'r str>,
    ts: Vec<&'r str>,
    value: Vec<&'r str>,
    unit: Vec<&'r str>,
    metadata: Vec<Option<&'r str>>,
}

impl<'r> Columns<'r> {
    fn of(readings: &'r [QueuedReading]) -> Columns<'r> {
        Columns {
            meter: readings.iter().map(|r| r.meter_id.as_str()).collect(),
            ts: readings.iter().map(|r| r.timestamp.as_str()).collect(),
            value: readings.iter().map(|r| r.value.as_str()).collect(),
            unit: readings.iter().map(|r| r.unit.as_str()).collect(),
            metadata: readings.iter().map(|r| r.metadata.as_deref()).collect(),
        }
    }
}

fn is_ledger_conflict(e: &postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|d| *d.code() == SqlState::UNIQUE_VIOLATION && d.table() == Some("sync_upload_ledger"))
}

/// Names the remote database in errors made on a helper thread (which cannot borrow the `Database`).
struct RemoteName(String);

impl RemoteName {
    fn err(&self, context: impl Into<String>, source: postgres::Error) -> Error {
        Error::db(Side::Remote, &self.0, context, source)
    }
}

/// The upload statements of one connection: prepared when the connection starts (the plain one, or the two
/// chained ones with several in flight), any other on first use.
#[derive(Default)]
struct Statements {
    serial: Option<Statement>,
    lead: Option<Statement>,
    after: Option<Statement>,
}

impl Statements {
    fn prepare(c: &mut Client, db: &RemoteName, context: &str, chained: bool) -> Result<Statements> {
        let prepare = |c: &mut Client, text: &str, types: &[Type]| {
            c.prepare_typed(text, types).map(Some).map_err(|e| db.err(context, e))
        };
        Ok(if chained {
            Statements {
                lead: prepare(c, sql::UPLOAD_LEAD, &UPLOAD_TYPES[..8])?,
                after: prepare(c, sql::UPLOAD_AFTER, &UPLOAD_TYPES[..])?,
                ..Statements::default()
            }
        } else {
            Statements {
                serial: prepare(c, sql::UPLOAD, &UPLOAD_TYPES[..8])?,
                ..Statements::default()
            }
        })
    }
}

/// The upload statement for `order`, one round trip: the readings and the ledger row (and with several in
/// flight, the move of the chain head), all or nothing.
fn upload(
    c: &mut Client,
    statements: &mut Statements,
    db: &RemoteName,
    source_id: &str,
    batch: &ClaimedBatch,
    order: &Order,
) -> Result<UploadOutcome> {
    let context = || format!("uploading batch {} ({} readings)", batch.batch_id, batch.len());
    let (slot, text, types): (_, _, &[Type]) = match order {
        Order::Serial => (&mut statements.serial, sql::UPLOAD, &UPLOAD_TYPES[..8]),
        Order::Lead => (&mut statements.lead, sql::UPLOAD_LEAD, &UPLOAD_TYPES[..8]),
        Order::After(_) => (&mut statements.after, sql::UPLOAD_AFTER, &UPLOAD_TYPES[..]),
    };
    let st = match slot {
        Some(st) => st,
        None => slot.insert(c.prepare_typed(text, types).map_err(|e| db.err(context(), e))?),
    };
    let n = i32::try_from(batch.len()).unwrap_or(i32::MAX);
    let cols = Columns::of(&batch.readings);
    let before = match order {
        Order::After(id) => id.as_str(),
        Order::Serial | Order::Lead => "",
    };
    let params: [&(dyn ToSql + Sync); 9] = [
        &source_id,
        &batch.batch_id,
        &n,
        &cols.meter,
        &cols.ts,
        &cols.value,
        &cols.unit,
        &cols.metadata,
        &before,
    ];
    match c.execute(st, &params[..types.len()]) {
        Ok(0) if !batch.is_empty() => Ok(UploadOutcome::OutOfTurn),
        Ok(_) => Ok(UploadOutcome::Uploaded(batch.len() as u64)),
        Err(e) if is_ledger_conflict(&e) => Ok(UploadOutcome::AlreadyPresent),
        Err(e) => Err(db.err(context(), e)),
    }
}

/// The parameter types of the upload statements: eight for [`sql::UPLOAD`] and [`sql::UPLOAD_LEAD`], a ninth
/// (the batch before) for [`sql::UPLOAD_AFTER`].
const UPLOAD_TYPES: [Type; 9] = [
    Type::TEXT,
    Type::TEXT,
    Type::INT4,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT,
];

/// Inserts `readings[from..to]` under a savepoint of `tx`; on a data error rolls the savepoint back and
/// bisects, recording single rejected readings in `bad`.
fn probe(
    tx: &mut postgres::Transaction<'_>,
    db: &RemoteName,
    context: &str,
    readings: &[QueuedReading],
    from: usize,
    to: usize,
    bad: &mut Vec<(usize, String, Option<String>)>,
) -> Result<()> {
    if from >= to {
        return Ok(());
    }
    let mut sp = tx.savepoint("sync_probe").map_err(|e| db.err(context, e))?;
    let cols = Columns::of(&readings[from..to]);
    let params: [(&(dyn ToSql + Sync), Type); 5] = [
        (&cols.meter, Type::TEXT_ARRAY),
        (&cols.ts, Type::TEXT_ARRAY),
        (&cols.value, Type::TEXT_ARRAY),
        (&cols.unit, Type::TEXT_ARRAY),
        (&cols.metadata, Type::TEXT_ARRAY),
    ];
    match sp.query_typed(sql::PROBE, &params) {
        Ok(_) => sp.commit().map_err(|e| db.err(context, e)),
        Err(e) if pg_error_is_data_error(&e) => {
            sp.rollback().map_err(|e| db.err(context, e))?;
            if to - from == 1 {
                let state = e.code().map(|c| c.code().to_string());
                bad.push((from, describe_pg_error(&e), state));
                Ok(())
            } else {
                let mid = from + (to - from) / 2;
                probe(tx, db, context, readings, from, mid, bad)?;
                probe(tx, db, context, readings, mid, to, bad)
            }
        }
        Err(e) => Err(db.err(context, e)),
    }
}

/// Returns (batch rows deleted, readings deleted).
fn finish(s: &mut Session, batch_id: &str) -> Result<(i64, u64)> {
    let context = || format!("deleting the uploaded readings of batch {batch_id}");
    let rows = s.query(sql::FINISH, &[Type::TEXT], &[&batch_id], &context)?;
    let (batches, readings): (i64, i64) = rows.first().map_or((0, 0), |r| (r.get(0), r.get(1)));
    Ok((batches, readings.max(0) as u64))
}

/// (batch id, number of reading ids), oldest claim first.
fn pending(s: &mut Session) -> Result<Vec<(String, i32)>> {
    let rows = s.query(sql::PENDING, &[], &[], &|| {
        "reading the claimed upload batches".to_string()
    })?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

fn load_batch(s: &mut Session, batch_id: &str) -> Result<ClaimedBatch> {
    let context = || format!("reading the readings of claimed batch {batch_id}");
    let rows = s.query(sql::BATCH_ROWS, &[Type::TEXT], &[&batch_id], &context)?;
    Ok(ClaimedBatch {
        batch_id: batch_id.to_string(),
        readings: rows.iter().map(|r| reading_from_row(r, 0)).collect(),
    })
}

fn ledger_lookup(c: &mut Client, db: &RemoteName, source_id: &str, ids: &[String]) -> Result<HashSet<String>> {
    let rows = c
        .query_typed(
            sql::LEDGER_LOOKUP,
            &[(&source_id, Type::TEXT), (&ids, Type::TEXT_ARRAY)],
        )
        .map_err(|e| {
            db.err(
                format!("looking up {} claimed batch(es) in the upload ledger", ids.len()),
                e,
            )
        })?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// `sync-process quarantine ...`: see quarantine.rs.
pub fn quarantine_command(cfg: &Config, cmd: &crate::cli::QuarantineCmd) -> Result<()> {
    crate::quarantine::command(cfg, cmd)
}

/// Every SQL statement of the upload, both sides. Values are selected as text with aliases that differ from
/// the column names, and queries order by the real columns (pitfalls.md: ordering by a cast loses the index).
pub mod sql {
    /// Local. The first claim of a drain: the oldest readings.
    pub const CLAIM_FIRST: &str = "
WITH c AS (
  SELECT id, meter_id, timestamp, value, unit, metadata FROM meter_readings
  WHERE is_synchronized IS NOT TRUE
  ORDER BY timestamp, id LIMIT $1
), b AS (
  INSERT INTO sync_upload_batches (batch_id, reading_ids)
  SELECT gen_random_uuid(), array_agg(c.id::int8 ORDER BY c.timestamp, c.id) FROM c HAVING count(*) > 0
  RETURNING batch_id
)
SELECT b.batch_id::text AS batch_text, c.id::int8 AS id_num, c.meter_id::text AS meter_text,
       c.timestamp::text AS ts_text, c.value::text AS value_text, c.unit::text AS unit_text,
       c.metadata::text AS metadata_text
FROM b CROSS JOIN c ORDER BY c.timestamp, c.id";

    /// Local. The next claim: keyset after the last claimed (timestamp, id).
    pub const CLAIM_NEXT: &str = "
WITH c AS (
  SELECT id, meter_id, timestamp, value, unit, metadata FROM meter_readings
  WHERE (timestamp, id) > ($2::timestamp, $3) AND is_synchronized IS NOT TRUE
  ORDER BY timestamp, id LIMIT $1
), b AS (
  INSERT INTO sync_upload_batches (batch_id, reading_ids)
  SELECT gen_random_uuid(), array_agg(c.id::int8 ORDER BY c.timestamp, c.id) FROM c HAVING count(*) > 0
  RETURNING batch_id
)
SELECT b.batch_id::text AS batch_text, c.id::int8 AS id_num, c.meter_id::text AS meter_text,
       c.timestamp::text AS ts_text, c.value::text AS value_text, c.unit::text AS unit_text,
       c.metadata::text AS metadata_text
FROM b CROSS JOIN c ORDER BY c.timestamp, c.id";

    /// Local. FINISH of batch $4 and CLAIM after ($2, $3) in one statement, so one commit per batch. The claim
    /// sees the queue as it was before the delete (one snapshot), which is right: the finished readings all lie
    /// at or before the key it continues after. Always returns a row: (finished, deleted, NULLs) when nothing
    /// is left to claim.
    pub const FINISH_AND_CLAIM: &str = "
WITH f AS (
  DELETE FROM sync_upload_batches WHERE batch_id = $4::uuid RETURNING reading_ids
), d AS (
  DELETE FROM meter_readings r USING f WHERE r.id = ANY(f.reading_ids) RETURNING 1
), c AS (
  SELECT id, meter_id, timestamp, value, unit, metadata FROM meter_readings
  WHERE (timestamp, id) > ($2::timestamp, $3) AND is_synchronized IS NOT TRUE
  ORDER BY timestamp, id LIMIT $1
), b AS (
  INSERT INTO sync_upload_batches (batch_id, reading_ids)
  SELECT gen_random_uuid(), array_agg(c.id::int8 ORDER BY c.timestamp, c.id) FROM c HAVING count(*) > 0
  RETURNING batch_id
)
SELECT (SELECT count(*) FROM f) AS finished, (SELECT count(*) FROM d) AS deleted,
       b.batch_id::text AS batch_text, c.id::int8 AS id_num, c.meter_id::text AS meter_text,
       c.timestamp::text AS ts_text, c.value::text AS value_text, c.unit::text AS unit_text,
       c.metadata::text AS metadata_text
FROM (SELECT 1) AS one LEFT JOIN (b CROSS JOIN c) ON true
ORDER BY c.timestamp, c.id";

    /// Remote. The ledger row first (the readings are joined to it, so a duplicate batch fails on the ledger
    /// key before any reading is inserted), then the readings in upload order. One statement, one transaction.
    pub const UPLOAD: &str = "
WITH l AS (
  INSERT INTO sync_upload_ledger (source_id, batch_id, row_count) VALUES ($1, $2::uuid, $3)
  RETURNING batch_id
)
INSERT INTO meter_readings (meter_id, timestamp, value, unit, metadata)
SELECT x.m, x.t::timestamp, x.v::numeric, x.u, x.md::jsonb
FROM l CROSS JOIN unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::text[])
     WITH ORDINALITY AS x(m, t, v, u, md, ord)
ORDER BY x.ord";

    /// Remote. [`UPLOAD`] that also makes this batch the site's chain head (UPLOAD_BATCHES_IN_FLIGHT > 1, with
    /// no older batch in flight). The head row is locked until commit, so a batch sent after this one waits.
    pub const UPLOAD_LEAD: &str = "
WITH h AS (
  INSERT INTO sync_upload_chain (source_id, head) VALUES ($1, $2::uuid)
  ON CONFLICT (source_id) DO UPDATE SET head = EXCLUDED.head, updated_at = now()
  RETURNING 1
), l AS (
  INSERT INTO sync_upload_ledger (source_id, batch_id, row_count) SELECT $1, $2::uuid, $3 FROM h
  RETURNING batch_id
)
INSERT INTO meter_readings (meter_id, timestamp, value, unit, metadata)
SELECT x.m, x.t::timestamp, x.v::numeric, x.u, x.md::jsonb
FROM l CROSS JOIN unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::text[])
     WITH ORDINALITY AS x(m, t, v, u, md, ord)
ORDER BY x.ord";

    /// Remote. [`UPLOAD`] of a batch sent while the batch $9 is in flight: the update of the site's head row
    /// waits for $9's statement to commit or roll back (row lock), then re-reads the row. Only if the head is
    /// then $9 does it move to this batch and are the ledger row and readings inserted, so readings reach the
    /// remote in claim order. Otherwise nothing is inserted (0 rows): the batch is sent again.
    pub const UPLOAD_AFTER: &str = "
WITH h AS (
  UPDATE sync_upload_chain
  SET head = CASE WHEN head = $9::uuid THEN $2::uuid ELSE head END, updated_at = now()
  WHERE source_id = $1
  RETURNING head = $2::uuid AS moved
), l AS (
  INSERT INTO sync_upload_ledger (source_id, batch_id, row_count) SELECT $1, $2::uuid, $3 FROM h WHERE h.moved
  RETURNING batch_id
)
INSERT INTO meter_readings (meter_id, timestamp, value, unit, metadata)
SELECT x.m, x.t::timestamp, x.v::numeric, x.u, x.md::jsonb
FROM l CROSS JOIN unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::text[])
     WITH ORDINALITY AS x(m, t, v, u, md, ord)
ORDER BY x.ord";

    /// Remote. The readings alone, for probing a rejected batch inside a transaction that is rolled back.
    pub const PROBE: &str = "
INSERT INTO meter_readings (meter_id, timestamp, value, unit, metadata)
SELECT x.m, x.t::timestamp, x.v::numeric, x.u, x.md::jsonb
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY AS x(m, t, v, u, md, ord)
ORDER BY x.ord";

    /// Local. Deletes the batch row and exactly the readings it names.
    pub const FINISH: &str = "
WITH b AS (
  DELETE FROM sync_upload_batches WHERE batch_id = $1::uuid RETURNING reading_ids
), d AS (
  DELETE FROM meter_readings r USING b WHERE r.id = ANY(b.reading_ids) RETURNING 1
)
SELECT (SELECT count(*) FROM b), (SELECT count(*) FROM d)";

    /// Local. The pending batches in upload order: by the key of their first reading (claims never overlap,
    /// so this is the order they were claimed in, whatever the clock did), empty batches first.
    pub const PENDING: &str = "
SELECT b.batch_id::text, cardinality(b.reading_ids)
FROM sync_upload_batches b LEFT JOIN meter_readings r ON r.id = b.reading_ids[1]
ORDER BY r.timestamp NULLS FIRST, r.id, b.claimed_at, b.batch_id";

    /// Local. A pending batch's readings, in the order of its array.
    pub const BATCH_ROWS: &str = "
SELECT r.id::int8 AS id_num, r.meter_id::text AS meter_text, r.timestamp::text AS ts_text,
       r.value::text AS value_text, r.unit::text AS unit_text, r.metadata::text AS metadata_text
FROM sync_upload_batches b CROSS JOIN LATERAL unnest(b.reading_ids) WITH ORDINALITY AS u(id, ord)
JOIN meter_readings r ON r.id = u.id
WHERE b.batch_id = $1::uuid
ORDER BY u.ord";

    /// Remote.
    pub const LEDGER_LOOKUP: &str = "
SELECT batch_id::text FROM sync_upload_ledger WHERE source_id = $1 AND batch_id = ANY($2::uuid[])";

    /// Local. Moves rejected readings into the quarantine and narrows their batch to the good ones.
    pub const QUARANTINE: &str = "
WITH e AS (
  SELECT * FROM unnest($2::int8[], $3::text[], $4::text[]) AS e(id, error, sqlstate)
), q AS (
  DELETE FROM meter_readings r USING e WHERE r.id = e.id
  RETURNING r.id, r.meter_id, r.timestamp, r.value, r.unit, r.metadata, r.created_at, e.error, e.sqlstate
), i AS (
  INSERT INTO sync_quarantine (id, meter_id, timestamp, value, unit, metadata, created_at, error, sqlstate)
  SELECT * FROM q RETURNING 1
), u AS (
  UPDATE sync_upload_batches SET reading_ids = $5::int8[], attempts = attempts + 1, last_error = $6
  WHERE batch_id = $1::uuid RETURNING 1
)
SELECT (SELECT count(*) FROM i), (SELECT count(*) FROM u)";

    /// Local. A few queued readings outside a rejected batch (ids $1), to probe whether the remote accepts
    /// anything at all.
    pub const CONTROL_READINGS: &str = "
SELECT id::int8 AS id_num, meter_id::text AS meter_text, timestamp::text AS ts_text,
       value::text AS value_text, unit::text AS unit_text, metadata::text AS metadata_text
FROM meter_readings WHERE is_synchronized IS NOT TRUE AND id <> ALL($1::int8[])
ORDER BY timestamp, id LIMIT 8";

    /// Local.
    pub const NOTE_FAILURE: &str = "
UPDATE sync_upload_batches SET attempts = attempts + 1, last_error = $2 WHERE batch_id = $1::uuid";

    /// Remote. Ledger rows of this source older than $2 seconds, except batches still pending locally.
    pub const PRUNE: &str = "
WITH d AS (
  DELETE FROM sync_upload_ledger
  WHERE source_id = $1 AND uploaded_at < now() - $2 * interval '1 second' AND batch_id <> ALL($3::uuid[])
  RETURNING 1
)
SELECT count(*) FROM d";
}
