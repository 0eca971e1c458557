//! [`PgBouncer`]: Debian's PgBouncer (1.18 on Debian 12) in front of a test server, as an RAII process.
//!
//! It listens on a free 127.0.0.1 port, forwards every database name to one [`super::pg::PgServer`]
//! (`* = host=... port=...`), trusts every client (users listed in its auth file), and is started as the
//! `postgres` user when root (PgBouncer refuses to run as root). Transaction pooling is set up the way that
//! shows the pooler's real behaviour: `server_round_robin = 1` and at least two server connections kept open
//! (`min_pool_size`), so consecutive transactions of one client really land on different server
//! connections. No `ignore_startup_parameters`: a client that sends more than PgBouncer accepts is refused,
//! as in the field. Drop stops it (SIGTERM via its pid file) and deletes its dir; if the test process dies
//! first, the watcher shell does the same.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use postgres::{Client, NoTls};

use super::pg::{is_root, PgServer, HOST, USER};

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
}

impl Default for BouncerOptions {
    fn default() -> Self {
        BouncerOptions {
            mode: PoolMode::Transaction,
            pool_size: 4,
            min_pool_size: 2,
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

/// The binary, or a panic with the one line saying what to install.
fn binary() -> &'static str {
    const BIN: &str = "/usr/sbin/pgbouncer";
    if !Path::new(BIN).exists() {
        panic!("{BIN} not found: install PgBouncer with `apt-get install -y pgbouncer`");
    }
    BIN
}

impl PgBouncer {
    /// Starts PgBouncer in front of `server` and waits until it accepts connections.
    pub fn start(server: &PgServer, options: BouncerOptions) -> PgBouncer {
        let bin = binary();
        let dir = super::unique_temp_dir("sync-process-pgbouncer");
        let port = sync_process::pgtemp::free_port().unwrap_or_else(|e| panic!("{e}"));
        let mode = match options.mode {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        };
        let d = dir.display();
        let ini = format!(
            "[databases]\n* = host={HOST} port={server_port}\n\n[pgbouncer]\nlisten_addr = {HOST}\n\
             listen_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {d}/users.txt\n\
             pool_mode = {mode}\nserver_round_robin = 1\ndefault_pool_size = {size}\nmin_pool_size = {min}\n\
             max_client_conn = 500\nlogfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n\
             admin_users = {USER}\nstats_users = {USER}\nserver_login_retry = 1\n",
            server_port = server.port(),
            size = options.pool_size,
            min = options.min_pool_size,
        );
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        };
        write("pgbouncer.ini", &ini);
        write(
            "users.txt",
            &format!("\"{USER}\" \"\"\n\"sync_site_a\" \"\"\n\"sync_site_b\" \"\"\n"),
        );
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", &format!("{USER}:")])
                .arg(&dir)
                .status()
                .unwrap_or_else(|e| panic!("running chown: {e}"));
            assert!(status.success(), "chown -R {USER}: {} failed", dir.display());
        }
        let run = if is_root() {
            format!("runuser -u {USER} -- {bin}")
        } else {
            bin.to_string()
        };
        // The watcher starts PgBouncer (daemonised: it writes its pid file), then stops it once this test
        // process is gone.
        let pidfile = format!("{d}/pgbouncer.pid");
        let script = format!(
            "{run} -d -q {d}/pgbouncer.ini || exit 1; \
             while kill -0 {me} 2>/dev/null; do sleep 1; done; \
             kill -TERM $(cat {pidfile}) 2>/dev/null; sleep 1; rm -rf {d}",
            me = std::process::id(),
        );
        let watcher = Command::new("sh")
            .args(["-c", &script])
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting PgBouncer's watcher shell: {e}"));
        let bouncer = PgBouncer {
            dir,
            port,
            watcher,
            options,
        };
        let ready = super::wait_until(Duration::from_secs(20), || {
            let mut c = sync_process::pgtemp::client_config(HOST, port, "pgbouncer");
            c.connect_timeout(Duration::from_secs(1));
            c.connect(NoTls).is_ok()
        });
        assert!(
            ready,
            "PgBouncer on {HOST}:{port} did not accept connections within 20 s\n{}",
            bouncer.log_tail()
        );
        bouncer
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &str {
        HOST
    }

    /// The admin console (`pgbouncer` database; simple query protocol only).
    pub fn admin(&self) -> Client {
        sync_process::pgtemp::client_config(HOST, self.port, "pgbouncer")
            .connect(NoTls)
            .unwrap_or_else(|e| panic!("PgBouncer admin console on port {}: {e}", self.port))
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

    fn pid(&self) -> Option<i32> {
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
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.watcher.kill();
        let _ = self.watcher.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
