//! Download Sync Manager: mirrors meters and tenants from the remote, reporting every change.
//!
//! (skeleton: the download issue fills this in; the types and signatures below are the contract with the
//! scheduler.)

use serde::Serialize;

use crate::config::Config;
use crate::db::ConnectionManager;
use crate::error::Result;

/// The contract's `meterDownloadResult`. `duration` is in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeterSyncResult {
    pub success: bool,
    pub new_meters: u64,
    pub updated_meters: u64,
    pub deleted_meters: u64,
    pub total_meters: u64,
    pub new_meter_ids: Vec<String>,
    pub updated_meter_ids: Vec<String>,
    pub deleted_meter_ids: Vec<String>,
    pub error: Option<String>,
    pub duration: u64,
}

/// One updated tenant and the columns that differed, in schema order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TenantChange {
    pub tenant_id: String,
    #[serde(rename = "changedFields")]
    pub changed_fields: Vec<String>,
}

/// The contract's `tenantDownloadResult`. `duration` is in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantSyncResult {
    pub success: bool,
    pub new_tenants: u64,
    pub updated_tenants: u64,
    pub deleted_tenants: u64,
    pub total_tenants: u64,
    pub new_tenant_ids: Vec<String>,
    pub updated_tenant_ids: Vec<String>,
    pub deleted_tenant_ids: Vec<String>,
    pub tenant_changes: Vec<TenantChange>,
    pub error: Option<String>,
    pub duration: u64,
}

pub struct DownloadSyncManager<'a> {
    pub conns: &'a ConnectionManager,
    pub cfg: &'a Config,
}

impl<'a> DownloadSyncManager<'a> {
    pub fn new(conns: &'a ConnectionManager, cfg: &'a Config) -> DownloadSyncManager<'a> {
        DownloadSyncManager { conns, cfg }
    }

    pub fn sync_meter_configurations(&self) -> MeterSyncResult {
        MeterSyncResult { error: Some("download not implemented yet".into()), ..Default::default() }
    }

    pub fn sync_tenant_data(&self) -> TenantSyncResult {
        TenantSyncResult { error: Some("download not implemented yet".into()), ..Default::default() }
    }

    pub fn local_meter_count(&self) -> Result<i64> {
        Ok(0)
    }
    pub fn remote_meter_count(&self) -> Result<i64> {
        Ok(0)
    }
    pub fn local_tenant_count(&self) -> Result<i64> {
        Ok(0)
    }
    pub fn remote_tenant_count(&self) -> Result<i64> {
        Ok(0)
    }
}
