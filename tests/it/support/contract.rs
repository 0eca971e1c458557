//! The contract's JSON field names (contract.md), for tests that check the shape of what the program prints.

pub const RESULT_KEYS: &[&str] = &[
    "success",
    "uploadResult",
    "meterDownloadResult",
    "tenantDownloadResult",
    "totalDuration",
    "timestamp",
];
pub const UPLOAD_KEYS: &[&str] = &[
    "success",
    "recordsUploaded",
    "recordsDeleted",
    "recordsQuarantined",
    "error",
    "duration",
];
pub const METER_KEYS: &[&str] = &[
    "success",
    "newMeters",
    "updatedMeters",
    "deletedMeters",
    "totalMeters",
    "newMeterIds",
    "updatedMeterIds",
    "deletedMeterIds",
    "conflictMeterIds",
    "error",
    "duration",
];
pub const TENANT_KEYS: &[&str] = &[
    "success",
    "newTenants",
    "updatedTenants",
    "deletedTenants",
    "totalTenants",
    "newTenantIds",
    "updatedTenantIds",
    "deletedTenantIds",
    "tenantChanges",
    "conflictTenantIds",
    "error",
    "duration",
];
