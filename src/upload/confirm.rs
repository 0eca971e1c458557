//! The confirmation window (UPLOAD_CONFIRM_SECONDS > 0): a batch the remote acknowledged is not deleted at once
//! but kept, its readings marked `is_synchronized = true` (out of the queue), until the ledger is asked again.
//!
//! Owns: the confirmation step (which batches are due, ONE ledger lookup for many of them, one local statement
//! deleting those it found, a re-upload under the same batch id of those whose ledger row vanished, and the
//! window starting again for them), its counter for /metrics. Does not own: the window's bound (config: at most a quarter of the
//! ledger's retention), the local statements (session.rs), the remote lookup (uplink.rs), one
//! batch's upload with poison handling (drain.rs), when the step runs (drain.rs: after every recovery).
//!
//! Why: a central database with asynchronous standbys can fail over to a standby that never received the last
//! commits; the batches in them lose their ledger row and their readings together. Deleted at once, they would
//! be lost for good; kept for the window, they are sent again. The ledger key still decides every re-send, so
//! exactly-once holds: a batch found in the ledger is never sent again, one not found was never inserted on this
//! remote (or was lost with its ledger row).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::session::Session;
use super::uplink::{ledger_lookup, Uplink};
use super::{Stats, UploadSyncManager};
use crate::db::Side;
use crate::error::Result;

/// At most this many batches are looked up in the ledger in one query.
pub(super) const CONFIRM_CHUNK: i64 = 1000;

/// Batches sent again because their ledger row had vanished, since this process started (for /metrics).
static RESENT_BATCHES: AtomicU64 = AtomicU64::new(0);

/// Batches this process sent again because their ledger row had vanished.
pub fn resent_batches() -> u64 {
    RESENT_BATCHES.load(Ordering::Relaxed)
}

impl UploadSyncManager<'_> {
    /// CONFIRM: every batch whose window has passed is looked up in the ledger, many in one query; those found
    /// are deleted locally (one statement), those not found are uploaded again under their id and wait another
    /// window. A crash at any point leaves each batch awaiting confirmation or gone after a found lookup, never
    /// anything else: the next confirmation settles it the same way.
    ///
    /// Runs with a window of 0 too (one local query that finds nothing, unless the window was just turned off:
    /// then the batches still awaiting confirmation are settled at once).
    pub(super) fn confirm(&self, s: &mut Session, up: &mut Uplink, stats: &mut Stats) -> Result<()> {
        let window = Duration::from_secs(self.cfg.upload_confirm_seconds);
        loop {
            let due = s.due_for_confirmation(window, CONFIRM_CHUNK)?;
            if due.is_empty() {
                return Ok(());
            }
            let ids: Vec<String> = due.iter().map(|(id, _)| id.clone()).collect();
            let present = self.ledger_has(ids)?;
            let found: Vec<String> = due
                .iter()
                .filter(|(id, _)| present.contains(id))
                .map(|(id, _)| id.clone())
                .collect();
            if !found.is_empty() {
                let deleted = s.confirm(&found)?;
                stats.deleted += deleted;
                log::debug!(
                    "upload: {} batch(es) confirmed in the remote ledger; {deleted} readings deleted locally",
                    found.len()
                );
            }
            for (id, first) in due.iter().filter(|(id, _)| !present.contains(id)) {
                self.resend(s, up, id, first, stats)?;
            }
            if (due.len() as i64) < CONFIRM_CHUNK {
                return Ok(());
            }
        }
    }

    /// One batch whose ledger row vanished: uploaded again under its id (the ledger key settles a race with
    /// anything else), then acknowledged again, so it waits another window.
    fn resend(&self, s: &mut Session, up: &mut Uplink, id: &str, first: &str, stats: &mut Stats) -> Result<()> {
        let batch = s.load_batch(id)?;
        log::warn!(
            "upload: batch {id} (first acknowledged at {first}) is no longer in the remote ledger of {} (did the \
             central database fail over?); uploading its {} readings again under the same batch id",
            self.conns.remote.target(),
            batch.len()
        );
        let batch = self.upload_part(s, up, Arc::new(batch), None, stats)?;
        s.acknowledge(&batch.batch_id)?;
        RESENT_BATCHES.fetch_add(1, Ordering::Relaxed);
        stats.batches += 1;
        Ok(())
    }

    /// Which of `ids` the remote ledger holds (one query, bounded in time).
    pub(super) fn ledger_has(&self, ids: Vec<String>) -> Result<HashSet<String>> {
        let (target, source) = (self.conns.remote.name().clone(), self.cfg.source_id.clone());
        let what = format!("looking up {} batch(es) in the upload ledger", ids.len());
        self.conns
            .call_bounded(Side::Remote, &what, move |c| ledger_lookup(c, &target, &source, &ids))
    }
}
