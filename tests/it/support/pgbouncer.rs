//! PgBouncer in front of a test server: the library's launcher (`sync_process::pgtemp::bouncer`, shared with
//! the fleet benchmark), with a failure to start or to reach it as a test panic that says why.

pub use sync_process::pgtemp::bouncer::{BouncerOptions, PoolMode};

use super::pg::PgServer;

/// A running PgBouncer (RAII); see `sync_process::pgtemp::bouncer`.
pub struct PgBouncer(sync_process::pgtemp::bouncer::PgBouncer);

impl PgBouncer {
    /// Starts PgBouncer in front of `server`, or panics with the reason (a missing binary: what to install).
    pub fn start(server: &PgServer, options: BouncerOptions) -> PgBouncer {
        let bouncer = sync_process::pgtemp::bouncer::PgBouncer::start(server.port(), options);
        PgBouncer(bouncer.unwrap_or_else(|e| panic!("{e}")))
    }

    /// The admin console (`pgbouncer` database; simple query protocol only).
    pub fn admin(&self) -> postgres::Client {
        self.0.admin().unwrap_or_else(|e| panic!("{e}"))
    }
}

impl std::ops::Deref for PgBouncer {
    type Target = sync_process::pgtemp::bouncer::PgBouncer;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}
