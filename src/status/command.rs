//! `sync-process status`: asks the running daemon's status server and prints what it says.
//!
//! Owns: [`print_status`], [`StatusOutcome`], [`human`] (the human-readable form), [`client_addr`], and the
//! client calls that `sync-process mcp` shares ([`daemon_get`], [`fetch_status`], [`STATUS_OFF`]).
//! Does not own: the server (server.rs) or the exit codes (main.rs).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::error::{Error, Result};

/// How long `sync-process status` waits for the daemon.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

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

/// Why there is no daemon to ask when STATUS_BIND is empty.
pub const STATUS_OFF: &str =
    "STATUS_BIND is empty: the status server is off, so there is no daemon to ask (set STATUS_BIND, e.g. 127.0.0.1:17461)";

/// The server `--url` names: `http://HOST:PORT` (a trailing `/` is fine) or `HOST:PORT`.
pub fn url_addr(url: &str) -> Result<SocketAddr> {
    let bad = |why: &str| Error::Usage(format!("status --url {url:?}: {why} (accepted: http://HOST:PORT)"));
    let rest = url.strip_prefix("http://").unwrap_or(url);
    if rest.contains("://") {
        return Err(bad("only http:// (the status server speaks plain HTTP)"));
    }
    let hostport = rest.strip_suffix('/').unwrap_or(rest);
    if hostport.contains('/') {
        return Err(bad("no path: the command asks /status itself"));
    }
    hostport
        .to_socket_addrs()
        .map_err(|e| bad(&format!("not a reachable HOST:PORT ({e})")))?
        .next()
        .ok_or_else(|| bad("the host name has no address"))
}

/// `sync-process status [--json]`: GET /status from the running daemon at `bind` (STATUS_BIND, or `--url`)
/// and print it; why not, on stderr. Needs no other configuration.
pub fn print_status(bind: Option<SocketAddr>, json: bool) -> Result<StatusOutcome> {
    let Some(bind) = bind else {
        eprintln!("{STATUS_OFF}");
        return Ok(StatusOutcome::Off);
    };
    let addr = client_addr(bind);
    let (body, value) = match fetch_status(addr) {
        Ok(answer) => answer,
        Err(why) => {
            eprintln!("{why}");
            return Ok(StatusOutcome::NoDaemon);
        }
    };
    if json {
        crate::output::println(&body)?;
    } else {
        crate::output::print(&human(&value, addr))?;
    }
    Ok(StatusOutcome::Shown)
}

/// GET `path` from the daemon on `addr`: the HTTP status code and body of any answer (an error status
/// included), or why nothing answered ("no sync-process daemon answers on ADDR (...)").
pub fn daemon_get(addr: SocketAddr, path: &str) -> std::result::Result<(u16, String), String> {
    let agent = ureq::AgentBuilder::new().timeout(CLIENT_TIMEOUT).redirects(0).build();
    let (code, resp) = match agent.get(&format!("http://{addr}{path}")).call() {
        Ok(resp) => (resp.status(), resp),
        Err(ureq::Error::Status(code, resp)) => (code, resp),
        Err(ureq::Error::Transport(t)) => {
            let why = std::error::Error::source(&t)
                .map(|s| s.to_string())
                .unwrap_or_else(|| t.kind().to_string());
            return Err(format!("no sync-process daemon answers on {addr} ({why})"));
        }
    };
    resp.into_string()
        .map(|body| (code, body))
        .map_err(|e| format!("no sync-process daemon answers on {addr} (reading the answer failed: {e})"))
}

/// GET /status from the daemon on `addr`: the body and its JSON, or why there is no sync-process status there.
pub fn fetch_status(addr: SocketAddr) -> std::result::Result<(String, serde_json::Value), String> {
    let (code, body) = daemon_get(addr, "/status")?;
    if code != 200 {
        return Err(format!(
            "no sync-process daemon answers on {addr} (something answers there, with HTTP status {code})"
        ));
    }
    match serde_json::from_str(&body) {
        Ok(v @ serde_json::Value::Object(_)) if v.get("isRunning").is_some() => Ok((body, v)),
        _ => Err(format!(
            "no sync-process daemon answers on {addr} (something answers there, but not with a sync-process status)"
        )),
    }
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
    let stale = if b("stale") {
        " (STALE: the local database did not answer now; last measured values)"
    } else {
        ""
    };
    let _ = writeln!(out, "  queue:              {} readings{oldest}{stale}", n("queueSize"));
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
    let alerts: Vec<&str> = v
        .get("activeAlerts")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !alerts.is_empty() {
        let _ = writeln!(out, "  active alerts:      {}", alerts.join(", "));
    }
    let _ = writeln!(out, "  local database:     {}", up(b("localDbConnected")));
    let _ = writeln!(out, "  remote database:    {}", up(b("remoteDbConnected")));
    for c in v
        .get("clientCertificates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let f = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("?");
        let _ = writeln!(
            out,
            "  {} certificate: CN={}, valid until {} ({})",
            f("database"),
            f("subject"),
            f("notAfter"),
            f("file")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_binds_are_asked_on_loopback() {
        assert_eq!(
            client_addr("0.0.0.0:17461".parse().expect("addr")),
            "127.0.0.1:17461".parse().expect("addr")
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
