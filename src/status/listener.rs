//! The status server kept trying: STATUS_BIND on a port that is taken (another exporter, a second daemon).
//!
//! Owns: [`StatusListener`] (the first attempt at start, one more per sync interval, logged once when it fails
//! and once when it works; under systemd, [`BIND_ATTEMPTS_UNDER_SYSTEMD`] failures end the daemon with exit 1
//! so that `systemctl status` shows the failure and systemd restarts it). Does not own: the server itself
//! (server.rs) or when the attempts are made (the scheduler calls [`StatusListener::retry`] after a cycle).

use std::time::{Duration, Instant};

use super::StatusServer;
use crate::error::{Error, Result};

/// Failed attempts after which a daemon under systemd gives up on STATUS_BIND and exits 1 (one attempt per
/// SYNC_INTERVAL_SECONDS: about 10 minutes with the default 60 s).
pub const BIND_ATTEMPTS_UNDER_SYSTEMD: u32 = 10;

/// See the module comment. `start` binds and serves (`StatusServer::start` with the daemon's snapshot).
pub struct StatusListener<'a> {
    start: Box<dyn FnMut() -> Result<StatusServer> + 'a>,
    bind: std::net::SocketAddr,
    server: Option<StatusServer>,
    failures: u32,
    last_attempt: Instant,
    give_up: bool,
    last_error: Option<String>,
}

impl<'a> StatusListener<'a> {
    /// The first attempt, now. `give_up`: under systemd (see the module comment).
    pub fn new(
        bind: std::net::SocketAddr,
        give_up: bool,
        start: impl FnMut() -> Result<StatusServer> + 'a,
    ) -> StatusListener<'a> {
        let mut l = StatusListener {
            start: Box::new(start),
            bind,
            server: None,
            failures: 0,
            last_attempt: Instant::now(),
            give_up,
            last_error: None,
        };
        l.attempt();
        l
    }

    fn attempt(&mut self) {
        self.last_attempt = Instant::now();
        match (self.start)() {
            Ok(server) => {
                if self.failures > 0 {
                    log::info!(
                        "status server: listening on {} after {} failed attempt(s)",
                        self.bind,
                        self.failures
                    );
                }
                self.server = Some(server);
                self.last_error = None;
            }
            Err(e) => {
                self.failures += 1;
                if self.failures == 1 {
                    let then = if self.give_up {
                        format!(
                            "trying again each sync interval; after {BIND_ATTEMPTS_UNDER_SYSTEMD} failed attempts the \
                             daemon exits 1 (systemd restarts it)"
                        )
                    } else {
                        "trying again each sync interval".to_string()
                    };
                    log::error!("{e}; the dashboard, /status, /metrics and /healthz are unavailable; {then}");
                } else {
                    log::debug!("{e} (attempt {})", self.failures);
                }
                self.last_error = Some(e.to_string());
            }
        }
    }

    /// After a cycle: one more attempt when the server is not up and an interval has passed since the last.
    /// Err when the daemon should give up (under systemd, too many failures).
    pub fn retry(&mut self, interval: Duration) -> Result<()> {
        // Half an interval of slack: ticks are jittered (SYNC_JITTER_PERCENT) and one attempt per cycle is the
        // intent; a drain's back-to-back cycles do not make attempts faster than that.
        if self.server.is_some() || self.last_attempt.elapsed() < interval / 2 {
            return Ok(());
        }
        self.attempt();
        match &self.last_error {
            Some(e) if self.give_up && self.failures >= BIND_ATTEMPTS_UNDER_SYSTEMD => Err(Error::Other(format!(
                "{e}; giving up after {} attempts (STATUS_BIND: free the port, choose another, or set it empty to \
                 run without the status server)",
                self.failures
            ))),
            _ => Ok(()),
        }
    }

    /// Why the server is not listening, for systemd's STATUS= line (None: it is).
    pub fn problem(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
}
