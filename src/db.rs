//! Database Connection Manager: one r2d2 pool per database, TLS per sslmode, retries with backoff.
//!
//! Owns: [`Database`] (a pool plus which side it is and how to name it in errors) and
//! [`ConnectionManager`] (both databases, the retry policies and the shutdown flag). Pools are built without
//! waiting for a connection (`build_unchecked`): the daemon starts and keeps running while a database is down.
//! Every session gets a connect timeout, TCP keepalives, a TCP user timeout and a server-side
//! statement_timeout, so a remote that stops answering makes an operation fail instead of hanging the daemon.
//! Sessions also pin `DateStyle=ISO, YMD` so that timestamps pass through as text verbatim.
//! Does not own: SQL (each component keeps its own), migrations (migrate.rs).

use std::time::Duration;

use postgres_native_tls::MakeTlsConnector;
use r2d2::{Pool, PooledConnection};
use r2d2_postgres::PostgresConnectionManager;

use crate::config::{Config, DbConfig, SslMode};
use crate::error::{Error, Result, Side};
use crate::retry::{retry, RetryPolicy};
use crate::shutdown::Shutdown;

pub type PgManager = PostgresConnectionManager<MakeTlsConnector>;
pub type Conn = PooledConnection<PgManager>;

/// One database: its pool, its side and its name for messages (`host:port/db`, never the password).
pub struct Database {
    side: Side,
    target: String,
    pool: Pool<PgManager>,
}

impl Database {
    /// Builds the pool without connecting.
    pub fn new(side: Side, db: &DbConfig, cfg: &Config) -> Result<Database> {
        let pg = pg_config(db, cfg);
        let tls = tls_connector(side, db)?;
        let manager = PostgresConnectionManager::new(pg, tls);
        let pool = Pool::builder()
            .max_size(cfg.pool_max)
            .min_idle(Some(0))
            .idle_timeout(Some(cfg.pool_idle_timeout.max(Duration::from_secs(1))))
            .connection_timeout(cfg.connection_timeout)
            // A checkout test costs a round trip per batch over the WAN; broken connections show up as
            // errors on use instead, and r2d2_postgres discards closed ones.
            .test_on_check_out(false)
            .error_handler(Box::new(QuietErrors))
            .build_unchecked(manager);
        Ok(Database { side, target: db.target(), pool })
    }

    pub fn side(&self) -> Side {
        self.side
    }

    /// `host:port/db`.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// One attempt at a connection from the pool (waits at most DB_CONNECTION_TIMEOUT_MS).
    pub fn try_get(&self) -> Result<Conn> {
        self.pool.get().map_err(|source| Error::Connect { side: self.side, target: self.target.clone(), source })
    }

    /// Wraps a `postgres::Error` of this database with what we were doing.
    pub fn err(&self, context: impl Into<String>, source: postgres::Error) -> Error {
        Error::db(self.side, &self.target, context, source)
    }

    /// Connections currently open (idle or in use), for status.
    pub fn open_connections(&self) -> u32 {
        self.pool.state().connections
    }
}

/// r2d2 logs every failed connection attempt at error level by default; we log failures ourselves, with
/// context and backoff, so its own lines go to debug.
#[derive(Debug)]
struct QuietErrors;

impl r2d2::HandleError<postgres::Error> for QuietErrors {
    fn handle_error(&self, error: postgres::Error) {
        log::debug!("pool: connection attempt failed: {error}");
    }
}

/// The postgres settings of one session. The password goes to the driver and nowhere else.
fn pg_config(db: &DbConfig, cfg: &Config) -> postgres::Config {
    let mut pg = postgres::Config::new();
    pg.host(&db.host)
        .port(db.port)
        .dbname(&db.dbname)
        .user(&db.user)
        .password(db.password.expose())
        .application_name("sync-process")
        .connect_timeout(cfg.connection_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3)
        // Unacknowledged data for this long means the link is gone.
        .tcp_user_timeout(cfg.statement_timeout + Duration::from_secs(30))
        .ssl_mode(match db.sslmode {
            SslMode::Disable => postgres::config::SslMode::Disable,
            SslMode::Prefer => postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => postgres::config::SslMode::Require,
        })
        .options(&session_options(cfg.statement_timeout));
    pg
}

/// Server settings for every session (the startup packet's `options`).
pub fn session_options(statement_timeout: Duration) -> String {
    format!(
        "-c statement_timeout={} -c idle_in_transaction_session_timeout={} -c DateStyle=ISO,YMD \
         -c IntervalStyle=postgres -c extra_float_digits=3",
        statement_timeout.as_millis(),
        (statement_timeout * 2).as_millis()
    )
}

/// A TLS connector that checks what the sslmode asks for, as libpq does: prefer and require encrypt
/// without checking the certificate; verify-ca checks the chain against the CA; verify-full also the host
/// name. With a CA file, only that CA is trusted; without one, the system's roots.
fn tls_connector(side: Side, db: &DbConfig) -> Result<MakeTlsConnector> {
    let mut b = native_tls::TlsConnector::builder();
    match db.sslmode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => {
            b.danger_accept_invalid_certs(true).danger_accept_invalid_hostnames(true);
        }
        SslMode::VerifyCa => {
            b.danger_accept_invalid_hostnames(true);
        }
        SslMode::VerifyFull => {}
    }
    if let (Some(path), SslMode::VerifyCa | SslMode::VerifyFull) = (&db.sslrootcert, db.sslmode) {
        let pem = std::fs::read(path).map_err(|e| Error::io(format!("reading CA file {}", path.display()), e))?;
        let cert = native_tls::Certificate::from_pem(&pem).map_err(|source| Error::Tls {
            side,
            context: format!("CA file {} is not a PEM certificate", path.display()),
            source,
        })?;
        b.add_root_certificate(cert).disable_built_in_roots(true);
    }
    let connector = b.build().map_err(|source| Error::Tls { side, context: "building the TLS connector".into(), source })?;
    Ok(MakeTlsConnector::new(connector))
}

/// Both databases, with the retry policies and the shutdown flag that every use needs.
pub struct ConnectionManager {
    pub local: Database,
    pub remote: Database,
    pub connection_retry: RetryPolicy,
    pub query_retry: RetryPolicy,
    pub shutdown: Shutdown,
}

impl ConnectionManager {
    /// Builds both pools without connecting to either.
    pub fn new(cfg: &Config, shutdown: Shutdown) -> Result<ConnectionManager> {
        Ok(ConnectionManager {
            local: Database::new(Side::Local, &cfg.local, cfg)?,
            remote: Database::new(Side::Remote, &cfg.remote, cfg)?,
            connection_retry: RetryPolicy { base: cfg.retry_base_delay, max_retries: cfg.max_connection_retries },
            query_retry: RetryPolicy { base: cfg.retry_base_delay, max_retries: cfg.max_query_retries },
            shutdown,
        })
    }

    pub fn db(&self, side: Side) -> &Database {
        match side {
            Side::Local => &self.local,
            Side::Remote => &self.remote,
        }
    }

    /// A connection to `side`, retried with backoff up to MAX_CONNECTION_RETRIES; each failure is logged with
    /// host and port.
    pub fn get(&self, side: Side) -> Result<Conn> {
        let db = self.db(side);
        retry(&format!("connecting to the {side} database {}", db.target()), self.connection_retry, &self.shutdown, || {
            db.try_get()
        })
    }

    /// Runs `op` on a connection to `side`; a transient failure (including a lost connection) is retried on a
    /// fresh connection up to MAX_QUERY_RETRIES times. `what` names the operation in logs and errors.
    pub fn with_conn<T>(&self, side: Side, what: &str, mut op: impl FnMut(&mut Conn) -> Result<T>) -> Result<T> {
        retry(what, self.query_retry, &self.shutdown, || {
            let mut conn = self.get(side)?;
            op(&mut conn)
        })
    }

    /// Tests a database with `SELECT 1` (one attempt, no retries).
    pub fn test(&self, side: Side) -> Result<()> {
        let db = self.db(side);
        let mut conn = db.try_get()?;
        conn.simple_query("SELECT 1").map_err(|e| db.err("testing the connection", e))?;
        Ok(())
    }
}
