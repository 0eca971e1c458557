//! Status: the daemon's state as others see it, and the small HTTP server that shows it.
//!
//! Owns: [`SyncStatus`] (the design's SyncStatus, JSON in camelCase, plus oldestPendingAge, quarantinedCount,
//! consecutiveFailures, cycleInProgress and lastCycleResult), [`Snapshot`] (the status plus the counters behind
//! /metrics), the renderers ([`render_metrics`], [`health`]), the server ([`StatusServer`]: tiny_http, requests
//! handled on ONE thread, reading only the shared snapshot — never a database — so it can neither block nor be
//! blocked by the sync loop) and the `sync-process status` client ([`print_status`], [`StatusOutcome`]).
//! Does not own: measuring (the scheduler writes the snapshot after each cycle, from the databases).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::report::SyncCycleResult;

/// How long `sync-process status` waits for the daemon.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

/// The status JSON (GET /status). Times are RFC 3339 UTC; `oldestPendingAge` is in seconds (null: empty queue).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// The daemon loop is running (false once shutdown has begun).
    pub is_running: bool,
    /// A cycle is being run right now.
    pub cycle_in_progress: bool,
    pub last_sync_time: Option<String>,
    pub last_sync_success: bool,
    pub last_sync_error: Option<String>,
    pub queue_size: u64,
    /// Readings uploaded since the daemon started.
    pub total_records_synced: u64,
    pub local_meter_count: u64,
    pub remote_meter_count: u64,
    pub local_tenant_count: u64,
    pub remote_tenant_count: u64,
    pub local_db_connected: bool,
    pub remote_db_connected: bool,
    pub oldest_pending_age: Option<u64>,
    pub quarantined_count: u64,
    pub consecutive_failures: u32,
    pub last_cycle_result: Option<SyncCycleResult>,
}

/// Everything the server shows: the status and the counters of /metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub status: SyncStatus,
    pub cycles_total: u64,
    pub cycle_failures_total: u64,
    pub records_quarantined_total: u64,
    /// Duration of the last cycle, milliseconds.
    pub last_cycle_duration_ms: Option<u64>,
    /// Unix seconds of the end of the last successful cycle.
    pub last_success_unix: Option<u64>,
    /// Unix seconds when the daemon started (health grace before the first success).
    pub started_unix: u64,
    /// SYNC_INTERVAL_SECONDS.
    pub interval_secs: u64,
}

/// The snapshot shared by the sync loop (writer) and the status server (reader).
pub type SharedSnapshot = Arc<Mutex<Snapshot>>;

/// Locks the snapshot, ignoring poisoning (a panic elsewhere must not stop status reporting).
pub fn lock(shared: &SharedSnapshot) -> MutexGuard<'_, Snapshot> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// GET /healthz: healthy while the last cycle succeeded, or while the last success (or, before any, the start)
/// is younger than three intervals.
pub fn health(s: &Snapshot, now_unix: u64) -> bool {
    if s.cycles_total > 0 && s.status.last_sync_success {
        return true;
    }
    let since = s.last_success_unix.unwrap_or(s.started_unix);
    now_unix.saturating_sub(since) < s.interval_secs.max(1).saturating_mul(3)
}

/// GET /metrics: Prometheus text exposition format 0.0.4.
pub fn render_metrics(s: &Snapshot) -> String {
    let st = &s.status;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    metric(
        "sync_cycles_total",
        "counter",
        "Sync cycles run since the daemon started.",
        &[("", s.cycles_total.to_string())],
    );
    metric(
        "sync_cycle_failures_total",
        "counter",
        "Sync cycles with at least one failed part since the daemon started.",
        &[("", s.cycle_failures_total.to_string())],
    );
    metric(
        "sync_records_uploaded_total",
        "counter",
        "Readings uploaded to the remote database since the daemon started.",
        &[("", st.total_records_synced.to_string())],
    );
    metric(
        "sync_records_quarantined_total",
        "counter",
        "Readings quarantined (rejected by the remote for a data reason) since the daemon started.",
        &[("", s.records_quarantined_total.to_string())],
    );
    metric(
        "sync_last_cycle_duration_seconds",
        "gauge",
        "Duration of the last sync cycle.",
        &[("", seconds(s.last_cycle_duration_ms.unwrap_or(0)))],
    );
    metric(
        "sync_queue_size",
        "gauge",
        "Readings waiting in the local queue.",
        &[("", st.queue_size.to_string())],
    );
    metric(
        "sync_oldest_pending_age_seconds",
        "gauge",
        "Age of the oldest reading in the local queue (0 when empty).",
        &[("", st.oldest_pending_age.unwrap_or(0).to_string())],
    );
    metric(
        "sync_quarantined_readings",
        "gauge",
        "Readings currently held in the local quarantine.",
        &[("", st.quarantined_count.to_string())],
    );
    metric(
        "sync_last_success_timestamp_seconds",
        "gauge",
        "Unix time of the end of the last successful sync cycle (0: none yet).",
        &[("", s.last_success_unix.unwrap_or(0).to_string())],
    );
    metric(
        "sync_database_up",
        "gauge",
        "Whether the database answered after the last cycle (1) or not (0).",
        &[
            ("{database=\"local\"}", u8::from(st.local_db_connected).to_string()),
            ("{database=\"remote\"}", u8::from(st.remote_db_connected).to_string()),
        ],
    );
    out
}

fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// A response: status code, content type, body.
pub struct Reply {
    pub code: u16,
    pub content_type: &'static str,
    pub body: String,
}

/// Routes one request against a snapshot (pure: the server calls it with a copy taken under the lock).
pub fn route(method: &str, url: &str, s: &Snapshot, now_unix: u64) -> Reply {
    let path = url.split(['?', '#']).next().unwrap_or("");
    let text = "text/plain; charset=utf-8";
    match (method, path) {
        ("GET", "/status") => match serde_json::to_string(&s.status) {
            Ok(body) => Reply {
                code: 200,
                content_type: "application/json",
                body,
            },
            Err(e) => Reply {
                code: 500,
                content_type: text,
                body: format!("encoding the status: {e}\n"),
            },
        },
        ("GET", "/metrics") => Reply {
            code: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: render_metrics(s),
        },
        ("GET", "/healthz") => {
            if health(s, now_unix) {
                Reply {
                    code: 200,
                    content_type: text,
                    body: "ok\n".into(),
                }
            } else {
                Reply {
                    code: 503,
                    content_type: text,
                    body: "unhealthy: no successful sync cycle for 3 intervals\n".into(),
                }
            }
        }
        _ => Reply {
            code: 404,
            content_type: text,
            body: "not found: try /status, /metrics or /healthz\n".into(),
        },
    }
}

/// The HTTP server on STATUS_BIND; stops (and joins its thread) on drop.
pub struct StatusServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl StatusServer {
    pub fn start(bind: SocketAddr, shared: SharedSnapshot) -> Result<StatusServer> {
        let server = tiny_http::Server::http(bind)
            .map_err(|e| Error::Other(format!("status server: cannot listen on {bind}: {e}")))?;
        let addr = server.server_addr().to_ip().unwrap_or(bind);
        let server = Arc::new(server);
        let srv = server.clone();
        let thread = thread::Builder::new()
            .name("status-http".into())
            .spawn(move || serve(&srv, &shared))
            .map_err(|e| Error::io("starting the status server thread", e))?;
        log::info!("status server listening on http://{addr} (/status, /metrics, /healthz)");
        Ok(StatusServer {
            server,
            thread: Some(thread),
            addr,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(server: &tiny_http::Server, shared: &SharedSnapshot) {
    loop {
        let request = match server.recv() {
            Ok(r) => r,
            Err(e) => {
                // recv fails when unblocked (shutdown) or on a broken listener: either way stop.
                log::debug!("status server stops: {e}");
                return;
            }
        };
        let snapshot = lock(shared).clone();
        let reply = route(request.method().as_str(), request.url(), &snapshot, unix_now());
        let mut response = tiny_http::Response::from_string(reply.body).with_status_code(reply.code);
        if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], reply.content_type.as_bytes()) {
            response.add_header(h);
        }
        if let Err(e) = request.respond(response) {
            log::debug!("status server: answering a request failed: {e}");
        }
    }
}

/// The address to ask for a bind address: a wildcard bind is asked on loopback.
pub fn client_addr(bind: SocketAddr) -> SocketAddr {
    match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), bind.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), bind.port()),
        _ => bind,
    }
}

/// What `sync-process status` found (main turns it into the exit code: 0, 1, 2 in this order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusOutcome {
    /// The daemon answered; its status was printed.
    Shown,
    /// Nothing answers on the status address, or something that is not a sync-process daemon.
    NoDaemon,
    /// STATUS_BIND is empty: the status server is off, there is nothing to ask.
    Off,
}

/// `sync-process status [--json]`: GET /status from the running daemon and print it; why not, on stderr.
pub fn print_status(cfg: &Config, json: bool) -> Result<StatusOutcome> {
    let Some(bind) = cfg.status_bind else {
        eprintln!("STATUS_BIND is empty: the status server is off, so there is no daemon to ask (set STATUS_BIND, e.g. 127.0.0.1:9187)");
        return Ok(StatusOutcome::Off);
    };
    let addr = client_addr(bind);
    let agent = ureq::AgentBuilder::new().timeout(CLIENT_TIMEOUT).redirects(0).build();
    let body = match agent.get(&format!("http://{addr}/status")).call() {
        Ok(resp) => match resp.into_string() {
            Ok(b) => b,
            Err(e) => {
                eprintln!("no sync-process daemon answers on {addr} (reading the answer failed: {e})");
                return Ok(StatusOutcome::NoDaemon);
            }
        },
        Err(ureq::Error::Status(code, _)) => {
            eprintln!("no sync-process daemon answers on {addr} (something answers there, with HTTP status {code})");
            return Ok(StatusOutcome::NoDaemon);
        }
        Err(ureq::Error::Transport(t)) => {
            let why = std::error::Error::source(&t)
                .map(|s| s.to_string())
                .unwrap_or_else(|| t.kind().to_string());
            eprintln!("no sync-process daemon answers on {addr} ({why})");
            return Ok(StatusOutcome::NoDaemon);
        }
    };
    let value: serde_json::Value = match serde_json::from_str(&body) {
        Ok(v @ serde_json::Value::Object(_)) if v.get("isRunning").is_some() => v,
        _ => {
            eprintln!("no sync-process daemon answers on {addr} (something answers there, but not with a sync-process status)");
            return Ok(StatusOutcome::NoDaemon);
        }
    };
    if json {
        println!("{body}");
    } else {
        print!("{}", human(&value, addr));
    }
    Ok(StatusOutcome::Shown)
}

/// The status for a person.
pub fn human(v: &serde_json::Value, addr: SocketAddr) -> String {
    use serde_json::Value;
    let b = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let yes = |x: bool| if x { "yes" } else { "no" };
    let up = |x: bool| if x { "connected" } else { "UNREACHABLE" };
    let mut out = String::new();
    let _ = writeln!(out, "sync-process daemon on {addr}");
    let running = if b("cycleInProgress") {
        "yes (a cycle is in progress)".to_string()
    } else {
        yes(b("isRunning")).to_string()
    };
    let _ = writeln!(out, "  running:            {running}");
    let last = match s("lastSyncTime") {
        None => "none yet".to_string(),
        Some(t) if b("lastSyncSuccess") => format!("{t}, succeeded"),
        Some(t) => format!(
            "{t}, FAILED: {}",
            s("lastSyncError").unwrap_or_else(|| "unknown error".into())
        ),
    };
    let _ = writeln!(out, "  last cycle:         {last}");
    if n("consecutiveFailures") > 0 {
        let _ = writeln!(out, "  failures in a row:  {}", n("consecutiveFailures"));
    }
    let oldest = match v.get("oldestPendingAge").and_then(Value::as_u64) {
        Some(age) => format!(
            ", oldest waiting {}",
            humantime::format_duration(Duration::from_secs(age))
        ),
        None => String::new(),
    };
    let _ = writeln!(out, "  queue:              {} readings{oldest}", n("queueSize"));
    let _ = writeln!(out, "  quarantined:        {} readings", n("quarantinedCount"));
    let _ = writeln!(
        out,
        "  uploaded:           {} readings since start",
        n("totalRecordsSynced")
    );
    let _ = writeln!(
        out,
        "  meters:             {} local, {} remote",
        n("localMeterCount"),
        n("remoteMeterCount")
    );
    let _ = writeln!(
        out,
        "  tenants:            {} local, {} remote",
        n("localTenantCount"),
        n("remoteTenantCount")
    );
    let _ = writeln!(out, "  local database:     {}", up(b("localDbConnected")));
    let _ = writeln!(out, "  remote database:    {}", up(b("remoteDbConnected")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_rules() {
        let mut s = Snapshot {
            started_unix: 1000,
            interval_secs: 60,
            ..Default::default()
        };
        assert!(health(&s, 1100), "grace before the first cycle");
        assert!(!health(&s, 1180), "three intervals without any success");
        s.cycles_total = 1;
        s.status.last_sync_success = true;
        assert!(health(&s, 99_999));
        s.status.last_sync_success = false;
        s.last_success_unix = Some(5000);
        assert!(health(&s, 5179));
        assert!(!health(&s, 5180));
    }

    #[test]
    fn routes() {
        let s = Snapshot::default();
        assert_eq!(route("GET", "/status?x=1", &s, 0).code, 200);
        assert_eq!(route("GET", "/metrics", &s, 0).code, 200);
        assert_eq!(route("POST", "/status", &s, 0).code, 404);
        assert_eq!(route("GET", "/", &s, 0).code, 404);
    }

    #[test]
    fn wildcard_binds_are_asked_on_loopback() {
        assert_eq!(
            client_addr("0.0.0.0:9187".parse().expect("addr")),
            "127.0.0.1:9187".parse().expect("addr")
        );
        assert_eq!(
            client_addr("[::]:1".parse().expect("addr")),
            "[::1]:1".parse().expect("addr")
        );
        assert_eq!(
            client_addr("10.0.0.1:2".parse().expect("addr")),
            "10.0.0.1:2".parse().expect("addr")
        );
    }
}
