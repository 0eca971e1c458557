//! Integration tests: `sync-process mcp`, driven with raw JSON-RPC lines on its stdin as an MCP client would,
//! against a real daemon and database pair; and once with the official MCP Python SDK
//! (tests/mcp_sdk_client.py).

mod client;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use postgres::Client;
use serde_json::{json, Value};

use crate::support::daemon::{run_command, Daemon, BIN};
use crate::support::env::{closed_port, count, Env, Migrate};
use crate::support::wait_until;
use client::{assert_no_password, Mcp};

const PATIENCE: Duration = Duration::from_secs(60);
/// Passwords of the test databases (trust authentication ignores them): none may appear in any output.
const SECRET_LOCAL: &str = "pw-local-mcp-must-never-show-51d2";
const SECRET_REMOTE: &str = "pw-remote-mcp-must-never-show-9c0e";
const READ_TOOLS: [&str; 5] = [
    "get_status",
    "check_health",
    "list_recent_cycles",
    "list_quarantined",
    "get_config",
];

/// A fresh pair (migrated or not) with distinctive passwords and a status address.
fn mcp_env(migrate: Migrate, status_port: u16) -> Env {
    let bind = format!("127.0.0.1:{status_port}");
    Env::builder()
        .migrate(migrate)
        .vars(&[
            ("POSTGRES_SYNC_PASSWORD", SECRET_LOCAL),
            ("POSTGRES_CLIENT_PASSWORD", SECRET_REMOTE),
            ("STATUS_BIND", &bind),
            // One cycle, then the daemon sits still while the test compares.
            ("SYNC_INTERVAL_SECONDS", "3600"),
            ("LOG_LEVEL", "info"),
        ])
        .build()
}

fn http_status(addr: SocketAddr) -> Option<Value> {
    let (code, body) = sync_process::status::daemon_get(addr, "/status").ok()?;
    (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
}

/// Starts the daemon and waits for the end of its first cycle.
fn start_daemon(env: &BTreeMap<String, String>, port: u16) -> Daemon {
    let d = Daemon::spawn(&["run"], env);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let done = wait_until(PATIENCE, || {
        http_status(addr).is_some_and(|v| v["lastSyncTime"].is_string() && v["cycleInProgress"] == false)
    });
    assert!(done, "the daemon finished a cycle; stderr:\n{}", d.stderr_text());
    d
}

/// Three quarantined readings, one with a 100 kB metadata document and a 5,000-digit value.
fn seed_quarantine(local: &mut Client) -> Vec<i64> {
    local
        .batch_execute(
            "INSERT INTO sync_quarantine (id, meter_id, timestamp, value, unit, metadata, created_at, error, sqlstate)
             VALUES (9001, 'm-1', '2024-01-01 00:00:00', 1.5, 'kWh', '{\"a\":1}', now(), 'check violation', '23514'),
                    (9002, 'm-2', '2024-01-01 00:00:01', repeat('7', 5000)::numeric, 'kWh',
                     jsonb_build_object('blob', repeat('x', 100000)), now(), 'value out of range', '22003'),
                    (9003, 'm-3', '2024-01-01 00:00:02', 3, 'kWh', NULL, now(), 'null value', '23502')",
        )
        .expect("seeding the quarantine");
    vec![9001, 9002, 9003]
}

// ---------------------------------------------------------------------------------------------------------

// The handshake, the tool list with and without --allow-writes, the per-request form of 2026-07-28, and
// every protocol error code, on the real binary.
#[test]
fn handshake_tool_list_and_error_codes() {
    let world = mcp_env(Migrate::Nothing, closed_port());
    let env = world.map.clone();

    let mut m = Mcp::start(&["mcp"], &env);
    let init = m.initialize("2025-11-25");
    assert_eq!(init["protocolVersion"], "2025-11-25");
    assert_eq!(init["serverInfo"]["name"], "sync-process");
    assert_eq!(init["serverInfo"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(init["capabilities"]["tools"].is_object(), "{init}");
    assert!(init["instructions"]
        .as_str()
        .is_some_and(|t| t.contains("list_quarantined")));
    assert_eq!(m.request("ping", json!({}))["result"], json!({}));
    assert_eq!(m.tool_names(), READ_TOOLS);
    let listed = m.request("tools/list", json!({}));
    for t in listed["result"]["tools"].as_array().expect("tools") {
        assert_eq!(t["annotations"]["readOnlyHint"], true, "{t}");
        assert_eq!(t["annotations"]["destructiveHint"], false, "{t}");
        assert_eq!(t["inputSchema"]["type"], "object", "{t}");
        assert_eq!(t["outputSchema"]["type"], "object", "{t}");
        assert!(t["description"].as_str().is_some_and(|d| d.len() > 40), "{t}");
    }
    // The write tools exist only with the flag; calling one says how to enable it.
    for tool in ["retry_quarantined", "discard_quarantined"] {
        let text = m.tool_error(tool, json!({ "ids": [1] }));
        assert!(text.contains("--allow-writes") && text.contains("read-only"), "{text}");
    }
    // A bad argument is a tool error the assistant can correct.
    let text = m.tool_error("list_recent_cycles", json!({ "limit": 0 }));
    assert!(text.contains("limit must be a whole number from 1 to 200"), "{text}");
    let text = m.tool_error("get_config", json!({ "verbose": true }));
    assert!(text.contains("takes no arguments"), "{text}");

    // Protocol errors.
    let err = |m: &mut Mcp, raw: &str| -> Value {
        m.send(&format!("{raw}\n"));
        let v = m.recv();
        assert!(v["error"]["code"].is_i64(), "{raw}: {v}");
        v
    };
    let v = err(&mut m, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":");
    assert_eq!(
        (v["error"]["code"].as_i64(), v["id"].clone()),
        (Some(-32700), Value::Null),
        "{v}"
    );
    let v = err(&mut m, "{\"jsonrpc\":\"2.0\",\"id\":77}");
    assert_eq!(
        (v["error"]["code"].as_i64(), v["id"].clone()),
        (Some(-32600), json!(77)),
        "{v}"
    );
    let v = err(&mut m, "[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}]");
    assert_eq!(v["error"]["code"], -32600, "{v}");
    let v = err(&mut m, "{\"jsonrpc\":\"2.0\",\"id\":null,\"method\":\"ping\"}");
    assert_eq!(v["error"]["code"], -32600, "{v}");
    let v = m.request("resources/list", json!({}));
    assert_eq!(v["error"]["code"], -32601, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|s| s.contains("resources/list")),
        "{v}"
    );
    let v = m.request("tools/call", json!({ "name": "drop_database" }));
    assert_eq!(v["error"]["code"], -32602, "{v}");
    assert_eq!(v["error"]["message"], "Unknown tool: drop_database", "{v}");
    let v = m.request("tools/call", json!({ "arguments": {} }));
    assert_eq!(v["error"]["code"], -32602, "{v}");
    let v = m.request("initialize", json!({ "capabilities": {} }));
    assert_eq!(v["error"]["code"], -32602, "{v}");
    let v = m.request(
        "tools/list",
        json!({ "_meta": { "io.modelcontextprotocol/protocolVersion": "2030-01-01",
                           "io.modelcontextprotocol/clientCapabilities": {} } }),
    );
    assert_eq!(v["error"]["code"], -32022, "{v}");
    assert_eq!(v["error"]["data"]["requested"], "2030-01-01", "{v}");
    // A message longer than 1 MiB is refused and skipped; the next one is answered.
    m.send(&format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"{}\"}}\n",
        "x".repeat(1 << 21)
    ));
    assert_eq!(m.recv()["error"]["code"], -32600);
    assert_eq!(m.request("ping", json!({}))["result"], json!({}));
    // Notifications and stray responses get no answer: the next line on stdout answers the next request.
    m.send("{\"jsonrpc\":\"2.0\",\"method\":\"notifications/cancelled\",\"params\":{\"requestId\":3}}\n");
    m.send("{\"jsonrpc\":\"2.0\",\"id\":\"x\",\"result\":{}}\n\n");
    assert_eq!(m.request("ping", json!({}))["result"], json!({}));
    let (out, _) = m.finish();
    assert!(
        out.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "only JSON on stdout:\n{out}"
    );

    // An unknown version is answered with the newest; an old one is echoed and shapes the tool list.
    let mut m = Mcp::start(&["mcp", "--allow-writes"], &env);
    assert_eq!(m.initialize("2099-12-31")["protocolVersion"], "2025-11-25");
    let mut names = READ_TOOLS.map(String::from).to_vec();
    names.extend(["retry_quarantined".to_string(), "discard_quarantined".to_string()]);
    assert_eq!(m.tool_names(), names);
    let listed = m.request("tools/list", json!({}));
    let tools = listed["result"]["tools"].as_array().expect("tools").clone();
    let hints = |name: &str| {
        let t = tools.iter().find(|t| t["name"] == name).expect("listed");
        (
            t["annotations"]["readOnlyHint"].clone(),
            t["annotations"]["destructiveHint"].clone(),
        )
    };
    assert_eq!(hints("retry_quarantined"), (json!(false), json!(false)));
    assert_eq!(hints("discard_quarantined"), (json!(false), json!(true)));
    assert_eq!(hints("get_status"), (json!(true), json!(false)));
    m.finish();

    let mut m = Mcp::start(&["mcp"], &env);
    assert_eq!(m.initialize("2025-03-26")["protocolVersion"], "2025-03-26");
    let listed = m.request("tools/list", json!({}));
    let first = &listed["result"]["tools"][0];
    assert!(
        first["annotations"].is_object() && first.get("outputSchema").is_none(),
        "{first}"
    );
    let r = m.call("get_config", json!({}));
    assert!(
        r.get("structuredContent").is_none(),
        "no structured content before 2025-06-18: {r}"
    );
    m.finish();

    // The per-request form: no handshake, a version and capabilities in every request's _meta.
    let mut m = Mcp::start(&["mcp"], &env);
    let meta = json!({ "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                       "io.modelcontextprotocol/clientCapabilities": {},
                       "io.modelcontextprotocol/clientInfo": { "name": "it", "version": "1" } });
    let v = m.request("server/discover", json!({ "_meta": meta }));
    assert_eq!(v["result"]["resultType"], "complete", "{v}");
    assert_eq!(v["result"]["supportedVersions"][0], "2026-07-28", "{v}");
    assert_eq!(
        v["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "sync-process"
    );
    let v = m.request("tools/list", json!({ "_meta": meta }));
    assert_eq!(v["result"]["tools"].as_array().map(Vec::len), Some(5), "{v}");
    assert!(
        v["result"]["ttlMs"].is_u64() && v["result"]["cacheScope"] == "private",
        "{v}"
    );
    let v = m.request(
        "tools/call",
        json!({ "_meta": meta, "name": "get_config", "arguments": {} }),
    );
    assert_eq!(v["result"]["resultType"], "complete", "{v}");
    assert!(v["result"]["structuredContent"]["summary"].is_string(), "{v}");
    let v = m.request(
        "tools/call",
        json!({ "_meta": { "io.modelcontextprotocol/protocolVersion": "2026-07-28" },
                                            "name": "get_config" }),
    );
    assert_eq!(v["error"]["code"], -32602, "capabilities are required per request: {v}");
    m.finish();
}

// Every tool against a running daemon and its database pair, answers checked against the databases, the
// daemon's /status and check-config; the quarantine changed through the write tools; no password anywhere.
#[test]
fn every_tool_against_a_running_daemon() {
    let port = closed_port();
    let mut world = mcp_env(Migrate::Both, port);
    let env = world.map.clone();
    let local = &mut world.local;
    local
        .batch_execute(
            "INSERT INTO meter_readings (meter_id, timestamp, value, unit)
             SELECT 'm' || i, TIMESTAMP '2024-01-01' + i * INTERVAL '1 minute', i, 'kWh' FROM generate_series(1, 30) i",
        )
        .expect("seeding readings");
    let mut daemon = start_daemon(&env, port);
    let ids = seed_quarantine(local);

    let mut m = Mcp::start(&["mcp", "--allow-writes"], &env);
    m.initialize("2025-11-25");

    // get_status: the daemon's /status object, as `status --json` prints it.
    let status = m.ok("get_status", json!({}));
    let cli = run_command(&["status", "--json"], &env);
    assert_eq!(cli.status.code(), Some(0), "{}", cli.stderr);
    let cli: Value = serde_json::from_str(cli.stdout.trim()).expect("status --json is JSON");
    assert_eq!(status, cli);
    assert_eq!(status["isRunning"], true);
    assert_eq!(status["totalRecordsSynced"], 30);
    let r = m.call("get_status", json!({}));
    let text: Value = serde_json::from_str(r["content"][0]["text"].as_str().unwrap_or("")).expect("JSON text");
    assert_eq!(text, r["structuredContent"], "the text block carries the same JSON");

    // check_health: daemon and both databases.
    let h = m.ok("check_health", json!({}));
    assert_eq!(h["healthy"], true, "{h}");
    assert_eq!(h["daemon"]["answered"], true, "{h}");
    assert_eq!(h["daemon"]["address"], format!("127.0.0.1:{port}"));
    assert_eq!(h["localDatabase"]["connected"], true, "{h}");
    assert_eq!(
        h["localDatabase"]["target"],
        format!("127.0.0.1:{}/{}", world.pair.local.port(), world.pair.local.name())
    );
    assert_eq!(h["remoteDatabase"]["connected"], true, "{h}");

    // list_recent_cycles: the sync_logs rows of the daemon's cycle.
    let c = m.ok("list_recent_cycles", json!({}));
    let cycles = c["cycles"].as_array().expect("cycles").clone();
    let rows = count(local, "SELECT count(*) FROM sync_logs");
    let parts: usize = cycles.iter().map(|c| c["parts"].as_array().map_or(0, Vec::len)).sum();
    assert_eq!(parts as i64, rows, "{c}");
    assert!(!cycles.is_empty());
    let newest = &cycles[0];
    let types: Vec<&str> = newest["parts"]
        .as_array()
        .expect("parts")
        .iter()
        .filter_map(|p| p["syncType"].as_str())
        .collect();
    assert_eq!(types, ["upload", "download_meters", "download_tenants"], "{newest}");
    assert_eq!(newest["success"], true, "{newest}");
    assert_eq!(newest["parts"][0]["recordsProcessed"], 30, "{newest}");
    assert_eq!(
        m.ok("list_recent_cycles", json!({ "limit": 1 }))["cycles"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // list_quarantined: ids, reasons, SQLSTATEs, bounded previews of the big payload.
    let q = m.ok("list_quarantined", json!({}));
    assert_eq!(q["total"], 3);
    assert_eq!(q["shown"], 3);
    let readings = q["readings"].as_array().expect("readings").clone();
    let got: Vec<i64> = readings.iter().filter_map(|r| r["id"].as_i64()).collect();
    assert_eq!(got, ids);
    assert_eq!(readings[0]["meterId"], "m-1");
    assert_eq!(readings[0]["value"], "1.5");
    assert_eq!(readings[0]["metadata"], "{\"a\": 1}");
    assert_eq!(readings[0]["error"], "check violation");
    assert_eq!(readings[0]["sqlstate"], "23514");
    assert!(readings[0]["timestamp"]
        .as_str()
        .is_some_and(|t| t.starts_with("2024-01-01 00:00:00")));
    for field in ["value", "metadata"] {
        let text = readings[1][field].as_str().expect("text");
        assert!(text.chars().count() <= 200 && text.ends_with("..."), "{field}: {text}");
    }
    assert_eq!(readings[2]["metadata"], Value::Null);
    let one = m.ok("list_quarantined", json!({ "limit": 1 }));
    assert_eq!((one["total"].clone(), one["shown"].clone()), (json!(3), json!(1)));
    assert!(
        m.stdout().lines().all(|l| l.len() < 20_000),
        "no answer carries the 100 kB payload"
    );

    // get_config: exactly what check-config prints, passwords redacted.
    let cfg = m.ok("get_config", json!({}));
    let summary = cfg["summary"].as_str().expect("summary").to_string();
    let check = run_command(&["check-config"], &env);
    assert_eq!(check.status.code(), Some(0), "{}", check.stderr);
    assert!(
        check.stdout.starts_with(&format!("{summary}\n")),
        "{}\n---\n{summary}",
        check.stdout
    );
    assert!(summary.contains("password=[redacted]"), "{summary}");

    // The write tools.
    let r = m.ok("retry_quarantined", json!({ "ids": [9001] }));
    assert_eq!(r, json!({ "moved": 1, "ids": [9001] }));
    assert_eq!(count(local, "SELECT count(*) FROM meter_readings WHERE id = 9001"), 1);
    let r = m.ok("discard_quarantined", json!({ "ids": [9002, 9002] }));
    assert_eq!(r, json!({ "discarded": 1, "ids": [9002] }));
    let text = m.tool_error("discard_quarantined", json!({ "ids": [9002, 9003] }));
    assert!(
        text.contains("no quarantined reading with id 9002; nothing changed"),
        "{text}"
    );
    let text = m.tool_error("retry_quarantined", json!({ "ids": [] }));
    assert!(text.contains("ids is empty"), "{text}");
    assert_eq!(
        count(local, "SELECT count(*) FROM sync_quarantine"),
        1,
        "only 9003 is left"
    );
    assert_eq!(m.ok("list_quarantined", json!({}))["total"], 1);

    let (_, stderr) = m.finish();
    assert!(stderr.contains("1 reading(s) discarded"), "{stderr}");
    daemon.signal("TERM");
    assert_eq!(daemon.wait_timeout(PATIENCE).and_then(|s| s.code()), Some(0));
}

// No daemon: get_status is a tool error saying so and where it looked; check_health reports it next to the
// databases. STATUS_BIND empty: both say the status server is off. A missing local schema names the fix.
#[test]
fn without_a_daemon_or_a_schema() {
    let port = closed_port();
    let world = mcp_env(Migrate::Nothing, port);
    let mut env = world.map.clone();
    let mut m = Mcp::start(&["mcp"], &env);
    m.initialize("2025-11-25");
    let text = m.tool_error("get_status", json!({}));
    assert!(
        text.contains(&format!("no sync-process daemon answers on 127.0.0.1:{port}")),
        "{text}"
    );
    let h = m.ok("check_health", json!({}));
    assert_eq!(h["healthy"], false, "{h}");
    assert_eq!(h["daemon"]["answered"], false, "{h}");
    assert_eq!(h["localDatabase"]["connected"], true, "{h}");
    assert_eq!(h["remoteDatabase"]["connected"], true, "{h}");
    for tool in ["list_quarantined", "list_recent_cycles"] {
        let text = m.tool_error(tool, json!({}));
        assert!(
            text.contains("does not exist") && text.contains("sync-process migrate"),
            "{tool}: {text}"
        );
    }
    m.finish();

    env.insert("STATUS_BIND".into(), String::new());
    let mut m = Mcp::start(&["mcp"], &env);
    m.initialize("2025-11-25");
    assert!(m.tool_error("get_status", json!({})).contains("STATUS_BIND is empty"));
    let h = m.ok("check_health", json!({}));
    assert_eq!(h["daemon"]["address"], Value::Null, "{h}");
    assert!(
        h["daemon"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("STATUS_BIND is empty")),
        "{h}"
    );
    m.finish();

    // A local database that is down: the error names it and what to check.
    env.insert("POSTGRES_SYNC_PORT".into(), closed_port().to_string());
    env.insert("DB_CONNECTION_TIMEOUT_MS".into(), "500".into());
    let mut m = Mcp::start(&["mcp"], &env);
    m.initialize("2025-11-25");
    let text = m.tool_error("list_quarantined", json!({}));
    assert!(
        text.contains("local database 127.0.0.1:") && text.contains("POSTGRES_SYNC_*"),
        "{text}"
    );
    let h = m.ok("check_health", json!({}));
    assert_eq!(h["localDatabase"]["connected"], false, "{h}");
    assert_eq!(h["remoteDatabase"]["connected"], true, "{h}");
    m.finish();
}

// Stdin closed: at once; after half a message (dropped, exit 0, nothing on stdout); right after a request
// (the request is still answered, then exit 0).
#[test]
fn stdin_closed_mid_request() {
    let world = mcp_env(Migrate::Nothing, closed_port());
    let env = world.map.clone();

    let mut m = Mcp::start(&["mcp"], &env);
    m.close_stdin();
    assert_eq!(m.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0), "{}", m.stderr());
    assert_eq!(m.stdout(), "");

    let mut m = Mcp::start(&["mcp"], &env);
    m.initialize("2025-11-25");
    m.send("{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"tools/call\",\"params\":{\"name\":\"get_");
    m.close_stdin();
    assert_eq!(m.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0), "{}", m.stderr());
    assert_eq!(
        m.stdout().lines().count(),
        1,
        "only the initialize answer:\n{}",
        m.stdout()
    );
    assert!(m.stderr().contains("in the middle of a message"), "{}", m.stderr());

    let mut m = Mcp::start(&["mcp"], &env);
    m.send("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"check_health\"}}\n");
    m.close_stdin();
    let v = m.recv();
    assert_eq!(v["id"], 1);
    assert_eq!(
        v["result"]["structuredContent"]["localDatabase"]["connected"], true,
        "{v}"
    );
    assert_eq!(m.wait_exit(PATIENCE).and_then(|s| s.code()), Some(0), "{}", m.stderr());
    assert_no_password(&m.stdout(), &m.stderr());
}

/// A Python with the MCP SDK: SYNC_PROCESS_TEST_PYTHON, else target/mcp-venv (made by .ci/run), else python3.
fn sdk_python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/mcp-venv/bin/python3");
    let python = match std::env::var_os("SYNC_PROCESS_TEST_PYTHON") {
        Some(p) => PathBuf::from(p),
        None if venv.exists() => venv,
        None => PathBuf::from("python3"),
    };
    let probe = Command::new(&python)
        .args([
            "-c",
            "import importlib.metadata as m, mcp.client.stdio; print(m.version('mcp'))",
        ])
        .output();
    let version = match probe {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        _ => panic!(
            "the MCP Python SDK is missing for {}: install it with `python3 -m venv target/mcp-venv && \
             target/mcp-venv/bin/pip install 'mcp>=2.3,<3'` (or point SYNC_PROCESS_TEST_PYTHON at a python3 that has it)",
            python.display()
        ),
    };
    let major_minor: Vec<u32> = version.split('.').take(2).filter_map(|p| p.parse().ok()).collect();
    assert!(
        major_minor.len() == 2 && major_minor[0] == 2 && major_minor[1] >= 3,
        "the MCP Python SDK at {} is {version}; the test needs 'mcp>=2.3,<3'",
        python.display()
    );
    python
}

// The official MCP Python SDK (`mcp.client.stdio.stdio_client` + `ClientSession`) against the real binary and
// a running daemon, in both eras: the SDK validates every structured result against its outputSchema.
#[test]
fn the_official_python_sdk_client() {
    let python = sdk_python();
    let port = closed_port();
    let mut world = mcp_env(Migrate::Both, port);
    let env = world.map.clone();
    let mut daemon = start_daemon(&env, port);
    seed_quarantine(&mut world.local);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp_sdk_client.py");
    let mut cmd = Command::new(&python);
    cmd.arg(&script).args([BIN, "mcp"]).env_clear();
    for key in ["PATH", "HOME"] {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    let out = cmd.envs(&env).output().expect("running the SDK client");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "the SDK client failed:\n{stderr}\n{stdout}");
    assert_no_password(&stdout, &stderr);
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));

    assert_eq!(seen["legacy"]["protocol_version"], "2025-11-25");
    assert_eq!(seen["legacy"]["server_name"], "sync-process");
    assert_eq!(seen["modern"]["supported_versions"][0], "2026-07-28");
    let status = http_status(SocketAddr::from(([127, 0, 0, 1], port))).expect("/status");
    for era in ["legacy", "modern"] {
        let s = &seen[era];
        let names: Vec<&str> = s["tools"]
            .as_object()
            .expect("tools")
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = READ_TOOLS.to_vec();
        want.sort_unstable();
        assert_eq!(names, want, "{era}");
        for tool in READ_TOOLS {
            assert_eq!(s["tools"][tool]["read_only"], true, "{era} {tool}");
            assert_eq!(s["tools"][tool]["output_schema"], true, "{era} {tool}");
            assert_eq!(
                s["results"][tool]["is_error"], false,
                "{era} {tool}: {}",
                s["results"][tool]
            );
        }
        let r = &s["results"];
        assert_eq!(r["get_status"]["structured"]["isRunning"], true, "{era}");
        assert_eq!(
            r["get_status"]["structured"]["lastSyncTime"], status["lastSyncTime"],
            "{era}"
        );
        assert_eq!(r["check_health"]["structured"]["healthy"], true, "{era}");
        assert_eq!(r["list_quarantined"]["structured"]["total"], 3, "{era}");
        assert!(
            r["list_recent_cycles"]["structured"]["cycles"][0]["parts"].is_array(),
            "{era}"
        );
        assert!(r["get_config"]["text"]
            .as_str()
            .is_some_and(|t| t.contains("password=[redacted]")));
        assert_eq!(r["discard_quarantined"]["is_error"], true, "{era}");
        assert!(r["discard_quarantined"]["text"]
            .as_str()
            .is_some_and(|t| t.contains("--allow-writes")));
    }
    daemon.signal("TERM");
    assert_eq!(daemon.wait_timeout(PATIENCE).and_then(|s| s.code()), Some(0));
}
