//! Upload Sync Manager: exactly-once store-and-forward of meter readings (local -> remote).
//!
//! Owns: the upload protocol and all of its SQL on both sides, behind the [`UploadSyncManager`] facade (the
//! drain with its time budget, pacing and shutdown checks; the protocol's single steps for tests; the queue
//! counts for status; the ledger prune) and its result [`UploadSyncResult`]. This is the only module that
//! writes remote readings. Its rooms:
//! - `batch.rs` — the data: [`ClaimedBatch`], [`QueuedReading`], [`ClaimCursor`], [`UploadOutcome`] (pure);
//! - [`wire`] — a value's binary bytes carried unchanged ([`wire::Wire`], one PostgreSQL type each);
//! - `session.rs` — the local connection of a drain, holding the upload lock, and the local statements;
//! - `uplink.rs` — the remote connections on their threads, the upload statement, ledger lookup and prune;
//! - `drain.rs` — the pipeline, recovery, and one batch's upload with poison handling;
//! - `sizer.rs` — how many readings the next claim asks for (BATCH_SIZE growing up to BATCH_SIZE_MAX, pure);
//! - `width.rs` — how many batches are in flight now (up to UPLOAD_BATCHES_IN_FLIGHT: more only where the
//!   drain waits for the link, pure);
//! - `poison.rs` — probing a rejected batch and quarantining what it rejects;
//! - [`fault`] — whose fault a rejection is: the central's own (by cause, worded for an operator) or maybe the
//!   readings' (probing decides);
//! - [`capacity`] — the warning when the central's int4 id is past half of its range;
//! - `confirm.rs` — the confirmation window (UPLOAD_CONFIRM_SECONDS): asking the ledger again before the local
//!   delete, and sending again a batch whose ledger row vanished (a central that failed over);
//! - [`validate`] — UPLOAD_VALIDATE's checks and window (the checks run inside the claim statements);
//! - [`sql`] — every statement text.
//!
//! Does not own: connections, backoff and the advisory lock guard (db.rs, retry.rs), what counts as
//! transient or data errors (error.rs), the quarantine commands (quarantine.rs), scheduling cycles
//! (scheduler.rs).
//!
//! The protocol (ARCHITECTURE.md, "The upload protocol", is the long form):
//! 1. CLAIM — one local statement takes the next BATCH_SIZE readings (up to BATCH_SIZE_MAX while a backlog
//!    remains, sizer.rs; at most about 1 MiB of row data) in (timestamp, id) order after a
//!    remembered key and records them as a batch (random uuid, the reading ids in upload order).
//! 2. UPLOAD — one remote statement inserts the ledger row (source, batch id) and the readings; it is its own
//!    transaction. A unique violation on the ledger key means the batch is already in.
//! 3. FINISH — one local statement deletes the batch row and exactly the readings it names.
//! 4. RECOVER — at the start of a drain and after any error, every claimed batch is looked up in the ledger:
//!    present -> finish; absent -> upload the same rows under the same id, then finish.
//! 5. CONFIRM (UPLOAD_CONFIRM_SECONDS = N > 0) — FINISH marks the batch acknowledged and its readings
//!    `is_synchronized` instead of deleting them; after N seconds one ledger lookup for many batches: present ->
//!    deleted locally; absent -> uploaded again under the same id, and acknowledged again.
//!
//! Values travel in PostgreSQL's binary format, as the local server sends them (`wire.rs`: `Wire`), in typed
//! arrays (`timestamp[]`, `numeric[]`, `jsonb[]`, `text[]`) of the one remote statement: every value arrives
//! bit-exact and nothing here parses one.

mod batch;
pub mod capacity;
mod confirm;
mod drain;
pub mod fault;
mod poison;
mod session;
mod sizer;
pub mod sql;
mod uplink;
pub mod validate;
mod width;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Config;
use crate::db::{ConnectionManager, Side};
use crate::error::{Error, Result};

pub use batch::{ClaimCursor, ClaimedBatch, QueuedReading, UploadOutcome};
pub use confirm::resent_batches;
use drain::Drained;
use session::Session;
use uplink::{Order, Uplink};

/// Ledger rows older than this, whose batch is not pending locally, are pruned.
pub const LEDGER_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The ledger of one remote and source is pruned at most this often (per process).
const LEDGER_PRUNE_EVERY: Duration = Duration::from_secs(3600);

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
    /// The part failed because the central cannot take readings for a reason of its own (the error's text):
    /// the `central_fault` alert.
    #[serde(skip)]
    pub central_fault: Option<String>,
    /// Batches uploaded by this part, and how often the chain broke among them (several in flight).
    #[serde(skip)]
    pub batches: u64,
    #[serde(skip)]
    pub chain_breaks: u64,
}

/// Counters of one drain.
#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    uploaded: u64,
    deleted: u64,
    quarantined: u64,
    batches: u64,
    /// With several batches in flight: how often a batch came back out of turn (the chain broke and the
    /// batches in flight were sent again).
    chain_breaks: u64,
}

/// Batches uploaded since this process started (for /metrics).
static UPLOADED_BATCHES: AtomicU64 = AtomicU64::new(0);
/// Chain breaks since this process started (for /metrics).
static CHAIN_BREAKS: AtomicU64 = AtomicU64::new(0);

/// Batches this process uploaded (each one ledger row).
pub fn uploaded_batches() -> u64 {
    UPLOADED_BATCHES.load(Ordering::Relaxed)
}

/// How often a batch in flight came back out of turn in this process (UPLOAD_BATCHES_IN_FLIGHT > 1): each
/// one makes the drain wait for the batches in flight and send them again one by one.
pub fn chain_breaks() -> u64 {
    CHAIN_BREAKS.load(Ordering::Relaxed)
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
        UPLOADED_BATCHES.fetch_add(stats.batches, Ordering::Relaxed);
        CHAIN_BREAKS.fetch_add(stats.chain_breaks, Ordering::Relaxed);
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
            central_fault: None,
            batches: stats.batches,
            chain_breaks: stats.chain_breaks,
        };
        let mut summary = format!(
            "{} readings uploaded, {} deleted locally, {} quarantined, {} batches in {ms} ms",
            stats.uploaded, stats.deleted, stats.quarantined, stats.batches
        );
        if self.cfg.upload_batches_in_flight > 1 {
            summary.push_str(&format!(
                " ({} in flight, {} chain breaks)",
                self.cfg.upload_batches_in_flight, stats.chain_breaks
            ));
        }
        match outcome {
            // The scheduler logs the part's result at info (Property 11); this adds the batch count.
            // With several in flight also at info: the chain breaks are worth seeing.
            Ok(Drained::Empty) if self.cfg.upload_batches_in_flight > 1 => log::info!("upload: {summary}; queue empty"),
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
                // A stop requested during the upload's retries is no failure (nothing is lost: the queue stays).
                let level = if matches!(e, Error::Shutdown) {
                    log::Level::Info
                } else {
                    log::Level::Error
                };
                log::log!(level, "upload failed ({} error) after {summary}: {e}", e.kind());
                result.error = Some(e.to_string());
                if matches!(e, crate::error::Error::CentralFault { .. }) {
                    result.central_fault = result.error.clone();
                }
            }
        }
        if result.success && !self.conns.shutdown.is_requested() && self.prune_due() {
            match self.prune_ledger(LEDGER_RETENTION) {
                Ok(n) => log::log!(
                    if n > 0 { log::Level::Info } else { log::Level::Debug },
                    "upload: pruned {n} ledger rows older than {} days",
                    LEDGER_RETENTION.as_secs() / 86_400
                ),
                Err(Error::Shutdown) => log::info!("upload: pruning the ledger cut short: shutting down"),
                Err(e) => log::warn!("upload: pruning the ledger failed ({} error): {e}", e.kind()),
            }
        }
        result
    }

    /// Readings waiting locally (claimed or not), not counting quarantined ones. A row that another program
    /// marked `is_synchronized = true` (the design's flag; this daemon deletes instead) is not queued.
    pub fn queue_size(&self) -> Result<i64> {
        self.local_one(sql::QUEUE_SIZE, "counting the queue")
            .map(|row| row.get(0))
    }

    /// Readings in the local quarantine.
    pub fn quarantined_count(&self) -> Result<i64> {
        self.local_one(sql::QUARANTINED_COUNT, "counting quarantined readings")
            .map(|row| row.get(0))
    }

    /// Age of the oldest queued reading (now - its created_at), None when the queue is empty.
    pub fn oldest_pending_age(&self) -> Result<Option<Duration>> {
        let row = self.local_one(sql::OLDEST_PENDING_AGE, "reading the age of the oldest queued reading")?;
        let secs: Option<f64> = row.get(0);
        Ok(secs.map(|s| Duration::from_secs_f64(if s.is_finite() { s.max(0.0) } else { 0.0 })))
    }

    /// Readings awaiting confirmation (uploaded, kept for UPLOAD_CONFIRM_SECONDS; not in the queue), and how
    /// long ago the oldest of their batches was first acknowledged.
    pub fn awaiting_confirmation(&self) -> Result<(i64, Option<Duration>)> {
        let row = self.local_one(
            sql::AWAITING_CONFIRMATION,
            "counting the readings awaiting confirmation",
        )?;
        let secs: Option<f64> = row.get(1);
        let age = secs.map(|s| Duration::from_secs_f64(if s.is_finite() { s.max(0.0) } else { 0.0 }));
        Ok((row.get(0), age))
    }

    /// One row of a parameterless local query, on a pooled connection (retried per MAX_CONNECTION_RETRIES).
    fn local_one(&self, sql: &str, context: &str) -> Result<postgres::Row> {
        let mut c = self.conns.get(Side::Local)?;
        c.query_typed_one(sql, &[])
            .map_err(|e| self.conns.local.err(context, e))
    }

    // ----- The protocol's steps, one statement each. Public so that tests can stop between them. -----

    /// CLAIM: records the next BATCH_SIZE readings after `after` (from the start of the queue when None) as a
    /// new batch and returns it, or None when there is nothing after `after`. One local statement. The caller
    /// must not claim while another batch overlapping `after` is pending (the drain claims only after
    /// recovery, and continues strictly after the last claimed key).
    pub fn claim_batch(&self, after: Option<&ClaimCursor>) -> Result<Option<ClaimedBatch>> {
        self.session().claim(self.cfg.batch_size, after)
    }

    /// UPLOAD: the one remote statement (ledger row + readings, atomic). No retry, no poison handling: a data
    /// error comes back as the error (`is_data_error()`).
    pub fn upload_batch(&self, batch: &ClaimedBatch) -> Result<UploadOutcome> {
        let mut up = Uplink::new(
            self.conns,
            &self.cfg.source_id,
            self.cfg.upload_source_column.as_deref(),
            1,
        );
        let sent = up.send(Arc::new(batch.clone()), Order::Serial, 1)?;
        up.wait(sent)
    }

    /// FINISH: deletes the batch row and exactly the readings it names, in one local statement. Returns the
    /// readings deleted. With UPLOAD_CONFIRM_SECONDS > 0 it acknowledges the batch and marks its readings
    /// instead (0 deleted).
    pub fn finish_batch(&self, batch_id: &str) -> Result<u64> {
        self.session().finish(batch_id).map(|(_, deleted)| deleted)
    }

    /// FINISH of `batch_id` and CLAIM of the next batch after `after`, in one local statement (one commit
    /// instead of two per batch). Returns the readings deleted and the new batch, if any.
    pub fn finish_and_claim_batch(&self, batch_id: &str, after: &ClaimCursor) -> Result<(u64, Option<ClaimedBatch>)> {
        self.session().finish_and_claim(batch_id, self.cfg.batch_size, after)
    }

    // ----- The confirmation's steps (confirm.rs), public so that tests can stop between them. -----

    /// The batches awaiting confirmation whose window has passed (oldest claim first, at most 1000), by id.
    pub fn due_for_confirmation(&self) -> Result<Vec<String>> {
        let window = Duration::from_secs(self.cfg.upload_confirm_seconds);
        Ok(self
            .session()
            .due_for_confirmation(window, confirm::CONFIRM_CHUNK)?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// Which of `ids` the remote ledger holds: one remote query.
    pub fn batches_in_ledger(&self, ids: &[String]) -> Result<HashSet<String>> {
        self.ledger_has(ids.to_vec())
    }

    /// Deletes the batches `ids` that await confirmation and exactly their readings: one local statement.
    /// Returns the readings deleted.
    pub fn confirm_batches(&self, ids: &[String]) -> Result<u64> {
        self.session().confirm(ids)
    }

    /// UPLOAD again, under its id, of a batch awaiting confirmation (its readings as kept locally): one remote
    /// statement. [`UploadSyncManager::finish_batch`] then acknowledges it again.
    pub fn resend_batch(&self, batch_id: &str) -> Result<UploadOutcome> {
        let batch = self.session().load_batch(batch_id)?;
        self.upload_batch(&batch)
    }

    /// The claimed batches still pending locally (oldest first), by id.
    pub fn pending_batches(&self) -> Result<Vec<String>> {
        Ok(self.session().pending()?.into_iter().map(|(id, _)| id).collect())
    }

    /// Deletes this source's ledger rows older than `older_than` whose batch is not held locally (pending or
    /// awaiting confirmation).
    pub fn prune_ledger(&self, older_than: Duration) -> Result<u64> {
        // Under the upload lock, so that no batch is claimed between reading the pending ids and the delete.
        let mut session = Session::new(self.conns);
        let keep: Vec<String> = session.batch_ids()?;
        let secs = i64::try_from(older_than.as_secs()).unwrap_or(i64::MAX);
        let (target, source) = (self.conns.remote.name().clone(), self.cfg.source_id.clone());
        self.conns
            .call_bounded(Side::Remote, "pruning the upload ledger", move |c| {
                uplink::prune(c, &target, &source, secs, &keep)
            })
    }

    /// The warning when the central's meter_readings id is int4 and its sequence is past half (capacity.rs);
    /// None when it is not. One bounded remote query.
    pub fn id_capacity_warning(&self) -> Result<Option<String>> {
        let target = self.conns.remote.name().clone();
        self.conns
            .call_bounded(Side::Remote, "reading the central id's type and sequence", move |c| {
                capacity::id_capacity_warning(c)
                    .map_err(|e| target.err("reading the central id's type and sequence", e))
            })
    }

    /// The drain's local session: FINISH marks instead of deleting when UPLOAD_CONFIRM_SECONDS > 0; the claims
    /// check the readings when UPLOAD_VALIDATE names checks.
    fn session(&self) -> Session<'_> {
        Session::new(self.conns)
            .confirming(self.cfg.upload_confirm_seconds > 0)
            .validating(validate::Validation::new(
                &self.cfg.upload_validate,
                &self.cfg.upload_timestamp_window,
            ))
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
        c.query_typed_one(sql::BACKLOG_EXISTS, &[])
            .map(|r| r.get(0))
            .unwrap_or(false)
    }

    /// True at most once per LEDGER_PRUNE_EVERY per remote database and source, in this process.
    fn prune_due(&self) -> bool {
        static LAST: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);
        let key = format!("{}|{}", self.conns.remote.target(), self.cfg.source_id);
        let mut guard = LAST.lock().unwrap_or_else(|p| p.into_inner());
        let map = guard.get_or_insert_with(HashMap::new);
        match map.get(&key) {
            Some(t) if t.elapsed() < LEDGER_PRUNE_EVERY => false,
            _ => {
                map.insert(key, Instant::now());
                true
            }
        }
    }
}
