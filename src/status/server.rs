//! The status HTTP server: tiny_http on one thread, answering from the shared snapshot only.
//!
//! Owns: [`route`] (pure: method and path to a [`Reply`]) and [`StatusServer`] (bind, serve, stop on drop).
//! Does not own: what the pages say (mod.rs, metrics.rs).

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use super::{health, lock, render_metrics, unix_now, SharedSnapshot, Snapshot};
use crate::error::{Error, Result};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let s = Snapshot::default();
        assert_eq!(route("GET", "/status?x=1", &s, 0).code, 200);
        assert_eq!(route("GET", "/metrics", &s, 0).code, 200);
        assert_eq!(route("POST", "/status", &s, 0).code, 404);
        assert_eq!(route("GET", "/", &s, 0).code, 404);
    }
}
