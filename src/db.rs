//! Database Connection Manager: one r2d2 pool per database, TLS per sslmode, retries with backoff.
//!
//! Owns: [`Database`] (a pool plus which side it is and how to name it in errors) and
//! [`ConnectionManager`] (both databases, the retry policies and the shutdown flag). Pools are built without
//! waiting for a connection (`build_unchecked`): the daemon starts and keeps running while a database is down.
//! Every session gets a connect timeout, TCP keepalives, a TCP user timeout and a server-side
//! statement_timeout, so a remote that stops answering makes an operation fail instead of hanging the daemon.
//! Sessions also pin `DateStyle=ISO, YMD` so that timestamps pass through as text verbatim.
//!
//! A server whose kernel accepts and acknowledges but whose PostgreSQL never answers (a hung process, a
//! middlebox black hole) defeats all of those: the driver's connect timeout covers only the TCP connect and
//! the blocked read never ends. So connection attempts run on a helper thread that the pool waits for at most
//! DB_CONNECTION_TIMEOUT_MS ([`BoundedManager`]), and remote operations can run the same way with
//! [`ConnectionManager::call_bounded`]: a stalled attempt is abandoned (its thread ends whenever the link
//! does) and reported as a transient error, so the cycle fails within a bound and the next one starts fresh.
//!
//! Also owns the small types every component names databases and locks with: [`Side`] and [`Target`]
//! (`local database host:port/db`, how errors name a database), and (db/lock.rs) [`AdvisoryLock`], the RAII
//! session advisory lock on one of the three [`LockKey`]s (released on drop, also when a panic unwinds).
//! Does not own: SQL (each component keeps its own), migrations (migrate.rs).

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres_native_tls::MakeTlsConnector;
use r2d2::{Pool, PooledConnection};

use crate::config::{Config, DbConfig, Secret, SslMode};
use crate::error::{Error, Result};
use crate::retry::{retry, RetryPolicy};
use crate::shutdown::Shutdown;

pub mod identity;
mod lock;

pub use lock::{AdvisoryLock, LockKey};

pub type Conn = PooledConnection<BoundedManager>;

/// Which of the two databases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The sync server on this box (`POSTGRES_SYNC_*`).
    Local,
    /// The central client server (`POSTGRES_CLIENT_*`).
    Remote,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Local => "local",
            Side::Remote => "remote",
        })
    }
}

/// One database as errors and log lines name it: its side and `host:port/db` (never a password). Displays as
/// `local database host:port/db`. Cheap to clone, so work on a helper thread (which cannot borrow the
/// [`Database`]) names its database the same way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    side: Side,
    addr: String,
}

impl Target {
    pub fn new(side: Side, addr: impl Into<String>) -> Target {
        Target {
            side,
            addr: addr.into(),
        }
    }

    pub fn side(&self) -> Side {
        self.side
    }

    /// `host:port/db`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Wraps a `postgres::Error` of this database with what we were doing.
    pub fn err(&self, context: impl Into<String>, source: postgres::Error) -> Error {
        Error::db(self.side, &self.addr, context, source)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} database {}", self.side, self.addr)
    }
}

/// How long a remote call in flight may still take once shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Connection attempts still hanging after their deadline, per database, beyond which new attempts are
/// refused at once rather than piling up threads.
const MAX_HUNG_CONNECTS: usize = 4;

/// r2d2's manager for postgres, with every connection attempt bounded in time (see the module comment).
pub struct BoundedManager {
    inner: Arc<Connector>,
    timeout: Duration,
    hung: Arc<AtomicUsize>,
    /// While set, every connection handed back is closed instead of kept ([`Database::close_idle`]).
    retire: Arc<AtomicBool>,
}

/// How one database is connected to: the session settings without the password, where the password comes
/// from, and the transport: in the clear (sslmode=disable: OpenSSL is never initialised, which saves start
/// time and memory; BENCHMARKS.md), or TLS; then the side's session set-up. Every new connection reads the
/// password file again and rebuilds the TLS connector when its CA, certificate or key file changed, so
/// rotating any of them needs no restart (README: Security).
struct Connector {
    base: postgres::Config,
    password: Password,
    tls: Option<TlsSource>,
    side: Side,
    /// For messages: the user and the variable prefix (`POSTGRES_SYNC` / `POSTGRES_CLIENT`).
    user: String,
    prefix: &'static str,
}

enum Password {
    Given(Secret),
    File(PathBuf),
}

/// The TLS settings of one database and the connector last built from its files.
struct TlsSource {
    db: DbConfig,
    built: Mutex<Option<BuiltTls>>,
}

struct BuiltTls {
    stamps: Vec<identity::FileStamp>,
    connector: MakeTlsConnector,
    certificate: Option<ClientCertificate>,
}

/// The client certificate a database presents: its file, subject and expiry (for /status, /metrics, alerts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertificate {
    pub file: PathBuf,
    pub subject_cn: String,
    pub not_after_unix: i64,
}

impl TlsSource {
    fn files(&self) -> Vec<&PathBuf> {
        [&self.db.sslrootcert, &self.db.sslcert, &self.db.sslkey]
            .into_iter()
            .flatten()
            .collect()
    }

    /// The connector for the files as they are now: the last one built while none of them changed, else a new
    /// one (which reads and checks them again).
    fn current(&self, side: Side) -> std::result::Result<(MakeTlsConnector, Option<ClientCertificate>), String> {
        let stamps = identity::FileStamp::all(self.files());
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = built.as_ref().filter(|b| b.stamps == stamps) {
            return Ok((b.connector.clone(), b.certificate.clone()));
        }
        let (connector, certificate) = tls_connector(side, &self.db).map_err(|e| e.to_string())?;
        if built.is_some() {
            log::info!(
                "{side} database {}: TLS files changed; new connections use them{}",
                self.db.target(),
                certificate
                    .as_ref()
                    .map(|c| format!(
                        " (client certificate {}, CN={}, valid until {})",
                        c.file.display(),
                        c.subject_cn,
                        unix_rfc3339(c.not_after_unix)
                    ))
                    .unwrap_or_default()
            );
        }
        *built = Some(BuiltTls {
            stamps,
            connector: connector.clone(),
            certificate: certificate.clone(),
        });
        Ok((connector, certificate))
    }

    /// The client certificate of the last connector built (None: none configured, or none built yet).
    fn certificate(&self) -> Option<ClientCertificate> {
        self.built
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(|b| b.certificate.clone())
    }
}

/// RFC 3339 UTC of Unix seconds (for messages).
pub fn unix_rfc3339(secs: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Connector {
    fn connect(&self) -> std::result::Result<postgres::Client, ConnectFailure> {
        let mut config = self.base.clone();
        match &self.password {
            Password::Given(p) if !p.expose().is_empty() => {
                config.password(p.expose());
            }
            Password::Given(_) => {}
            Password::File(path) => {
                let p = crate::config::read_password_file(path)
                    .map_err(|msg| ConnectFailure::Files(format!("{}_PASSWORD_FILE: {msg}", self.prefix)))?;
                config.password(p);
            }
        }
        let with_cert = self.tls.as_ref().is_some_and(|t| t.db.sslcert.is_some());
        let refused = |e: postgres::Error| ConnectFailure::from_pg(e, &self.user, self.prefix, with_cert);
        let mut client = match &self.tls {
            None => config.connect(postgres::NoTls).map_err(refused)?,
            Some(tls) => {
                let (connector, certificate) = tls.current(self.side).map_err(ConnectFailure::Files)?;
                if let Some(c) = certificate.filter(|c| c.not_after_unix <= unix_now()) {
                    return Err(ConnectFailure::Files(format!(
                        "the client certificate {} ({}_SSLCERT, CN={}) expired at {}: issue a new one and replace \
                         the file (no restart needed)",
                        c.file.display(),
                        self.prefix,
                        c.subject_cn,
                        unix_rfc3339(c.not_after_unix)
                    )));
                }
                config.connect(connector).map_err(refused)?
            }
        };
        if self.side == Side::Remote {
            client.batch_execute(REMOTE_SESSION_SETUP).map_err(ConnectFailure::Pg)?;
        }
        Ok(client)
    }
}

/// The remote session's one setting. The remote may sit behind a pooler (PgBouncer in transaction pooling),
/// which refuses `options` in the startup packet (1.18) and hands each transaction to any server connection,
/// so a session SET is kept only for the parameters the pooler tracks and replays per client: DateStyle is
/// one of them (client_encoding, DateStyle, TimeZone, standard_conforming_strings, application_name). It keeps
/// the download's `timestamp::text` verbatim on a central whose default DateStyle is not ISO. Nothing else is
/// set on the remote: its statements are unnamed (no plan mode to choose), and its time bounds are kept on
/// this side (`call_bounded`, the uplink's waits), since statement_timeout is not a tracked parameter.
pub const REMOTE_SESSION_SETUP: &str = "SET DateStyle = 'ISO, YMD'";

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum ConnectFailure {
    Pg(postgres::Error),
    /// The server refused this user (authentication or the CONNECT privilege): which user, the server's
    /// words, and what usually causes it.
    Refused {
        user: String,
        source: postgres::Error,
        hint: String,
    },
    /// A password, certificate or key file could not be used (named in the message); nothing was sent.
    Files(String),
    /// The server accepted TCP but did not complete the startup within the timeout.
    TimedOut(Duration),
    /// Earlier attempts are still hanging; no new one was started.
    TooManyHung(usize),
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectFailure::Pg(e) => write!(f, "{}", crate::error::describe_pg_error(e)),
            ConnectFailure::Refused { user, source, hint } => {
                write!(
                    f,
                    "refused for user {user:?}: {}",
                    crate::error::describe_pg_error(source)
                )?;
                if !hint.is_empty() {
                    write!(f, " ({hint})")?;
                }
                Ok(())
            }
            ConnectFailure::Files(msg) => f.write_str(msg),
            ConnectFailure::TimedOut(d) => {
                write!(f, "the server accepted the connection but did not answer within {d:?}")
            }
            ConnectFailure::TooManyHung(n) => {
                write!(f, "{n} earlier connection attempts still wait for the server's answer")
            }
        }
    }
}

impl std::error::Error for ConnectFailure {}

impl ConnectFailure {
    /// A failed connection attempt, with the user and a hint when the server refused the user: SQLSTATE class
    /// 28 (authentication: wrong password, NOLOGIN, certificate) or 42501 (no CONNECT privilege).
    /// `with_cert`: a client certificate was presented.
    fn from_pg(e: postgres::Error, user: &str, prefix: &str, with_cert: bool) -> ConnectFailure {
        let Some(db) = e.as_db_error() else {
            // A TLS alert from the server during the handshake: it refused the certificate presented.
            let text = crate::error::describe_pg_error(&e);
            let hint = match () {
                _ if !with_cert => None,
                _ if text.contains("unknown ca") => Some(format!(
                    "the server does not trust the CA that issued {prefix}_SSLCERT: issue the box's certificate \
                     from the CA in the server's ssl_ca_file"
                )),
                _ if text.contains("certificate expired") => Some(format!(
                    "the server finds the client certificate ({prefix}_SSLCERT) expired: check this box's clock, \
                     or issue a new one"
                )),
                _ if text.contains("alert") && text.contains("certificate") => {
                    Some(format!("the server refused the client certificate ({prefix}_SSLCERT)"))
                }
                // With TLS 1.3 the server checks the certificate after the client's handshake is done; its
                // alert can be lost to the reset of the connection it closes.
                _ if text.contains("Connection reset") || text.contains("unexpected EOF") => Some(format!(
                    "the server closed the connection right after the TLS handshake: it may have refused the \
                     client certificate ({prefix}_SSLCERT), e.g. one issued by a CA that is not in its \
                     ssl_ca_file; the server's log says why"
                )),
                _ => None,
            };
            return match hint {
                Some(hint) => ConnectFailure::Refused {
                    user: user.to_string(),
                    source: e,
                    hint,
                },
                None => ConnectFailure::Pg(e),
            };
        };
        let code = db.code().code();
        if !(code.starts_with("28") || code == "42501") {
            return ConnectFailure::Pg(e);
        }
        let msg = db.message();
        let hint = if msg.contains("not permitted to log in") {
            "the role is NOLOGIN: this box was revoked on the central database; ALTER ROLE ... LOGIN readmits it"
                .to_string()
        } else if code == "42501" {
            "the role lacks CONNECT on this database: this box was revoked (REVOKE CONNECT), or never granted it"
                .to_string()
        } else if msg.contains("password authentication failed") && with_cert {
            // With clientcert=verify-full the server reports a certificate whose CN is not the user name in
            // these same words (the CN mismatch is written only to the server's log).
            format!(
                "the password ({prefix}_PASSWORD or _PASSWORD_FILE) is wrong or was changed on the server, or, \
                 with clientcert=verify-full, the CN of the client certificate ({prefix}_SSLCERT) is not the user \
                 name"
            )
        } else if msg.contains("password authentication failed") {
            format!("the password ({prefix}_PASSWORD or _PASSWORD_FILE) is wrong, or was changed on the server")
        } else if msg.contains("requires a valid client certificate") {
            format!("pg_hba.conf asks this user for a client certificate: set {prefix}_SSLCERT and {prefix}_SSLKEY")
        } else if msg.contains("certificate") {
            format!(
                "the client certificate ({prefix}_SSLCERT) does not authenticate this user: its CN must be the \
                 user name (or mapped to it by pg_ident.conf)"
            )
        } else {
            String::new()
        };
        ConnectFailure::Refused {
            user: user.to_string(),
            source: e,
            hint,
        }
    }
}

impl r2d2::ManageConnection for BoundedManager {
    type Connection = postgres::Client;
    type Error = ConnectFailure;

    fn connect(&self) -> std::result::Result<postgres::Client, ConnectFailure> {
        let hung = self.hung.load(Ordering::SeqCst);
        if hung >= MAX_HUNG_CONNECTS {
            return Err(ConnectFailure::TooManyHung(hung));
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let inner = Arc::clone(&self.inner);
        let spawned = std::thread::Builder::new().name("pg-connect".into()).spawn(move || {
            // If the receiver gave up, the connection (if it ever comes) is simply dropped.
            let _ = tx.send(inner.connect());
        });
        if spawned.is_err() {
            return self.inner.connect();
        }
        match rx.recv_timeout(self.timeout) {
            Ok(result) => result,
            Err(_) => {
                // Count the abandoned attempt until its thread ends.
                self.hung.fetch_add(1, Ordering::SeqCst);
                let hung = Arc::clone(&self.hung);
                let _ = std::thread::Builder::new()
                    .name("pg-connect-wait".into())
                    .spawn(move || {
                        let _ = rx.recv();
                        hung.fetch_sub(1, Ordering::SeqCst);
                    });
                Err(ConnectFailure::TimedOut(self.timeout))
            }
        }
    }

    fn is_valid(&self, conn: &mut postgres::Client) -> std::result::Result<(), ConnectFailure> {
        conn.simple_query("").map(|_| ()).map_err(ConnectFailure::Pg)
    }

    fn has_broken(&self, conn: &mut postgres::Client) -> bool {
        conn.is_closed() || self.retire.load(Ordering::SeqCst)
    }
}

/// One database: its pool, its side and its name for messages (`host:port/db`, never the password).
pub struct Database {
    target: Target,
    pool: Pool<BoundedManager>,
    /// Where a refused TCP connect can be seen at once (None for Unix sockets).
    probe: Option<(String, u16)>,
    timeout: Duration,
    /// Set when connection retries ran out; further uses in the same cycle try once instead of backing off
    /// again (see [`ConnectionManager::begin_cycle`]).
    unreachable: AtomicBool,
    /// Shared with the pool's manager: see [`Database::close_idle`].
    retire: Arc<AtomicBool>,
    /// Shared with the pool's manager: the TLS files and the client certificate.
    connector: Arc<Connector>,
}

impl Database {
    /// Builds the pool without connecting.
    pub fn new(side: Side, db: &DbConfig, cfg: &Config) -> Result<Database> {
        let base = pg_config(side, db, cfg);
        // As libpq, `prefer` over a Unix socket is plain (there is no TLS on a socket).
        let plain = db.sslmode == SslMode::Disable || (db.sslmode == SslMode::Prefer && db.host.starts_with('/'));
        let tls = if plain {
            None
        } else {
            // Built once now, so that a bad file fails the start (the configuration checked them already).
            let source = TlsSource {
                db: db.clone(),
                built: Mutex::new(None),
            };
            source
                .current(side)
                .map_err(|msg| Error::Other(format!("{side} database {}: {msg}", db.target())))?;
            Some(source)
        };
        let connector = Connector {
            base,
            password: match &db.password_file {
                Some(path) => Password::File(path.clone()),
                None => Password::Given(db.password.clone()),
            },
            tls,
            side,
            user: db.user.clone(),
            prefix: match side {
                Side::Local => "POSTGRES_SYNC",
                Side::Remote => "POSTGRES_CLIENT",
            },
        };
        let retire = Arc::new(AtomicBool::new(false));
        let connector = Arc::new(connector);
        let manager = BoundedManager {
            inner: Arc::clone(&connector),
            timeout: cfg.connection_timeout,
            hung: Arc::new(AtomicUsize::new(0)),
            retire: Arc::clone(&retire),
        };
        let pool = Pool::builder()
            .max_size(cfg.pool_max)
            .min_idle(Some(0))
            .idle_timeout(Some(cfg.pool_idle_timeout.max(Duration::from_secs(1))))
            .connection_timeout(cfg.connection_timeout)
            // A checkout test costs a round trip per batch over the WAN; broken connections show up as
            // errors on use instead, and `has_broken` discards closed ones.
            .test_on_check_out(false)
            .error_handler(Box::new(QuietErrors))
            // r2d2's default is 3 worker threads per pool; one is plenty here (attempts are bounded in time) and
            // saves memory on a small box.
            .thread_pool(Arc::new(
                scheduled_thread_pool::ScheduledThreadPool::builder()
                    .num_threads(1)
                    .thread_name_pattern(&format!("r2d2-{side}-{{}}"))
                    .build(),
            ))
            .build_unchecked(manager);
        let probe = (!db.host.starts_with('/')).then(|| (db.host.clone(), db.port));
        let timeout = cfg.connection_timeout;
        Ok(Database {
            target: Target::new(side, db.target()),
            pool,
            probe,
            timeout,
            unreachable: AtomicBool::new(false),
            retire,
            connector,
        })
    }

    /// The client certificate this database presents (as of the last connection or [`Database::refresh_tls`]);
    /// None without one.
    pub fn client_certificate(&self) -> Option<ClientCertificate> {
        self.connector.tls.as_ref().and_then(TlsSource::certificate)
    }

    /// Re-reads the TLS files if they changed (as the next connection would), so that the certificate shown
    /// in /status is the one on disk. A file that cannot be used now is logged; connections will report it.
    pub fn refresh_tls(&self) {
        if let Some(tls) = &self.connector.tls {
            if let Err(msg) = tls.current(self.side()) {
                log::warn!("{}: {msg}", self.target);
            }
        }
    }

    pub fn side(&self) -> Side {
        self.target.side()
    }

    /// `host:port/db`.
    pub fn target(&self) -> &str {
        self.target.addr()
    }

    /// How errors name this database: `local database host:port/db`.
    pub fn name(&self) -> &Target {
        &self.target
    }

    /// One attempt at a connection from the pool (waits at most DB_CONNECTION_TIMEOUT_MS).
    pub fn try_get(&self) -> Result<Conn> {
        let connect_error = |cause: String| Error::Connect {
            side: self.side(),
            target: self.target().to_string(),
            cause,
        };
        // r2d2 keeps retrying inside `get` until its timeout even when the server refuses at once; a quick TCP
        // probe when no idle connection exists reports "connection refused" without that wait.
        if let (Some((host, port)), 0) = (&self.probe, self.pool.state().idle_connections) {
            if let Err(e) = tcp_probe(host, *port, self.timeout) {
                return Err(connect_error(e));
            }
        }
        self.pool.get().map_err(|e| {
            let msg = e.to_string();
            let cause = msg.strip_prefix("timed out waiting for connection: ").unwrap_or(&msg);
            connect_error(format!("no connection within {:?}: {cause}", self.timeout))
        })
    }

    /// Wraps a `postgres::Error` of this database with what we were doing.
    pub fn err(&self, context: impl Into<String>, source: postgres::Error) -> Error {
        self.target.err(context, source)
    }

    /// Closes every idle connection of the pool now (r2d2 would keep them until DB_POOL_IDLE_TIMEOUT_MS and its
    /// 30 s reaper). Used on the remote after a cycle that leaves no backlog, so that a fleet of daemons holds
    /// no connection to the central between cycles. A connection handed back meanwhile by another thread is
    /// closed too, which is harmless. Returns how many were closed.
    pub fn close_idle(&self) -> usize {
        self.retire.store(true, Ordering::SeqCst);
        let idle: Vec<Conn> = std::iter::from_fn(|| self.pool.try_get()).collect();
        let n = idle.len();
        drop(idle);
        self.retire.store(false, Ordering::SeqCst);
        n
    }

    /// Connections currently open (idle or in use), for status.
    pub fn open_connections(&self) -> u32 {
        self.pool.state().connections
    }
}

/// Fails at once when the server's port refuses (or the name does not resolve); anything slower is left to
/// the real connection attempt.
fn tcp_probe(host: &str, port: u16, timeout: Duration) -> std::result::Result<(), String> {
    use std::net::{TcpStream, ToSocketAddrs};
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Ok(()),
            Err(e) => last = Some(format!("{addr}: {e}")),
        }
    }
    Err(last.unwrap_or_else(|| format!("{host} resolves to no address")))
}

/// r2d2 logs every failed connection attempt at error level by default; we log failures ourselves, with
/// context and backoff, so its own lines go to debug.
#[derive(Debug)]
struct QuietErrors;

impl r2d2::HandleError<ConnectFailure> for QuietErrors {
    fn handle_error(&self, error: ConnectFailure) {
        log::debug!("pool: connection attempt failed: {error}");
    }
}

/// The postgres settings of one session, without the password (the connector adds it per connection; it goes
/// to the driver and nowhere else).
fn pg_config(side: Side, db: &DbConfig, cfg: &Config) -> postgres::Config {
    let mut pg = postgres::Config::new();
    pg.host(&db.host)
        .port(db.port)
        .dbname(&db.dbname)
        .user(&db.user)
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
        // Server notices ("... already exists, skipping" during migrations) are for debugging, not operators.
        .notice_callback(|n| log::debug!("server notice: {}: {}", n.severity(), n.message()));
    // The startup packet carries only user, database and application_name to the remote (see
    // REMOTE_SESSION_SETUP); the local database, on the box itself, gets the full session settings.
    if side == Side::Local {
        pg.options(&session_options(cfg.statement_timeout));
    }
    pg
}

/// Server settings for every local session (the startup packet's `options`). `plan_cache_mode`: the drain's
/// prepared statements are planned once per connection instead of once per batch (BENCHMARKS.md).
pub fn session_options(statement_timeout: Duration) -> String {
    format!(
        "-c statement_timeout={} -c idle_in_transaction_session_timeout={} -c DateStyle=ISO,YMD \
         -c IntervalStyle=postgres -c extra_float_digits=3 -c plan_cache_mode=force_generic_plan",
        statement_timeout.as_millis(),
        (statement_timeout * 2).as_millis()
    )
}

/// A TLS connector that checks what the sslmode asks for, as libpq does: prefer and require encrypt
/// without checking the certificate; verify-ca checks the chain against the CA; verify-full also the host
/// name; require with a CA file is verify-ca. With a CA file, only that CA is trusted; without one, the
/// system's roots. With `*_SSLCERT`/`*_SSLKEY` the connector presents that client certificate (identity.rs).
fn tls_connector(side: Side, db: &DbConfig) -> Result<(MakeTlsConnector, Option<ClientCertificate>)> {
    let mut b = native_tls::TlsConnector::builder();
    // As libpq: `require` with a CA file behaves as `verify-ca`.
    let mode = match (db.sslmode, &db.sslrootcert) {
        (SslMode::Require, Some(_)) => SslMode::VerifyCa,
        (mode, _) => mode,
    };
    match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => {
            // Nothing is verified, so no roots are kept. (native-tls still parses the system bundle while
            // building; dropping the store returns part of that memory: BENCHMARKS.md.)
            b.danger_accept_invalid_certs(true)
                .danger_accept_invalid_hostnames(true)
                .disable_built_in_roots(true);
        }
        SslMode::VerifyCa => {
            b.danger_accept_invalid_hostnames(true);
        }
        SslMode::VerifyFull => {}
    }
    if let (Some(path), SslMode::VerifyCa | SslMode::VerifyFull) = (&db.sslrootcert, mode) {
        let pem = std::fs::read(path).map_err(|e| Error::io(format!("reading CA file {}", path.display()), e))?;
        let cert = native_tls::Certificate::from_pem(&pem).map_err(|source| Error::Tls {
            side,
            context: format!("CA file {} is not a PEM certificate", path.display()),
            source,
        })?;
        b.add_root_certificate(cert).disable_built_in_roots(true);
    }
    let mut certificate = None;
    if let (Some(cert), Some(key)) = (&db.sslcert, &db.sslkey) {
        let loaded = identity::load(cert, key).map_err(Error::Other)?;
        b.identity(loaded.identity);
        certificate = Some(ClientCertificate {
            file: cert.clone(),
            subject_cn: loaded.subject_cn,
            not_after_unix: loaded.not_after_unix,
        });
    }
    let connector = b.build().map_err(|source| Error::Tls {
        side,
        context: "building the TLS connector".into(),
        source,
    })?;
    Ok((MakeTlsConnector::new(connector), certificate))
}

/// Both databases, with the retry policies and the shutdown flag that every use needs.
pub struct ConnectionManager {
    pub local: Database,
    pub remote: Database,
    pub connection_retry: RetryPolicy,
    pub query_retry: RetryPolicy,
    pub shutdown: Shutdown,
    /// How long [`ConnectionManager::call_bounded`] waits for an operation: the statement timeout plus the
    /// connection timeout (a slow statement is the server's to cancel; only a silent server exceeds this).
    pub call_deadline: Duration,
}

impl ConnectionManager {
    /// Builds both pools without connecting to either.
    pub fn new(cfg: &Config, shutdown: Shutdown) -> Result<ConnectionManager> {
        Ok(ConnectionManager {
            local: Database::new(Side::Local, &cfg.local, cfg)?,
            remote: Database::new(Side::Remote, &cfg.remote, cfg)?,
            connection_retry: RetryPolicy {
                base: cfg.retry_base_delay,
                max_retries: cfg.max_connection_retries,
                jitter_percent: cfg.jitter_percent,
            },
            query_retry: RetryPolicy {
                base: cfg.retry_base_delay,
                max_retries: cfg.max_query_retries,
                jitter_percent: cfg.jitter_percent,
            },
            shutdown,
            call_deadline: cfg.statement_timeout + cfg.connection_timeout,
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
    /// If the retries ran out earlier in this cycle, one attempt only: a remote that was just found down costs
    /// the backoff once per cycle, not once per part.
    pub fn get(&self, side: Side) -> Result<Conn> {
        let db = self.db(side);
        let policy = if db.unreachable.load(Ordering::SeqCst) {
            RetryPolicy {
                max_retries: 0,
                ..self.connection_retry
            }
        } else {
            self.connection_retry
        };
        let result = retry(
            &format!("connecting to the {side} database {}", db.target()),
            policy,
            &self.shutdown,
            || db.try_get(),
        );
        db.unreachable
            .store(matches!(result, Err(Error::Connect { .. })), Ordering::SeqCst);
        result
    }

    /// Forgets which databases were found unreachable: the next use of each backs off fully again. The
    /// scheduler calls this at the start of every cycle.
    pub fn begin_cycle(&self) {
        self.local.unreachable.store(false, Ordering::SeqCst);
        self.remote.unreachable.store(false, Ordering::SeqCst);
    }

    /// Retries `op` per MAX_QUERY_RETRIES on transient errors, except a failure to connect: that was already
    /// retried by [`ConnectionManager::get`] (per MAX_CONNECTION_RETRIES), so the two counts do not multiply.
    pub fn retry_query<T>(&self, what: &str, op: impl FnMut() -> Result<T>) -> Result<T> {
        crate::retry::retry_if(
            what,
            self.query_retry,
            &self.shutdown,
            |e| e.is_transient() && !matches!(e, Error::Connect { .. }),
            op,
        )
    }

    /// Runs `op` on a connection to `side`; a transient failure of `op` (including a lost connection) is
    /// retried on a fresh connection (see [`ConnectionManager::retry_query`]).
    pub fn with_conn<T>(&self, side: Side, what: &str, mut op: impl FnMut(&mut Conn) -> Result<T>) -> Result<T> {
        self.retry_query(what, || op(&mut self.get(side)?))
    }

    /// [`ConnectionManager::with_conn`] with each attempt bounded in time by
    /// [`ConnectionManager::call_bounded`]: for reads from a database that may stop answering. `op` owns what
    /// it uses (it may outlive the call on an abandoned thread).
    pub fn with_conn_bounded<T, F>(&self, side: Side, what: &str, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&mut Conn) -> Result<T> + Send + Sync + 'static,
    {
        let op = Arc::new(op);
        self.retry_query(what, || {
            let op = Arc::clone(&op);
            self.call_bounded(side, what, move |c| op(c))
        })
    }

    /// Runs `op` on a connection to `side` on a helper thread and waits at most `call_deadline` for it. A server
    /// that stops answering mid-operation makes this return `Error::Stalled` (transient) instead of blocking
    /// forever; the connection stays with the abandoned thread and is dropped when the link ends. The caller
    /// must treat the outcome of a stalled write as unknown (the upload protocol does: the ledger decides).
    /// One attempt: wrap it in [`retry`] for retries.
    pub fn call_bounded<T, F>(&self, side: Side, what: &str, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Conn) -> Result<T> + Send + 'static,
    {
        let conn = self.get(side)?;
        self.run_bounded(side, what, conn, op)
    }

    /// Runs `op` with `conn` on a helper thread, waiting at most `call_deadline`.
    fn run_bounded<T, F>(&self, side: Side, what: &str, mut conn: Conn, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Conn) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::Builder::new()
            .name("pg-call".into())
            .spawn(move || {
                let _ = tx.send(op(&mut conn));
            })
            .map_err(|e| Error::io(format!("starting a thread for {what}"), e))?;
        self.await_bounded(side, what, &rx, Instant::now())
    }

    /// Waits for the result of an operation running on another thread (started at `started`), at most
    /// `call_deadline` from `started`. After a shutdown request the call gets a short grace (a healthy server
    /// answers well within it) and is then abandoned: its outcome is unknown, which the upload protocol settles
    /// at the next start. So SIGTERM is honoured within seconds even when the remote has gone silent. On
    /// `Error::Stalled` or `Error::Shutdown` the caller must abandon the thread and its connection.
    pub fn await_bounded<T>(
        &self,
        side: Side,
        what: &str,
        rx: &crossbeam_channel::Receiver<Result<T>>,
        started: Instant,
    ) -> Result<T> {
        let mut shutdown_seen: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if shutdown_seen.is_none() && self.shutdown.is_requested() {
                shutdown_seen = Some(now);
            }
            let mut until = started + self.call_deadline;
            if let Some(seen) = shutdown_seen {
                until = until.min(seen + SHUTDOWN_GRACE);
            }
            if now >= until {
                return Err(match shutdown_seen {
                    Some(seen) if now >= seen + SHUTDOWN_GRACE => Error::Shutdown,
                    _ => Error::Stalled {
                        side,
                        target: self.db(side).target().to_string(),
                        what: what.to_string(),
                        after: self.call_deadline,
                    },
                });
            }
            match rx.recv_timeout((until - now).min(Duration::from_millis(100))) {
                Ok(result) => return result,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return Err(Error::WorkerLost {
                        target: self.db(side).name().clone(),
                        what: what.to_string(),
                        how: "the operation's thread ended without a result (a panic)",
                    })
                }
            }
        }
    }

    /// Tests a database with `SELECT 1`: one attempt, no retries, bounded in time like every remote call (an
    /// idle pooled connection to a server that went silent must not hang the caller).
    pub fn test(&self, side: Side) -> Result<()> {
        let db = self.db(side);
        let conn = db.try_get()?;
        let target = db.target().to_string();
        self.run_bounded(side, "testing the connection", conn, move |c| {
            c.simple_query("SELECT 1")
                .map(drop)
                .map_err(|e| Error::db(side, &target, "testing the connection", e))
        })
    }
}
