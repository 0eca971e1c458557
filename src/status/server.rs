//! The status HTTP server: an accept thread, a few workers, a bounded queue between them.
//!
//! Owns: [`StatusServer`] (bind, serve, stop on drop), [`route`] (pure: method and path against a snapshot),
//! [`host_allowed`] (pure: the DNS-rebinding guard), and which requests get fresh values (GET/HEAD /status,
//! /metrics and /: [`Fresh`] asked once per request, at most [`FRESH_DEADLINE`](super::FRESH_DEADLINE)).
//! Does not own: what the pages say (mod.rs, metrics.rs, dashboard.rs, history.rs), reading a request
//! (http.rs).
//!
//! Bounds: [`WORKERS`] requests are read and answered at a time, each read within
//! [`REQUEST_TIME`](super::http::REQUEST_TIME) and [`MAX_HEAD`](super::http::MAX_HEAD) bytes; up to [`QUEUED`]
//! accepted connections wait for a worker, and beyond that a connection is answered 503 at once and closed.
//! So a slow client holds one worker for at most two seconds and never the others, and the thread count is
//! fixed (1 + WORKERS + the measuring thread) whatever clients do. Served: GET and HEAD only (others 405), and
//! only to a Host header naming the bind address, localhost, 127.0.0.1, [::1] or a STATUS_ALLOWED_HOSTS entry
//! (others 403: a web page elsewhere must not read the box's status through DNS rebinding).

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Instant;

use super::dashboard;
use super::fresh::{apply, Fresh};
use super::history::{lock_history, SharedHistory};
use super::http::{read_head, write_response, Head, ReadError, REQUEST_TIME};
use super::{client_addr, health, lock, render_metrics, unix_now, SharedSnapshot, Snapshot};
use crate::config::Config;
use crate::error::{Error, Result};

/// Requests served at once.
pub const WORKERS: usize = 4;
/// Accepted connections waiting for a worker; beyond this, 503 at once.
pub const QUEUED: usize = 32;

/// A response: status code, content type, body.
pub struct Reply {
    pub code: u16,
    pub content_type: &'static str,
    pub body: String,
}

const TEXT: &str = "text/plain; charset=utf-8";

fn text(code: u16, body: &str) -> Reply {
    Reply {
        code,
        content_type: TEXT,
        body: body.into(),
    }
}

/// Routes one request against a snapshot (pure: the server calls it with a copy taken under the lock, fresh
/// values laid over it). GET and HEAD are the same here (the server drops the body of a HEAD answer).
pub fn route(method: &str, url: &str, s: &Snapshot, now_unix: u64) -> Reply {
    if method != "GET" && method != "HEAD" {
        return text(405, "only GET and HEAD are served here\n");
    }
    match url.split(['?', '#']).next().unwrap_or("") {
        "/status" => match serde_json::to_string(&s.status) {
            Ok(body) => Reply {
                code: 200,
                content_type: "application/json",
                body,
            },
            Err(e) => text(500, &format!("encoding the status: {e}\n")),
        },
        "/metrics" => Reply {
            code: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: render_metrics(s),
        },
        "/healthz" => {
            if health(s, now_unix) {
                text(200, "ok\n")
            } else {
                text(503, "unhealthy: no successful sync cycle for 3 intervals\n")
            }
        }
        "/" => Reply {
            code: 200,
            content_type: "text/html; charset=utf-8",
            body: dashboard::page(s),
        },
        "/dashboard.js" => Reply {
            code: 200,
            content_type: "text/javascript; charset=utf-8",
            body: dashboard::SCRIPT.into(),
        },
        "/dashboard.css" => Reply {
            code: 200,
            content_type: "text/css; charset=utf-8",
            body: dashboard::STYLE.into(),
        },
        _ => text(404, "not found: try /, /status, /history, /metrics or /healthz\n"),
    }
}

/// The DNS-rebinding guard: the Host header (with or without a port) names the bind address, localhost,
/// 127.0.0.1, [::1], or an entry of STATUS_ALLOWED_HOSTS (lower case; an entry with a port matches only that
/// port). No Host header: refused.
pub fn host_allowed(host: Option<&str>, bind: SocketAddr, allowed: &[String]) -> bool {
    let Some(host) = host else {
        return false;
    };
    let host = host.trim().to_ascii_lowercase();
    let Some(name) = host_name(&host) else {
        return false;
    };
    let bind_name = match bind.ip() {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    ["localhost", "127.0.0.1", "[::1]"].contains(&name)
        || name == bind_name
        || allowed.iter().any(|a| *a == name || *a == host)
}

/// The host part of a Host header value: `[v6]` or `name` without `:port`; None when malformed.
fn host_name(host: &str) -> Option<&str> {
    let (name, port) = if host.starts_with('[') {
        let end = host.find(']')? + 1;
        (&host[..end], &host[end..])
    } else {
        match host.split_once(':') {
            Some((n, _)) => (n, &host[n.len()..]),
            None => (host, ""),
        }
    };
    let port_ok =
        port.is_empty() || (port.len() > 1 && port.starts_with(':') && port[1..].bytes().all(|b| b.is_ascii_digit()));
    (!name.is_empty() && port_ok).then_some(name)
}

/// What the workers share.
struct Ctx {
    snapshot: SharedSnapshot,
    history: SharedHistory,
    fresh: Option<Fresh>,
    bind: SocketAddr,
    allowed_hosts: Vec<String>,
}

impl Ctx {
    fn answer(&self, head: &Head) -> Reply {
        if head.hosts_repeated || !host_allowed(head.host.as_deref(), self.bind, &self.allowed_hosts) {
            return text(
                403,
                "forbidden: this Host is not the status server's address, localhost, or in STATUS_ALLOWED_HOSTS\n",
            );
        }
        let path = head.target.split(['?', '#']).next().unwrap_or("");
        if path == "/history" && (head.method == "GET" || head.method == "HEAD") {
            return Reply {
                code: 200,
                content_type: "application/json",
                body: lock_history(&self.history).to_json(),
            };
        }
        let mut snapshot = lock(&self.snapshot).clone();
        if matches!(path, "/status" | "/metrics" | "/") && matches!(head.method.as_str(), "GET" | "HEAD") {
            if let Some(fresh) = &self.fresh {
                apply(&mut snapshot, &fresh.ask());
            }
        }
        route(&head.method, &head.target, &snapshot, unix_now())
    }

    fn handle(&self, mut stream: TcpStream) {
        let deadline = Instant::now() + REQUEST_TIME;
        let (reply, head_only) = match read_head(&mut stream, deadline) {
            Ok(head) => (self.answer(&head), head.method == "HEAD"),
            Err(ReadError::TooLarge) => (text(431, "request head too large\n"), false),
            Err(ReadError::TimedOut) => (text(408, "request not received in time\n"), false),
            Err(ReadError::Malformed(why)) => (text(400, &format!("bad request: {why}\n")), false),
            Err(ReadError::Gone) => return,
        };
        write_response(
            &mut stream,
            reply.code,
            reply.content_type,
            reply.body.as_bytes(),
            head_only,
        );
    }
}

/// The HTTP server on STATUS_BIND; stops accepting on drop (the workers end when the queue closes).
pub struct StatusServer {
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl StatusServer {
    /// Binds and starts serving. `cfg` gives the local database for fresh values and STATUS_ALLOWED_HOSTS;
    /// without it (tests), only the snapshot is served and only the built-in hosts are allowed.
    pub fn start(
        bind: SocketAddr,
        snapshot: SharedSnapshot,
        history: SharedHistory,
        cfg: Option<&Config>,
    ) -> Result<StatusServer> {
        let listener =
            TcpListener::bind(bind).map_err(|e| Error::io(format!("status server: cannot listen on {bind}"), e))?;
        let addr = listener.local_addr().unwrap_or(bind);
        let fresh = match cfg.map(Fresh::start) {
            Some(Ok(f)) => Some(f),
            Some(Err(e)) => {
                log::error!("status server: {e}; /status shows the values of the last cycle only");
                None
            }
            None => None,
        };
        let ctx = Arc::new(Ctx {
            snapshot,
            history,
            fresh,
            bind: addr,
            allowed_hosts: cfg.map(|c| c.status_allowed_hosts.clone()).unwrap_or_default(),
        });
        let (tx, rx) = crossbeam_channel::bounded::<TcpStream>(QUEUED);
        for i in 0..WORKERS {
            let (ctx, rx) = (Arc::clone(&ctx), rx.clone());
            thread::Builder::new()
                .name(format!("status-http-{i}"))
                .spawn(move || {
                    for stream in rx {
                        ctx.handle(stream);
                    }
                })
                .map_err(|e| Error::io("starting a status server thread", e))?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let accept = thread::Builder::new()
            .name("status-accept".into())
            .spawn(move || accept_loop(&listener, &tx, &stopping))
            .map_err(|e| Error::io("starting the status server thread", e))?;
        log::info!("status server listening on http://{addr}/ (dashboard; /status, /history, /metrics, /healthz)");
        Ok(StatusServer {
            stop,
            accept: Some(accept),
            addr,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn accept_loop(listener: &TcpListener, tx: &crossbeam_channel::Sender<TcpStream>, stop: &AtomicBool) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                log::debug!("status server: accepting a connection failed: {e}");
                continue;
            }
        };
        if let Err(crossbeam_channel::TrySendError::Full(mut stream)) = tx.try_send(stream) {
            write_response(&mut stream, 503, TEXT, b"busy: too many requests at once\n", false);
        }
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept thread with a connection of our own.
        let _ = TcpStream::connect_timeout(&client_addr(self.addr), std::time::Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let s = Snapshot::default();
        assert_eq!(route("GET", "/status?x=1", &s, 0).code, 200);
        assert_eq!(route("HEAD", "/status", &s, 0).code, 200);
        assert_eq!(route("GET", "/metrics", &s, 0).code, 200);
        assert_eq!(route("GET", "/", &s, 0).code, 200);
        assert_eq!(
            route("GET", "/dashboard.js", &s, 0).content_type,
            "text/javascript; charset=utf-8"
        );
        assert_eq!(route("GET", "/nothing", &s, 0).code, 404);
        for m in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT"] {
            assert_eq!(route(m, "/status", &s, 0).code, 405, "{m}");
        }
    }

    #[test]
    fn the_host_check() {
        let local: SocketAddr = "127.0.0.1:17461".parse().expect("addr");
        let lan: SocketAddr = "192.168.7.2:17461".parse().expect("addr");
        let v6: SocketAddr = "[fd00::5]:17461".parse().expect("addr");
        let none: Vec<String> = Vec::new();
        for ok in [
            "localhost",
            "localhost:17461",
            "LocalHost:8080",
            "127.0.0.1",
            "127.0.0.1:17461",
            "[::1]",
            "[::1]:17461",
        ] {
            assert!(host_allowed(Some(ok), local, &none), "{ok}");
            assert!(host_allowed(Some(ok), lan, &none), "{ok}");
        }
        assert!(host_allowed(Some("192.168.7.2:17461"), lan, &none));
        assert!(host_allowed(Some("192.168.7.2"), lan, &none));
        assert!(!host_allowed(Some("192.168.7.2"), local, &none));
        assert!(host_allowed(Some("[fd00::5]:17461"), v6, &none));
        for bad in [
            "evil.example",
            "evil.example:17461",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "localhost:",
            "localhost:x",
            "[::1",
            "",
            "::1",
        ] {
            assert!(!host_allowed(Some(bad), local, &none), "{bad:?}");
        }
        assert!(!host_allowed(None, local, &none), "no Host header");
        let allowed = vec!["box-17.site.example".to_string(), "10.0.0.5:17461".to_string()];
        assert!(host_allowed(Some("box-17.site.example"), local, &allowed));
        assert!(host_allowed(Some("BOX-17.site.example:17461"), local, &allowed));
        assert!(host_allowed(Some("10.0.0.5:17461"), local, &allowed));
        assert!(
            !host_allowed(Some("10.0.0.5:80"), local, &allowed),
            "the entry names a port"
        );
        assert!(!host_allowed(Some("10.0.0.5"), local, &allowed));
    }
}
