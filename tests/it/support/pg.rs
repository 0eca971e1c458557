//! Throwaway PostgreSQL servers ([`PgServer`]), per-test databases ([`TestDb`],
//! [`DbPair`]) and the daemon's environment for a pair ([`env_map`]).
//!
//! The server mechanics (binaries, initdb, free port, running as `postgres`
//! when root, reaper, stop-and-delete on drop) live in `sync_process::pgtemp`,
//! the one implementation shared with `sync-process demo`; [`PgServer`] wraps
//! it with the panicking API tests want. A server lives in a fresh temp dir
//! (data dir, `server.log` and unix socket dir), listens on a free 127.0.0.1
//! port with trust authentication, and is stopped (immediate) and deleted on
//! drop; its reaper does the same once the test process is gone, which covers
//! the never-dropped [`PgServer::shared`] static, aborts and Ctrl-C.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use postgres::{Client, Config, NoTls};
use sync_process::pgtemp::{self, PgTemp, StopMode};

/// Address every test server listens on.
pub const HOST: &str = pgtemp::HOST;
/// Superuser of every test server.
pub const USER: &str = pgtemp::USER;
/// Password handed to the daemon (trust auth ignores it; the daemon rejects an empty one).
pub const PASSWORD: &str = "test-password-not-secret";

/// Extra set-up for [`PgServer::start_with`]: `extra_conf` (lines appended to
/// postgresql.conf), `hba_lines` (replace pg_hba.conf), `files` (written into
/// the data dir before the first start, mode 0600).
pub use sync_process::pgtemp::Options as ServerOptions;

/// A throwaway PostgreSQL server; see the module docs.
pub struct PgServer {
    server: PgTemp,
}

impl PgServer {
    /// Starts a server with default settings.
    pub fn start() -> PgServer {
        PgServer::start_with(ServerOptions::default())
    }

    /// Starts a server with extra configuration, pg_hba.conf and files.
    pub fn start_with(opts: ServerOptions) -> PgServer {
        match PgTemp::start("sync-process-test", &opts) {
            Ok(server) => PgServer { server },
            Err(e) => panic!("{e}"),
        }
    }

    /// The server shared by all tests of this test binary; never stop or kill it.
    pub fn shared() -> &'static PgServer {
        static SHARED: OnceLock<PgServer> = OnceLock::new();
        SHARED.get_or_init(PgServer::start)
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    pub fn host(&self) -> &str {
        HOST
    }

    pub fn data_dir(&self) -> &Path {
        self.server.data_dir()
    }

    /// Superuser config for database `db` of this server (no connect timeout set).
    pub fn config(&self, db: &str) -> Config {
        self.server.config(db)
    }

    /// Superuser connection to the `postgres` database.
    pub fn admin_client(&self) -> Client {
        self.server
            .connect("postgres")
            .unwrap_or_else(|e| panic!("admin connection: {e}"))
    }

    /// Fast shutdown, keeping the data; see [`PgServer::start_again`].
    pub fn stop(&self) {
        self.server.stop(StopMode::Fast).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Immediate shutdown (like a crash: the next start runs recovery).
    pub fn kill(&self) {
        self.server.stop(StopMode::Immediate).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts a stopped server again on the same data dir and port.
    pub fn start_again(&self) {
        if let Err(e) = self.server.start_again() {
            panic!(
                "restarting PostgreSQL on port {} failed: {e}\n{}",
                self.port(),
                self.log_tail()
            );
        }
    }

    pub fn is_running(&self) -> bool {
        self.server.is_running()
    }

    /// The last 40 lines of the server log, with a header line.
    pub fn log_tail(&self) -> String {
        self.server.log_tail(40)
    }
}

/// A fresh database `t_<pid>_<n>` on a server; dropped (WITH (FORCE)) on drop.
///
/// It does not borrow the server; drop it before the server (declare it after).
pub struct TestDb {
    name: String,
    port: u16,
}

impl TestDb {
    pub fn create(server: &PgServer) -> TestDb {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!("t_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        server
            .admin_client()
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on port {} failed: {e}", server.port()));
        TestDb {
            name,
            port: server.port(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &str {
        HOST
    }

    pub fn user(&self) -> &str {
        USER
    }

    pub fn password(&self) -> &str {
        PASSWORD
    }

    /// Config for this database on its server.
    pub fn config(&self) -> Config {
        self.config_via(HOST, self.port)
    }

    /// Config for this database reached through `host:port` (e.g. a [`super::proxy::FaultProxy`]).
    pub fn config_via(&self, host: &str, port: u16) -> Config {
        db_config(host, port, &self.name)
    }

    /// Direct superuser connection to this database.
    pub fn client(&self) -> Client {
        self.config()
            .connect(NoTls)
            .unwrap_or_else(|e| panic!("connecting to database {} on port {} failed: {e}", self.name, self.port))
    }

    /// The one `bigint` value of `sql` on a fresh connection (see [`super::env::count`]).
    pub fn count(&self, sql: &str) -> i64 {
        super::env::count(&mut self.client(), sql)
    }

    /// `postgresql://postgres@127.0.0.1:<port>/<name>`
    pub fn url(&self) -> String {
        format!("postgresql://{USER}@{HOST}:{}/{}", self.port, self.name)
    }

    /// `host=127.0.0.1 port=<port> user=postgres dbname=<name>`
    pub fn conn_str(&self) -> String {
        format!("host={HOST} port={} user={USER} dbname={}", self.port, self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let mut config = db_config(HOST, self.port, "postgres");
        config.connect_timeout(Duration::from_secs(2));
        if let Ok(mut admin) = config.connect(NoTls) {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
        }
    }
}

/// The daemon's two databases: `local` (edge, POSTGRES_SYNC_*) and `remote` (central, POSTGRES_CLIENT_*).
pub struct DbPair {
    pub local: TestDb,
    pub remote: TestDb,
}

impl DbPair {
    /// Both databases on [`PgServer::shared`].
    pub fn new() -> DbPair {
        let server = PgServer::shared();
        DbPair {
            local: TestDb::create(server),
            remote: TestDb::create(server),
        }
    }

    /// Databases on the given servers (for tests that stop/kill/configure servers).
    pub fn on(local: &PgServer, remote: &PgServer) -> DbPair {
        DbPair {
            local: TestDb::create(local),
            remote: TestDb::create(remote),
        }
    }
}

/// The daemon's configuration for `pair` as environment variables.
pub fn env_map(pair: &DbPair) -> BTreeMap<String, String> {
    env_map_with_remote(pair, HOST, pair.remote.port())
}

/// Like [`env_map`], with the remote reached through `host:port` (e.g. a proxy).
pub fn env_map_with_remote(pair: &DbPair, host: &str, port: u16) -> BTreeMap<String, String> {
    env_map_for(&pair.local, pair.remote.name(), host, port)
}

/// The daemon's configuration for local database `local` and the remote database named `remote_db` reached
/// through `host:port` (several sites may share one remote database).
pub fn env_map_for(local: &TestDb, remote_db: &str, host: &str, port: u16) -> BTreeMap<String, String> {
    let local_port = local.port().to_string();
    let remote_port = port.to_string();
    [
        ("POSTGRES_SYNC_HOST", HOST),
        ("POSTGRES_SYNC_PORT", &local_port),
        ("POSTGRES_SYNC_DB", local.name()),
        ("POSTGRES_SYNC_USER", USER),
        ("POSTGRES_SYNC_PASSWORD", PASSWORD),
        ("POSTGRES_CLIENT_HOST", host),
        ("POSTGRES_CLIENT_PORT", &remote_port),
        ("POSTGRES_CLIENT_DB", remote_db),
        ("POSTGRES_CLIENT_USER", USER),
        ("POSTGRES_CLIENT_PASSWORD", PASSWORD),
        ("RETRY_BASE_DELAY_MS", "10"),
        ("MAX_CONNECTION_RETRIES", "2"),
        ("MAX_QUERY_RETRIES", "2"),
        ("SYNC_INTERVAL_SECONDS", "1"),
        ("STATUS_BIND", ""),
        ("LOG_FILE", ""),
        ("LOG_LEVEL", "debug"),
        ("SYNC_SOURCE_ID", "test-site"),
        ("DB_CONNECTION_TIMEOUT_MS", "2000"),
        ("SYNC_JITTER_PERCENT", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Whether the effective uid is 0.
pub fn is_root() -> bool {
    pgtemp::is_root()
}

/// Directory holding initdb, pg_ctl and postgres.
pub fn bin_dir() -> &'static Path {
    pgtemp::bin_dir().unwrap_or_else(|e| panic!("{e}"))
}

fn db_config(host: &str, port: u16, db: &str) -> Config {
    pgtemp::client_config(host, port, db)
}

/// Runs `script` with psql against `db` as the superuser, with `-v name=value` for each of `vars`; returns
/// what psql printed. Fails the test when psql fails.
pub fn psql_script(db: &TestDb, script: &str, vars: &[(&str, &str)]) -> String {
    let mut cmd = std::process::Command::new(bin_dir().join("psql"));
    cmd.args(["-X", "-q", "-h", HOST, "-U", USER])
        .args(["-p", &db.port().to_string(), "-d", db.name()]);
    for (k, v) in vars {
        cmd.args(["-v", &format!("{k}={v}")]);
    }
    let out = cmd
        .args(["-f", script])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("could not run psql: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "psql -f {script} failed ({}):\n{text}",
        out.status
    );
    text
}
