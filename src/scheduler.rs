//! Sync Scheduler (skeleton: the service issue fills this in).

use serde::Serialize;

use crate::config::Config;
use crate::download::{MeterSyncResult, TenantSyncResult};
use crate::error::{Error, Result};
use crate::upload::UploadSyncResult;

/// The contract's SyncCycleResult: what `once` prints. Durations in milliseconds; timestamp RFC 3339 UTC.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncCycleResult {
    pub success: bool,
    pub upload_result: UploadSyncResult,
    pub meter_download_result: MeterSyncResult,
    pub tenant_download_result: TenantSyncResult,
    pub total_duration: u64,
    pub timestamp: String,
}

pub fn run_daemon(cfg: &Config) -> Result<()> {
    let _ = cfg;
    Err(Error::Other("run: not implemented yet".into()))
}

pub fn run_once(cfg: &Config) -> Result<SyncCycleResult> {
    let _ = cfg;
    Err(Error::Other("once: not implemented yet".into()))
}
