//! The JSON Schemas of the tools of `sync-process mcp` (JSON Schema 2020-12, the default of MCP): each tool's
//! inputSchema and the outputSchema its structuredContent conforms to.
//!
//! Owns: the schemas. Does not own: the tools, their arguments and results (tools.rs).

use serde_json::{json, Value};

use super::tools::{CYCLES_DEFAULT, CYCLES_MAX, IDS_MAX, READINGS_DEFAULT, READINGS_MAX};

fn object(properties: Value, required: &[&str]) -> Value {
    json!({ "type": "object", "properties": properties, "required": required })
}

pub fn no_arguments() -> Value {
    json!({ "type": "object", "properties": {}, "additionalProperties": false })
}

fn limit_input(default: i64, max: i64, what: &str) -> Value {
    json!({
        "type": "object",
        "properties": { "limit": {
            "type": "integer", "minimum": 1, "maximum": max, "default": default,
            "description": format!("how many {what} (default {default}, at most {max})"),
        }},
        "additionalProperties": false,
    })
}

pub fn limit_input_cycles() -> Value {
    limit_input(CYCLES_DEFAULT, CYCLES_MAX, "cycles, newest first")
}

pub fn limit_input_readings() -> Value {
    limit_input(READINGS_DEFAULT, READINGS_MAX, "readings, lowest ids first")
}

pub fn ids_input() -> Value {
    json!({
        "type": "object",
        "properties": { "ids": {
            "type": "array", "items": { "type": "integer" }, "minItems": 1, "maxItems": IDS_MAX,
            "description": "ids of quarantined readings, from list_quarantined",
        }},
        "required": ["ids"],
        "additionalProperties": false,
    })
}

fn count() -> Value {
    json!({ "type": "integer", "minimum": 0 })
}

pub fn status_schema() -> Value {
    let (b, n) = (json!({ "type": "boolean" }), count());
    let opt_text = json!({ "type": ["string", "null"] });
    object(
        json!({
            "isRunning": b, "cycleInProgress": b, "lastSyncTime": opt_text, "lastSyncSuccess": b,
            "lastSyncError": opt_text, "queueSize": n, "totalRecordsSynced": n, "localMeterCount": n,
            "remoteMeterCount": n, "localTenantCount": n, "remoteTenantCount": n, "localDbConnected": b,
            "remoteDbConnected": b,
            "oldestPendingAge": { "type": ["integer", "null"], "minimum": 0, "description": "seconds" },
            "quarantinedCount": n, "consecutiveFailures": n, "lastCycleResult": { "type": ["object", "null"] },
        }),
        &[
            "isRunning",
            "lastSyncTime",
            "lastSyncSuccess",
            "lastSyncError",
            "queueSize",
            "totalRecordsSynced",
            "localMeterCount",
            "remoteMeterCount",
            "localTenantCount",
            "remoteTenantCount",
            "localDbConnected",
            "remoteDbConnected",
        ],
    )
}

pub fn health_schema() -> Value {
    let db = object(
        json!({ "target": { "type": "string", "description": "host:port/db" }, "connected": { "type": "boolean" },
                "error": { "type": ["string", "null"] } }),
        &["target", "connected", "error"],
    );
    object(
        json!({
            "healthy": { "type": "boolean" },
            "daemon": object(
                json!({ "address": { "type": ["string", "null"] }, "answered": { "type": "boolean" },
                        "healthy": { "type": "boolean" }, "detail": { "type": "string" } }),
                &["address", "answered", "healthy", "detail"],
            ),
            "localDatabase": db.clone(),
            "remoteDatabase": db,
        }),
        &["healthy", "daemon", "localDatabase", "remoteDatabase"],
    )
}

pub fn cycles_schema() -> Value {
    let opt_int = json!({ "type": ["integer", "null"] });
    let part = object(
        json!({ "syncType": { "type": "string" }, "success": { "type": "boolean" }, "recordsProcessed": opt_int,
                "durationMs": opt_int, "errorMessage": { "type": ["string", "null"] } }),
        &["syncType", "success", "recordsProcessed", "durationMs", "errorMessage"],
    );
    let cycle = object(
        json!({ "time": { "type": "string" }, "success": { "type": "boolean" },
                "parts": { "type": "array", "items": part } }),
        &["time", "success", "parts"],
    );
    object(json!({ "cycles": { "type": "array", "items": cycle } }), &["cycles"])
}

pub fn quarantined_schema() -> Value {
    let (text, opt_text) = (json!({ "type": "string" }), json!({ "type": ["string", "null"] }));
    let reading = object(
        json!({ "id": { "type": "integer" }, "meterId": text, "timestamp": text, "value": text, "unit": text,
                "metadata": opt_text, "error": text, "sqlstate": opt_text, "quarantinedAt": text }),
        &[
            "id",
            "meterId",
            "timestamp",
            "value",
            "unit",
            "metadata",
            "error",
            "sqlstate",
            "quarantinedAt",
        ],
    );
    object(
        json!({ "total": count(), "shown": count(), "readings": { "type": "array", "items": reading } }),
        &["total", "shown", "readings"],
    )
}

pub fn config_schema() -> Value {
    object(
        json!({ "summary": { "type": "string", "description": "as check-config prints it, passwords redacted" } }),
        &["summary"],
    )
}

fn ids_schema(verb: &str) -> Value {
    object(
        json!({ verb: count(), "ids": { "type": "array", "items": { "type": "integer" } } }),
        &[verb, "ids"],
    )
}

pub fn retried_schema() -> Value {
    ids_schema("moved")
}

pub fn discarded_schema() -> Value {
    ids_schema("discarded")
}
