//! [`PgBouncer`]: Debian's PgBouncer (1.18 on Debian 12) in front of a throwaway server, as an RAII process,
//! for the tests (tests/it/pooler.rs) and the fleet benchmark (benches/fleet.rs).
//!
//! It listens on a free 127.0.0.1 port, forwards every database name to one server (`* = host=... port=...`),
//! trusts every client (users listed in its auth file), and is started as the `postgres` user when root
//! (PgBouncer refuses to run as root). Transaction pooling is set up the way that shows the pooler's real
//! behaviour: `server_round_robin = 1` and at least two server connections kept open (`min_pool_size`), so
//! consecutive transactions of one client really land on different server connections. No
//! `ignore_startup_parameters`: a client that sends more than PgBouncer accepts is refused, as in the field.
//! Drop stops it (SIGTERM via its pid file) and deletes its dir; if this process dies first, the watcher shell
//! does the same.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};

use super::{chown_to_postgres, client_config, detached_shell, free_port, is_root, unique_temp_dir, HOST, USER};
use crate::error::{Error, Result};

/// Where Debian's package puts the binary.
pub const BINARY: &str = "/usr/sbin/pgbouncer";
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The pool mode of a [`PgBouncer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    Transaction,
    Session,
}

/// Settings for [`PgBouncer::start`].
#[derive(Clone, Debug)]
pub struct BouncerOptions {
    pub mode: PoolMode,
    /// Server connections per (database, user) pool: `default_pool_size`.
    pub pool_size: u32,
    /// Server connections kept open per pool: `min_pool_size` (at least 2 forces rotation).
    pub min_pool_size: u32,
    /// Client connections accepted in all: `max_client_conn`.
    pub max_clients: u32,
}

impl Default for BouncerOptions {
    fn default() -> Self {
        BouncerOptions {
            mode: PoolMode::Transaction,
            pool_size: 4,
            min_pool_size: 2,
            max_clients: 500,
        }
    }
}

/// A running PgBouncer; see the module docs.
pub struct PgBouncer {
    dir: PathBuf,
    port: u16,
    watcher: Child,
    pub options: BouncerOptions,
}

impl PgBouncer {
    /// Starts PgBouncer in front of the server on `HOST:server_port` and waits until it accepts connections.
    pub fn start(server_port: u16, options: BouncerOptions) -> Result<PgBouncer> {
        if !Path::new(BINARY).exists() {
            return Err(Error::Other(format!(
                "{BINARY} not found: install PgBouncer with `apt-get install -y pgbouncer`"
            )));
        }
        let dir = unique_temp_dir("sync-process-pgbouncer")?;
        let port = free_port()?;
        let mode = match options.mode {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        };
        let d = dir.display();
        let ini = format!(
            "[databases]\n* = host={HOST} port={server_port}\n\n[pgbouncer]\nlisten_addr = {HOST}\n\
             listen_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {d}/users.txt\n\
             pool_mode = {mode}\nserver_round_robin = 1\ndefault_pool_size = {size}\nmin_pool_size = {min}\n\
             max_client_conn = {clients}\nlogfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n\
             admin_users = {USER}\nstats_users = {USER}\nserver_login_retry = 1\n",
            size = options.pool_size,
            min = options.min_pool_size,
            clients = options.max_clients,
        );
        let users = format!("\"{USER}\" \"\"\n");
        for (name, text) in [("pgbouncer.ini", ini.as_str()), ("users.txt", users.as_str())] {
            let path = dir.join(name);
            fs::write(&path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
            if is_root() {
                chown_to_postgres(&path)?;
            }
        }
        if is_root() {
            chown_to_postgres(&dir)?;
        }
        let run = if is_root() {
            format!("runuser -u {USER} -- {BINARY}")
        } else {
            BINARY.to_string()
        };
        // The watcher starts PgBouncer (daemonised: it writes its pid file), then stops it once this process
        // is gone.
        let pidfile = format!("{d}/pgbouncer.pid");
        let script = format!(
            "{run} -d -q {d}/pgbouncer.ini || exit 1; \
             while kill -0 {me} 2>/dev/null; do sleep 1; done; \
             kill -TERM $(cat {pidfile}) 2>/dev/null; sleep 1; rm -rf {d}",
            me = std::process::id(),
        );
        let watcher =
            detached_shell(&script).map_err(|e| Error::io("starting PgBouncer's watcher shell".to_string(), e))?;
        let bouncer = PgBouncer {
            dir,
            port,
            watcher,
            options,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mut c = client_config(HOST, port, "pgbouncer");
            c.connect_timeout(Duration::from_secs(1));
            if c.connect(NoTls).is_ok() {
                return Ok(bouncer);
            }
            if Instant::now() >= deadline {
                return Err(Error::Other(format!(
                    "PgBouncer on {HOST}:{port} did not accept connections within {READY_TIMEOUT:?}\n{}",
                    bouncer.log_tail()
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &str {
        HOST
    }

    /// The admin console (`pgbouncer` database; simple query protocol only).
    pub fn admin(&self) -> Result<Client> {
        client_config(HOST, self.port, "pgbouncer")
            .connect(NoTls)
            .map_err(|e| Error::Other(format!("PgBouncer admin console on port {}: {e}", self.port)))
    }

    /// The last lines of PgBouncer's log.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- pgbouncer.log (last lines) ---\n{}",
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    }

    /// PgBouncer's process id (from its pid file).
    pub fn pid(&self) -> Option<i32> {
        fs::read_to_string(self.dir.join("pgbouncer.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
            // Wait (briefly) until it is gone, so that its server connections end before the server does.
            for _ in 0..50 {
                let alive = Command::new("kill")
                    .args(["-0", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if !alive {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.watcher.kill();
        let _ = self.watcher.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
