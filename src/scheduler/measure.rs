//! What the scheduler measures after each cycle for the status snapshot and the alerts: connectivity and counts.
//!
//! Owns: [`Measurement`] and [`measure`]. Does not own: what is done with them (scheduler.rs, status/).

use super::*;

/// Measured after a cycle. None: could not be measured (keep the last value).
#[derive(Clone, Debug, Default)]
pub(super) struct Measurement {
    pub(super) local_up: bool,
    pub(super) remote_up: bool,
    pub(super) queue_size: Option<u64>,
    pub(super) quarantined: Option<u64>,
    pub(super) oldest_pending_age: Option<Option<Duration>>,
    /// Readings awaiting confirmation and the age of the oldest acknowledgement among them.
    pub(super) awaiting: Option<(u64, Option<u64>)>,
    pub(super) local_meters: Option<u64>,
    pub(super) remote_meters: Option<u64>,
    pub(super) local_tenants: Option<u64>,
    pub(super) remote_tenants: Option<u64>,
    /// None when the remote did not answer (the last warnings stay).
    pub(super) warnings: Option<Vec<String>>,
}

fn measured_count(r: Result<i64>, what: &str) -> Option<u64> {
    match r {
        Ok(n) => Some(u64::try_from(n).unwrap_or(0)),
        Err(e) => {
            log::debug!("status: counting {what} failed: {e}");
            None
        }
    }
}

/// Connectivity by `SELECT 1` (one attempt each), then the counts from the sides that answered.
pub(super) fn measure(conns: &ConnectionManager, cfg: &Config) -> Measurement {
    let test = |side: Side| match conns.test(side) {
        Ok(()) => true,
        Err(e) => {
            log::debug!("status: the {side} database does not answer: {e}");
            false
        }
    };
    let (local_up, remote_up) = (test(Side::Local), test(Side::Remote));
    let mut m = Measurement {
        local_up,
        remote_up,
        ..Default::default()
    };
    let upload = UploadSyncManager::new(conns, cfg);
    let download = DownloadSyncManager::new(conns, cfg);
    if local_up {
        m.queue_size = measured_count(upload.queue_size(), "the queue");
        m.quarantined = measured_count(upload.quarantined_count(), "the quarantine");
        m.oldest_pending_age = match upload.oldest_pending_age() {
            Ok(age) => Some(age),
            Err(e) => {
                log::debug!("status: the oldest pending age failed: {e}");
                None
            }
        };
        m.awaiting = match upload.awaiting_confirmation() {
            Ok((n, age)) => Some((u64::try_from(n).unwrap_or(0), age.map(|d| d.as_secs()))),
            Err(e) => {
                log::debug!("status: counting the readings awaiting confirmation failed: {e}");
                None
            }
        };
        m.local_meters = measured_count(download.local_meter_count(), "local meters");
        m.local_tenants = measured_count(download.local_tenant_count(), "local tenants");
    }
    if remote_up {
        m.remote_meters = measured_count(download.remote_meter_count(), "remote meters");
        m.remote_tenants = measured_count(download.remote_tenant_count(), "remote tenants");
        m.warnings = match upload.id_capacity_warning() {
            Ok(w) => Some(w.into_iter().collect()),
            Err(e) => {
                log::debug!("status: checking the central id's capacity failed: {e}");
                None
            }
        };
    }
    m
}

// ---------------------------------------------------------------------------------------------------------
// The entry points.
