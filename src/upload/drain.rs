//! The drain: the pipelined loop of batches, its recovery, and uploading one batch with poison handling.
//!
//! Owns: [`Pipe`] (where the drain stands between steps: the cursor, the batch claimed ahead, the batches in
//! flight, the one uploaded and not yet deleted), [`Step`], the drain loop with its retry schedule (each
//! attempt is [`UploadSyncManager::attempt`]: recovery when due, one step, and settling the batches in flight
//! after an error), RECOVER (followed by the confirmation step, confirm.rs), and `upload_part` (one batch up, isolating poison on a data error). Does not own:
//! the statements (session.rs, uplink.rs), the probe (poison.rs), the result and counts (mod.rs).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::batch::{ClaimedBatch, QueuedReading, UploadOutcome};
use super::fault::{verdict, CentralFault, Span, Verdict};
use super::poison::{Isolation, MAX_UNEXPLAINED_REJECTIONS};
use super::session::Session;
use super::sizer::Sizer;
use super::uplink::{ledger_lookup, InFlight, Order, Uplink};
use super::width::Width;
use super::{Stats, UploadSyncManager};
use crate::db::Side;
use crate::error::{Error, Result};

/// How a drain ended without error.
pub(super) enum Drained {
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

/// Where the drain stands between steps. Cleared by recovery, which settles every pending batch (and the
/// batch size starts again from BATCH_SIZE).
struct Pipe {
    /// How many readings the next claim asks for (BATCH_SIZE_MAX).
    sizer: Sizer,
    /// How many batches are kept in flight now (up to UPLOAD_BATCHES_IN_FLIGHT).
    width: Width,
    /// The key of the newest claimed batch: the next claim continues after it. None: from the start.
    cursor: Option<super::ClaimCursor>,
    /// The largest reading id when this pipe's first claim from the start ran (Some(None): the table was
    /// empty). Its claims then passed every reading queued before that, so a later claim from the start takes
    /// only the ids above it, those that arrived since, and leaves the drained readings' dead index entries
    /// unvisited. A reading that took a lower id and committed later waits for the next drain.
    pass_began_at: Option<Option<i64>>,
    /// Claimed ahead (while the batch before it was uploading), not yet sent.
    next: Option<ClaimedBatch>,
    /// Sent to the remote, not yet waited for, oldest first.
    in_flight: VecDeque<(Arc<ClaimedBatch>, InFlight)>,
    /// In the remote ledger, not yet deleted locally: the next local statement finishes it.
    uploaded: Option<String>,
}

impl Pipe {
    fn new(sizer: Sizer, width: Width) -> Pipe {
        Pipe {
            sizer,
            width,
            cursor: None,
            pass_began_at: None,
            next: None,
            in_flight: VecDeque::new(),
            uploaded: None,
        }
    }

    /// After a claim that asked for `limit` readings: the next claim's size and key follow from what it took.
    fn took(&mut self, limit: u32, claimed: Option<ClaimedBatch>) -> Option<ClaimedBatch> {
        let (n, bytes) = claimed.as_ref().map_or((0, 0), |b| (b.len(), b.row_bytes));
        self.sizer.claimed(limit, n, bytes);
        self.cursor = claimed.as_ref().and_then(ClaimedBatch::cursor);
        claimed
    }

    /// Sends `batch` after the batches in flight (chained to the newest of them when several may overlap).
    /// Alone at a width of one it goes as the plain statement: nothing is sent after it until it is back
    /// (the width changes only then), so nothing is ever chained to it.
    fn send(&mut self, up: &mut Uplink, batch: ClaimedBatch) -> Result<()> {
        let batch = Arc::new(batch);
        let order = match self.in_flight.back() {
            Some((before, _)) => Order::After(before.batch_id.clone()),
            None if self.width.now() == 1 => Order::Serial,
            None => up.alone(),
        };
        let sent = up.send(Arc::clone(&batch), order, self.width.now())?;
        self.in_flight.push_back((batch, sent));
        Ok(())
    }
}

/// Everything one drain holds across its steps and attempts.
struct Drain<'a> {
    session: Session<'a>,
    uplink: Uplink<'a>,
    pipe: Pipe,
    /// Set at the start and after any error: the next attempt recovers first.
    needs_recovery: bool,
}

impl Drain<'_> {
    /// After an error: the uploads still in flight are waited for (bounded), so that recovery does not race
    /// them; not when the remote went silent or shutdown is under way (that would add a wait per batch in
    /// flight): they are abandoned, and the ledger key settles whichever commits first.
    fn settle_after(&mut self, e: &Error) {
        if matches!(e, Error::Shutdown | Error::Stalled { .. }) {
            self.pipe.in_flight.clear();
            self.uplink.abandon();
        }
        for (_, sent) in self.pipe.in_flight.drain(..) {
            let _ = self.uplink.wait(sent);
        }
        self.needs_recovery = true;
        self.session.forget_broken(e);
    }
}

impl UploadSyncManager<'_> {
    /// Recovers, then delivers batch after batch until the queue is empty, `stop` says so (shutdown or the
    /// budget), or an error outlasts its retries. Each batch gets the full retry schedule.
    pub(super) fn drain(&self, started: Instant, budget: Duration, stats: &mut Stats) -> Result<Drained> {
        let mut d = Drain {
            session: self.session(),
            uplink: Uplink::new(
                self.conns,
                &self.cfg.source_id,
                self.cfg.upload_source_column.as_deref(),
                self.cfg.upload_batches_in_flight,
            ),
            pipe: self.fresh_pipe(),
            needs_recovery: true,
        };
        let what = format!(
            "uploading readings to the remote database {}",
            self.conns.remote.target()
        );
        let stop = || self.conns.shutdown.is_requested() || started.elapsed() >= budget;
        loop {
            match self.conns.retry_query(&what, || self.attempt(&mut d, &stop, stats))? {
                Step::Empty => return Ok(Drained::Empty),
                Step::Stopped => return Ok(Drained::Stopped),
                Step::Delivered => self.pace(started, stats.uploaded),
            }
        }
    }

    /// One attempt of the retry schedule: recovery first when due (every retry starts with it), then one
    /// step; after an error the batches in flight are settled and recovery is due again.
    fn attempt(&self, d: &mut Drain, stop: &dyn Fn() -> bool, stats: &mut Stats) -> Result<Step> {
        let r = self.recover_then_step(d, stop, stats);
        // Readings the claims quarantined for failing an UPLOAD_VALIDATE check (committed, error or not).
        stats.quarantined += d.session.take_invalid();
        if let Err(e) = &r {
            d.settle_after(e);
        }
        r
    }

    fn recover_then_step(&self, d: &mut Drain, stop: &dyn Fn() -> bool, stats: &mut Stats) -> Result<Step> {
        if d.needs_recovery {
            d.pipe = self.fresh_pipe();
            self.recover(&mut d.session, &mut d.uplink, stats)?;
            self.confirm(&mut d.session, &mut d.uplink, stats)?;
            d.needs_recovery = false;
        }
        self.step(&mut d.session, &mut d.uplink, &mut d.pipe, stop, stats)
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
        let started = Instant::now();
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
        while pipe.in_flight.len() < pipe.width.now() && !stop() {
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
            return Err(Error::Internal("upload: no batch in flight".into()));
        };
        let (local_work, waiting) = (started.elapsed(), Instant::now());
        let outcome = up.wait(sent);
        pipe.width.observe(local_work, waiting.elapsed());
        if matches!(outcome, Ok(UploadOutcome::OutOfTurn)) {
            // The chain broke: the batch ahead of this one was not in when it ran (the site's very first chained
            // upload, a rejected batch, or the network delivered this one first). Every batch still in flight
            // was chained to this one, so they come back out of turn too, having inserted nothing.
            // Wait for them all, then recovery sends the pending batches again one by one in claim order (each
            // the new chain head), and the pipeline starts afresh. (Sending them all again at once breaks again
            // as often as not: batches sent within a millisecond on different connections can reach the server
            // in either order.)
            stats.chain_breaks += 1;
            for (_, sent) in pipe.in_flight.drain(..) {
                let _ = up.wait(sent);
            }
            local?;
            *pipe = self.fresh_pipe();
            log::debug!(
                "upload: batch {} ran out of turn; settling the batches in flight again",
                batch.batch_id
            );
            self.recover(s, up, stats)?;
            return Ok(Step::Delivered);
        }
        let batch = self.upload_part(s, up, batch, Some(outcome), stats)?;
        // The local claim ran only when nothing was claimed ahead: a batch claimed ahead and not sent yet (the
        // width went down, or a stop) stays next.
        if let Some(claimed) = local? {
            pipe.next = Some(claimed);
        }
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

    /// A pipe with nothing pending, whose claims start again at BATCH_SIZE.
    fn fresh_pipe(&self) -> Pipe {
        Pipe::new(
            Sizer::new(self.cfg.batch_size, self.cfg.batch_size_max),
            Width::new(self.cfg.upload_batches_in_flight as usize),
        )
    }

    /// The next batch after the newest claimed one (None at the end of the queue), finishing the batch
    /// uploaded last in the same statement. Sets the cursor to the new batch's key.
    fn claim_ahead(&self, s: &mut Session, pipe: &mut Pipe, stats: &mut Stats) -> Result<Option<ClaimedBatch>> {
        let Some(after) = pipe.cursor.take() else {
            return Ok(None);
        };
        let limit = pipe.sizer.limit(pipe.width.now());
        let claimed = match pipe.uploaded.take() {
            Some(prev) => {
                let t0 = Instant::now();
                let (deleted, next) = s.finish_and_claim(&prev, limit, &after)?;
                finished(&prev, deleted, t0, stats);
                next
            }
            None => s.claim(limit, Some(&after))?,
        };
        // At the end of the queue the cursor stays cleared: the next claim starts from the beginning.
        Ok(pipe.took(limit, claimed))
    }

    /// The next batch when nothing is in flight: after the cursor, else from the start of the queue (readings
    /// that arrived older than the cursor wait behind it; after the pipe's first pass, only those with ids
    /// above where it began). A claim from the start must overlap nothing pending, so the uploaded batch is
    /// finished first.
    fn claim_after(&self, s: &mut Session, pipe: &mut Pipe, stats: &mut Stats) -> Result<Option<ClaimedBatch>> {
        if let Some(b) = self.claim_ahead(s, pipe, stats)? {
            return Ok(Some(b));
        }
        self.finish_uploaded(s, pipe, stats)?;
        let limit = pipe.sizer.limit(pipe.width.now());
        let claimed = match pipe.pass_began_at {
            Some(above) => s.claim_late(limit, above.unwrap_or(i64::MIN))?,
            None => {
                pipe.pass_began_at = Some(s.max_reading_id()?);
                s.claim(limit, None)?
            }
        };
        Ok(pipe.took(limit, claimed))
    }

    /// FINISH of the batch uploaded last, if it is still pending.
    fn finish_uploaded(&self, s: &mut Session, pipe: &mut Pipe, stats: &mut Stats) -> Result<()> {
        if let Some(prev) = pipe.uploaded.take() {
            let t0 = Instant::now();
            let (_, deleted) = s.finish(&prev)?;
            finished(&prev, deleted, t0, stats);
        }
        Ok(())
    }

    /// RECOVER: every pending batch is finished (already in the ledger) or uploaded again under its id.
    fn recover(&self, s: &mut Session, up: &mut Uplink, stats: &mut Stats) -> Result<()> {
        let pending = s.pending()?;
        if pending.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = pending.iter().map(|(id, _)| id.clone()).collect();
        let (target, source) = (self.conns.remote.name().clone(), self.cfg.source_id.clone());
        let present = self.conns.call_bounded(
            Side::Remote,
            "looking up claimed batches in the upload ledger",
            move |c| ledger_lookup(c, &target, &source, &ids),
        )?;
        log::info!(
            "upload: recovering {} claimed batch(es): {} already in the remote ledger",
            pending.len(),
            present.len()
        );
        for (id, count) in pending {
            if present.contains(&id) {
                let (_, deleted) = s.finish(&id)?;
                stats.deleted += deleted;
                log::info!("upload: batch {id} ({count} readings) was already uploaded; deleted {deleted} locally");
            } else {
                let batch = s.load_batch(&id)?;
                log::info!(
                    "upload: batch {id} is not in the remote ledger; uploading its {} readings again",
                    batch.len()
                );
                let batch = self.upload_part(s, up, Arc::new(batch), None, stats)?;
                let (_, deleted) = s.finish(&batch.batch_id)?;
                stats.deleted += deleted;
                stats.batches += 1;
            }
        }
        Ok(())
    }

    /// UPLOAD one batch through the uplink (`first`: the outcome of a send already waited for), isolating
    /// poison readings on a data error (they are quarantined and the batch narrowed to the good ones, then
    /// sent again). Returns the batch as it now stands in the ledger.
    pub(super) fn upload_part(
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
                    let sent = up.send(Arc::clone(&batch), up.alone(), 1)?;
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
                Err(e) if matches!(verdict(&e), Verdict::Central(_)) => {
                    let e = self.central_fault(&batch, e);
                    s.note_failure(&batch.batch_id, &e.to_string());
                    return Err(e);
                }
                Err(e) if matches!(verdict(&e), Verdict::MaybeData) => {
                    log::warn!(
                        "upload: the remote rejected batch {} ({} readings) for a data reason; isolating the bad \
                         readings: {e}",
                        batch.batch_id,
                        batch.len()
                    );
                    match self.isolate_rejected(s, &batch, &e) {
                        Ok(Isolation::Bad(bad)) => {
                            let (moved, good) = self.quarantine_rejected(s, &batch, bad)?;
                            stats.quarantined += moved;
                            batch = Arc::new(good);
                        }
                        Ok(Isolation::Unexplained) => {
                            unexplained += 1;
                            if unexplained >= MAX_UNEXPLAINED_REJECTIONS {
                                s.note_failure(&batch.batch_id, &e.to_string());
                                return Err(e);
                            }
                        }
                        Err(storm @ Error::RejectsEverything { .. }) => {
                            s.note_failure(&batch.batch_id, &storm.to_string());
                            return Err(storm);
                        }
                        // A probe met the central's own fault (a part of the batch has no partition, ...).
                        Err(other) if matches!(verdict(&other), Verdict::Central(_)) => {
                            let e = self.central_fault(&batch, other);
                            s.note_failure(&batch.batch_id, &e.to_string());
                            return Err(e);
                        }
                        Err(other) => return Err(other),
                    }
                }
                Err(e) => {
                    if !e.is_transient() {
                        s.note_failure(&batch.batch_id, &e.to_string());
                    }
                    return Err(e);
                }
            }
        }
    }
}

impl UploadSyncManager<'_> {
    /// `e` (a remote error the central's own fault explains) as [`Error::CentralFault`], worded for `batch`.
    fn central_fault(&self, batch: &Arc<ClaimedBatch>, e: Error) -> Error {
        let Verdict::Central(fault) = verdict(&e) else {
            return e;
        };
        // For a missing partition, the readings that have none (their timestamps are what to create).
        let affected: Vec<&QueuedReading> = match &fault {
            CentralFault::NoPartition { .. } => match self.without_partition(batch) {
                Ok(idx) if !idx.is_empty() => idx.iter().map(|&i| &batch.readings[i]).collect(),
                Ok(_) => batch.readings.iter().collect(),
                Err(err) => {
                    log::warn!("upload: {err}");
                    batch.readings.iter().collect()
                }
            },
            _ => batch.readings.iter().collect(),
        };
        let (first, last) = (
            affected.first().map(|r| r.timestamp.to_text()),
            affected.last().map(|r| r.timestamp.to_text()),
        );
        let span = Span {
            first: first.as_deref().unwrap_or(""),
            last: last.as_deref().unwrap_or(""),
            readings: affected.len(),
        };
        Error::CentralFault {
            target: self.conns.remote.name().clone(),
            context: format!("uploading batch {} ({} readings)", batch.batch_id, batch.len()),
            cause: fault.describe(&span, &self.cfg.remote.user),
            sqlstate: fault.sqlstate().to_string(),
        }
    }
}

/// Counts and logs the FINISH of a batch.
fn finished(batch_id: &str, deleted: u64, t0: Instant, stats: &mut Stats) {
    stats.deleted += deleted;
    log::debug!(
        "upload: batch {batch_id} finished, {deleted} readings deleted locally in {} ms",
        t0.elapsed().as_millis()
    );
}
