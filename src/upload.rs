//! Upload Sync Manager: exactly-once store-and-forward of meter readings (local -> remote).
//!
//! (skeleton: the upload issue fills this in; the types and signatures below are the contract with the
//! scheduler.)

use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::db::ConnectionManager;
use crate::error::Result;

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

pub struct UploadSyncManager<'a> {
    pub conns: &'a ConnectionManager,
    pub cfg: &'a Config,
}

impl<'a> UploadSyncManager<'a> {
    pub fn new(conns: &'a ConnectionManager, cfg: &'a Config) -> UploadSyncManager<'a> {
        UploadSyncManager { conns, cfg }
    }

    /// Recovers claimed batches, then drains the queue batch after batch until it is empty, shutdown is
    /// requested, or `budget` is spent.
    pub fn sync_readings(&self, budget: Duration) -> UploadSyncResult {
        let _ = budget;
        UploadSyncResult { error: Some("upload not implemented yet".into()), ..Default::default() }
    }

    /// Readings waiting locally (claimed or not), not counting quarantined ones.
    pub fn queue_size(&self) -> Result<i64> {
        Ok(0)
    }

    /// Readings in the local quarantine.
    pub fn quarantined_count(&self) -> Result<i64> {
        Ok(0)
    }

    /// Age of the oldest queued reading (now - its created_at), None when the queue is empty.
    pub fn oldest_pending_age(&self) -> Result<Option<Duration>> {
        Ok(None)
    }
}

/// `sync-process quarantine ...` (skeleton).
pub fn quarantine_command(cfg: &Config, cmd: &crate::cli::QuarantineCmd) -> Result<()> {
    let _ = (cfg, cmd);
    Err(crate::error::Error::Other("quarantine: not implemented yet".into()))
}
