//! The tools of `sync-process mcp`: their definitions, schemas and handlers.
//!
//! Owns: [`TOOLS`] (name, description, annotations, handler; the schemas are in schema.rs), the argument checks
//! (a bad argument is an `isError` result the assistant can correct, not a protocol error), the shapes of the
//! structured results, the bounds on what a result carries (cycles, readings, characters of a value), the
//! read-only `sync_logs` query behind `list_recent_cycles`, and [`Toolbox`] (the configuration and one
//! connection manager for the server's life).
//! Does not own: the protocol envelope (mod.rs), the daemon's status and its HTTP client (status.rs), reading
//! and changing the quarantine (quarantine.rs), the redacted configuration text (config.rs), connections and
//! their time bounds (db.rs).

use std::fmt;
use std::thread;
use std::time::Duration;

use postgres::types::Type;
use serde_json::{json, Map, Value};

use super::schema;
use crate::config::Config;
use crate::db::ConnectionManager;
use crate::error::{Error, Result, Side};
use crate::quarantine;
use crate::shutdown::Shutdown;
use crate::status;

/// `list_recent_cycles`: cycles returned by default and at most.
pub const CYCLES_DEFAULT: i64 = 20;
pub const CYCLES_MAX: i64 = 200;
/// `list_quarantined`: readings returned by default and at most.
pub const READINGS_DEFAULT: i64 = 20;
pub const READINGS_MAX: i64 = 100;
/// Longest text of a value, metadata, meter id or error in a result (longer ones are cut, ending in "...").
pub const PREVIEW_CHARS: i32 = 200;
/// Most ids one retry or discard takes.
pub const IDS_MAX: usize = 1000;

/// One tool.
pub struct Tool {
    pub name: &'static str,
    pub title: &'static str,
    pub description: &'static str,
    /// Changes the local database: listed and callable only with `--allow-writes`.
    pub writes: bool,
    /// May delete data for good (annotation `destructiveHint`).
    pub destructive: bool,
    input: fn() -> Value,
    output: fn() -> Value,
    run: fn(&Toolbox, &Map<String, Value>) -> std::result::Result<Outcome, String>,
}

impl fmt::Debug for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tool({})", self.name)
    }
}

impl PartialEq for Tool {
    fn eq(&self, other: &Tool) -> bool {
        self.name == other.name
    }
}

/// Every tool, in the order `tools/list` gives them.
pub static TOOLS: [Tool; 7] = [
    Tool {
        name: "get_status",
        title: "Daemon status",
        description: "The running sync-process daemon's live status (GET /status on STATUS_BIND, the same object \
                      as `sync-process status --json`): whether it runs, the last cycle and its error, queue size, \
                      age of the oldest waiting reading, quarantined count, meter and tenant counts on both sides, \
                      and whether each database answers. An error result says when no daemon answers, and where \
                      it looked.",
        writes: false,
        destructive: false,
        input: schema::no_arguments,
        output: schema::status_schema,
        run: get_status,
    },
    Tool {
        name: "check_health",
        title: "Health check",
        description: "Checks the daemon's /healthz verdict (unhealthy after three intervals without a \
                      successful cycle) and tests both database connections now (SELECT 1, bounded in time), \
                      as `sync-process check-config` does. `healthy` is true only when all three are fine.",
        writes: false,
        destructive: false,
        input: schema::no_arguments,
        output: schema::health_schema,
        run: check_health,
    },
    Tool {
        name: "list_recent_cycles",
        title: "Recent sync cycles",
        description: "The most recent sync cycles from the local sync_logs table, newest first: per cycle its \
                      time and one part per sync type (upload, download_meters, download_tenants) with success, \
                      records processed, duration and error.",
        writes: false,
        destructive: false,
        input: schema::limit_input_cycles,
        output: schema::cycles_schema,
        run: list_recent_cycles,
    },
    Tool {
        name: "list_quarantined",
        title: "Quarantined readings",
        description: "Readings the central database rejected for a data reason, kept locally in sync_quarantine \
                      (lowest ids first): id, meter, timestamp, a preview of value and metadata, the error and \
                      SQLSTATE the remote gave. `total` counts them all. The ids are what retry_quarantined and \
                      discard_quarantined take.",
        writes: false,
        destructive: false,
        input: schema::limit_input_readings,
        output: schema::quarantined_schema,
        run: list_quarantined,
    },
    Tool {
        name: "get_config",
        title: "Configuration",
        description: "The daemon's configuration as `sync-process check-config` prints it (passwords redacted): \
                      both databases as host:port/db with user and sslmode, interval, batch size, retries, pool, \
                      log, status address, alerts.",
        writes: false,
        destructive: false,
        input: schema::no_arguments,
        output: schema::config_schema,
        run: get_config,
    },
    Tool {
        name: "retry_quarantined",
        title: "Retry quarantined readings",
        description: "Moves the given quarantined readings back into the upload queue (same id and values); the \
                      daemon uploads them in its next cycle. One transaction: when an id is not quarantined, \
                      nothing changes and the error names it. Only with --allow-writes.",
        writes: true,
        destructive: false,
        input: schema::ids_input,
        output: schema::retried_schema,
        run: retry_quarantined,
    },
    Tool {
        name: "discard_quarantined",
        title: "Discard quarantined readings",
        description: "Deletes the given quarantined readings for good: they will never reach the central \
                      database. One transaction: when an id is not quarantined, nothing changes and the error \
                      names it. Only with --allow-writes.",
        writes: true,
        destructive: true,
        input: schema::ids_input,
        output: schema::discarded_schema,
        run: discard_quarantined,
    },
];

/// Where a tool name leads.
#[derive(Debug, PartialEq)]
pub enum Lookup {
    Enabled(&'static Tool),
    /// A write tool while the server runs read-only.
    Disabled(&'static Tool),
    Unknown,
}

pub fn lookup(name: &str, allow_writes: bool) -> Lookup {
    match TOOLS.iter().find(|t| t.name == name) {
        None => Lookup::Unknown,
        Some(t) if t.writes && !allow_writes => Lookup::Disabled(t),
        Some(t) => Lookup::Enabled(t),
    }
}

/// The names of the tools this server offers.
pub fn names(allow_writes: bool) -> Vec<&'static str> {
    TOOLS
        .iter()
        .filter(|t| allow_writes || !t.writes)
        .map(|t| t.name)
        .collect()
}

/// The `tools` of `tools/list`: `structured` adds title and outputSchema (2025-06-18 on), `annotations` the
/// hints (2025-03-26 on).
pub fn list(allow_writes: bool, structured: bool, annotations: bool) -> Vec<Value> {
    TOOLS
        .iter()
        .filter(|t| allow_writes || !t.writes)
        .map(|t| {
            let mut v = json!({ "name": t.name, "description": t.description, "inputSchema": (t.input)() });
            if structured {
                v["title"] = json!(t.title);
                v["outputSchema"] = (t.output)();
            }
            if annotations {
                v["annotations"] = json!({
                    "title": t.title,
                    "readOnlyHint": !t.writes,
                    "destructiveHint": t.destructive,
                    // A second retry or discard of the same ids fails and changes nothing.
                    "idempotentHint": true,
                    // Only this box's daemon and its two databases.
                    "openWorldHint": false,
                });
            }
            v
        })
        .collect()
}

/// What a tool call produced.
#[derive(Debug)]
pub struct Outcome {
    pub text: String,
    pub structured: Option<Value>,
    pub is_error: bool,
}

impl Outcome {
    /// A result: the structured content, and its JSON as the text for clients that read only text.
    fn ok(structured: Value) -> Outcome {
        Outcome {
            text: structured.to_string(),
            structured: Some(structured),
            is_error: false,
        }
    }

    pub fn error(text: impl Into<String>) -> Outcome {
        Outcome {
            text: text.into(),
            structured: None,
            is_error: true,
        }
    }

    pub fn disabled(tool: &Tool) -> Outcome {
        Outcome::error(format!(
            "{} changes the local quarantine, and this server runs read-only. To enable retry_quarantined and \
             discard_quarantined, start it as `sync-process mcp --allow-writes` (in the MCP client's \
             configuration: add \"--allow-writes\" after \"mcp\" in the server's args) and reconnect.",
            tool.name
        ))
    }

    pub fn timed_out(tool: &Tool, after: Duration) -> Outcome {
        let unknown = if tool.writes {
            " Whether it changed anything is unknown: call list_quarantined to see which ids are still quarantined."
        } else {
            ""
        };
        Outcome::error(format!(
            "{}: no result within {after:?} (a database or the daemon does not answer); check_health tests \
             each.{unknown}",
            tool.name
        ))
    }
}

/// The configuration and the connection pools (built without connecting) for the server's life.
pub struct Toolbox {
    cfg: Config,
    conns: ConnectionManager,
}

impl Toolbox {
    pub fn new(cfg: &Config) -> Result<Toolbox> {
        Ok(Toolbox {
            cfg: cfg.clone(),
            conns: ConnectionManager::new(cfg, Shutdown::new())?,
        })
    }

    /// How long the loop waits for a call. Every step is bounded on its own (HTTP 3 s, a connection attempt
    /// DB_CONNECTION_TIMEOUT_MS, a statement DB_STATEMENT_TIMEOUT_MS); this only catches what slips through.
    pub fn deadline(&self) -> Duration {
        Duration::from_secs(5) + self.cfg.connection_timeout * 3 + self.cfg.statement_timeout * 2
    }

    pub fn call(&self, tool: &Tool, args: &Map<String, Value>) -> Outcome {
        match (tool.run)(self, args) {
            Ok(outcome) => outcome,
            Err(msg) => Outcome::error(format!("{}: {msg}", tool.name)),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Arguments (pure).

fn check_names(args: &Map<String, Value>, allowed: &[&str]) -> std::result::Result<(), String> {
    match args.keys().find(|k| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) if allowed.is_empty() => Err(format!("unknown argument {k:?}: this tool takes no arguments")),
        Some(k) => Err(format!(
            "unknown argument {k:?}: this tool takes {}",
            allowed.join(", ")
        )),
    }
}

/// `limit`: absent or null gives `default`; else a whole number in 1..=max.
pub fn limit_arg(args: &Map<String, Value>, default: i64, max: i64) -> std::result::Result<i64, String> {
    check_names(args, &["limit"])?;
    match args.get("limit") {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match v.as_i64() {
            Some(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(format!(
                "limit must be a whole number from 1 to {max} (default {default}), not {v}"
            )),
        },
    }
}

/// `ids`: 1..=IDS_MAX reading ids (whole numbers), sorted, without repeats.
pub fn ids_arg(args: &Map<String, Value>) -> std::result::Result<Vec<i64>, String> {
    check_names(args, &["ids"])?;
    let usage = "give the ids of quarantined readings (from list_quarantined), e.g. {\"ids\": [17, 18]}";
    let list = match args.get("ids") {
        None | Some(Value::Null) => return Err(format!("ids is required: {usage}")),
        Some(Value::Array(a)) if a.is_empty() => return Err(format!("ids is empty: {usage}")),
        Some(Value::Array(a)) if a.len() > IDS_MAX => {
            return Err(format!("{} ids given; at most {IDS_MAX} per call", a.len()))
        }
        Some(Value::Array(a)) => a,
        Some(v) => return Err(format!("ids must be a list of whole numbers, not {v}: {usage}")),
    };
    let mut ids = list
        .iter()
        .map(|v| {
            v.as_i64()
                .ok_or_else(|| format!("{v} is not a reading id (a whole number): {usage}"))
        })
        .collect::<std::result::Result<Vec<i64>, String>>()?;
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// An error for the assistant, with what to do where that is clear.
fn describe(e: &Error) -> String {
    let vars = |side: &Side| match side {
        Side::Local => "POSTGRES_SYNC_*",
        Side::Remote => "POSTGRES_CLIENT_*",
    };
    match e {
        Error::Connect { side, .. } | Error::Stalled { side, .. } => format!(
            "{e}. Check that the {side} database runs and is reachable, and its {} settings (get_config shows \
             them; check_health tests both databases).",
            vars(side)
        ),
        _ if e.sqlstate() == Some("42P01") => {
            format!("{e}. The local schema is missing: run `sync-process migrate` on the box.")
        }
        _ => e.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Handlers.

fn get_status(tb: &Toolbox, args: &Map<String, Value>) -> std::result::Result<Outcome, String> {
    check_names(args, &[])?;
    let bind = tb.cfg.status_bind.ok_or_else(|| status::STATUS_OFF.to_string())?;
    let (_, value) = status::fetch_status(status::client_addr(bind)).map_err(|why| {
        format!("{why}. Is the daemon running (e.g. `systemctl status sync-process`)? It serves its status on STATUS_BIND={bind}.")
    })?;
    Ok(Outcome::ok(value))
}

fn check_health(tb: &Toolbox, args: &Map<String, Value>) -> std::result::Result<Outcome, String> {
    check_names(args, &[])?;
    let daemon = match tb.cfg.status_bind {
        None => json!({ "address": null, "answered": false, "healthy": false, "detail": status::STATUS_OFF }),
        Some(bind) => {
            let addr = status::client_addr(bind);
            let (answered, healthy, detail) = match status::daemon_get(addr, "/healthz") {
                Ok((code, body)) => (true, code == 200, format!("HTTP {code}: {}", cut(body.trim(), 200))),
                Err(why) => (false, false, why),
            };
            json!({ "address": addr.to_string(), "answered": answered, "healthy": healthy, "detail": detail })
        }
    };
    let database = |side: Side, tested: Result<()>| {
        let target = tb.conns.db(side).target();
        match tested {
            Ok(()) => json!({ "target": target, "connected": true, "error": null }),
            Err(e) => json!({ "target": target, "connected": false, "error": describe(&e) }),
        }
    };
    let (local, remote) = thread::scope(|s| {
        let local = s.spawn(|| tb.conns.test(Side::Local));
        let remote = tb.conns.test(Side::Remote);
        let local = local
            .join()
            .unwrap_or_else(|_| Err(Error::Other("testing the local database failed (a panic)".into())));
        (local, remote)
    });
    let (local, remote) = (database(Side::Local, local), database(Side::Remote, remote));
    let healthy = daemon["healthy"] == true && local["connected"] == true && remote["connected"] == true;
    Ok(Outcome::ok(json!({
        "healthy": healthy,
        "daemon": daemon,
        "localDatabase": local,
        "remoteDatabase": remote,
    })))
}

/// One sync_logs row.
#[derive(Clone, Debug, PartialEq)]
pub struct LogRow {
    pub time: String,
    pub sync_type: String,
    pub success: bool,
    pub records: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: Option<i32>,
}

/// Rows (newest cycle first, the parts of a cycle together) as cycles: the rows of one cycle share their
/// timestamp (one INSERT per cycle, stamped with the transaction's start).
pub fn group_cycles(rows: &[LogRow]) -> Vec<Value> {
    let mut cycles: Vec<(String, Vec<&LogRow>)> = Vec::new();
    for r in rows {
        match cycles.last_mut() {
            Some((time, parts)) if *time == r.time => parts.push(r),
            _ => cycles.push((r.time.clone(), vec![r])),
        }
    }
    cycles
        .into_iter()
        .map(|(time, parts)| {
            json!({
                "time": time,
                "success": parts.iter().all(|p| p.success),
                "parts": parts.iter().map(|p| json!({
                    "syncType": p.sync_type,
                    "success": p.success,
                    "recordsProcessed": p.records,
                    "durationMs": p.duration_ms,
                    "errorMessage": p.error,
                })).collect::<Vec<_>>(),
            })
        })
        .collect()
}

fn list_recent_cycles(tb: &Toolbox, args: &Map<String, Value>) -> std::result::Result<Outcome, String> {
    let n = limit_arg(args, CYCLES_DEFAULT, CYCLES_MAX)?;
    let db = &tb.conns.local;
    let rows = db
        .try_get()
        .and_then(|mut c| {
            c.query_typed(
                "WITH recent AS (
                   SELECT DISTINCT timestamp FROM sync_logs WHERE timestamp IS NOT NULL
                   ORDER BY timestamp DESC LIMIT $1
                 )
                 SELECT l.timestamp::text AS at_text, l.sync_type::text AS type_text, l.success,
                        l.records_processed, l.duration_ms,
                        CASE WHEN char_length(l.error_message) > $2 THEN left(l.error_message, $2 - 3) || '...'
                             ELSE l.error_message END AS error_text
                 FROM sync_logs l JOIN recent r ON l.timestamp = r.timestamp
                 ORDER BY l.timestamp DESC, l.id",
                &[(&n, Type::INT8), (&PREVIEW_CHARS, Type::INT4)],
            )
            .map_err(|e| db.err("reading sync_logs", e))
        })
        .map_err(|e| describe(&e))?;
    let rows: Vec<LogRow> = rows
        .iter()
        .map(|r| LogRow {
            time: r.get(0),
            sync_type: r.get(1),
            success: r.get(2),
            records: r.get(3),
            duration_ms: r.get(4),
            error: r.get(5),
        })
        .collect();
    Ok(Outcome::ok(json!({ "cycles": group_cycles(&rows) })))
}

fn list_quarantined(tb: &Toolbox, args: &Map<String, Value>) -> std::result::Result<Outcome, String> {
    let n = limit_arg(args, READINGS_DEFAULT, READINGS_MAX)?;
    let (rows, total) = quarantine::list_preview(&tb.conns.local, n, PREVIEW_CHARS).map_err(|e| describe(&e))?;
    let readings = serde_json::to_value(&rows).map_err(|e| format!("encoding the readings: {e}"))?;
    Ok(Outcome::ok(
        json!({ "total": total, "shown": rows.len(), "readings": readings }),
    ))
}

fn get_config(tb: &Toolbox, args: &Map<String, Value>) -> std::result::Result<Outcome, String> {
    check_names(args, &[])?;
    let summary = tb.cfg.summary();
    Ok(Outcome {
        text: summary.clone(),
        structured: Some(json!({ "summary": summary })),
        is_error: false,
    })
}

fn retry_quarantined(tb: &Toolbox, args: &Map<String, Value>) -> std::result::Result<Outcome, String> {
    let ids = ids_arg(args)?;
    let n = quarantine::retry(&tb.conns.local, &ids).map_err(|e| describe(&e))?;
    log::info!("mcp: quarantine: {n} reading(s) moved back to the upload queue");
    Ok(Outcome::ok(json!({ "moved": n, "ids": ids })))
}

fn discard_quarantined(tb: &Toolbox, args: &Map<String, Value>) -> std::result::Result<Outcome, String> {
    let ids = ids_arg(args)?;
    let n = quarantine::discard(&tb.conns.local, &ids, false).map_err(|e| describe(&e))?;
    log::info!("mcp: quarantine: {n} reading(s) discarded");
    Ok(Outcome::ok(json!({ "discarded": n, "ids": ids })))
}

/// At most `max` characters, a cut text ending in "...".
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    s.chars().take(max.saturating_sub(3)).collect::<String>() + "..."
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn limits() {
        assert_eq!(limit_arg(&args(json!({})), 20, 200), Ok(20));
        assert_eq!(limit_arg(&args(json!({"limit": null})), 20, 200), Ok(20));
        assert_eq!(limit_arg(&args(json!({"limit": 200})), 20, 200), Ok(200));
        for bad in [json!(0), json!(201), json!(-1), json!(2.5), json!("5")] {
            let e = limit_arg(&args(json!({ "limit": bad })), 20, 200).expect_err("bad limit");
            assert!(e.contains("from 1 to 200"), "{e}");
        }
        let e = limit_arg(&args(json!({"limt": 3})), 20, 200).expect_err("typo");
        assert!(e.contains("\"limt\"") && e.contains("limit"), "{e}");
    }

    #[test]
    fn ids() {
        assert_eq!(ids_arg(&args(json!({"ids": [5, 3, 5]}))), Ok(vec![3, 5]));
        for (bad, needle) in [
            (json!({}), "ids is required"),
            (json!({"ids": []}), "ids is empty"),
            (json!({"ids": "3"}), "list of whole numbers"),
            (json!({"ids": [1, "x"]}), "\"x\" is not a reading id"),
            (json!({"ids": [1.5]}), "1.5 is not a reading id"),
            (json!({"ids": vec![1; IDS_MAX + 1]}), "at most 1000"),
            (json!({"ids": [1], "all": true}), "unknown argument \"all\""),
        ] {
            let e = ids_arg(&args(bad.clone())).expect_err("bad ids");
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn cycles_are_grouped_by_their_timestamp() {
        let row = |time: &str, t: &str, ok: bool| LogRow {
            time: time.into(),
            sync_type: t.into(),
            success: ok,
            records: Some(1),
            error: (!ok).then(|| "boom".to_string()),
            duration_ms: Some(2),
        };
        let cycles = group_cycles(&[
            row("t2", "upload", true),
            row("t2", "download_meters", false),
            row("t1", "upload", true),
        ]);
        assert_eq!(cycles.len(), 2);
        assert_eq!(cycles[0]["time"], "t2");
        assert_eq!(cycles[0]["success"], false);
        assert_eq!(cycles[0]["parts"][1]["errorMessage"], "boom");
        assert_eq!(cycles[1]["success"], true);
        assert_eq!(cycles[1]["parts"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn tool_list_by_revision_and_flag() {
        assert_eq!(names(false).len(), 5);
        assert_eq!(names(true).len(), 7);
        for t in list(true, true, true) {
            let name = t["name"].as_str().unwrap_or_default();
            assert!(!name.is_empty() && name.len() <= 128);
            assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "{name}");
            assert_eq!(t["inputSchema"]["type"], "object", "{name}");
            assert_eq!(t["outputSchema"]["type"], "object", "{name}");
            let a = &t["annotations"];
            let writes = name == "retry_quarantined" || name == "discard_quarantined";
            assert_eq!(a["readOnlyHint"], !writes, "{name}");
            assert_eq!(a["destructiveHint"], name == "discard_quarantined", "{name}");
        }
        let old = list(false, false, false);
        assert!(old
            .iter()
            .all(|t| t.get("outputSchema").is_none() && t.get("annotations").is_none()));
        assert_eq!(lookup("discard_quarantined", false), Lookup::Disabled(&TOOLS[6]));
        assert_eq!(lookup("discard_quarantined", true), Lookup::Enabled(&TOOLS[6]));
        assert_eq!(lookup("rm_rf", true), Lookup::Unknown);
    }

    #[test]
    fn cut_keeps_short_texts() {
        assert_eq!(cut("abc", 5), "abc");
        assert_eq!(cut("abcdefgh", 5), "ab...");
        assert_eq!(cut("ééééééé", 6).chars().count(), 6);
    }
}
