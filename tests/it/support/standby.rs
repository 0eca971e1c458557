//! [`Replicated`]: a remote PostgreSQL that is a primary with a real asynchronous streaming standby, for
//! failover tests.
//!
//! Owns: the primary (a [`PgServer`] started through `pgtemp` with `wal_level = replica` and pg_hba lines
//! allowing replication from 127.0.0.1), the standby ([`Standby`]: `pg_basebackup -R` into a fresh dir, as the
//! `postgres` user when root, started with `pg_ctl`), the [`FaultProxy`] its replication connection runs
//! through (`link`: the test cuts replication there) and a second [`FaultProxy`] that is the daemon's remote
//! address (`front`: re-pointed from the old primary to the promoted standby). Waiting until the standby has
//! replayed everything, cutting replication, an immediate stop of the primary (a crash: no shutdown
//! checkpoint, no last WAL sent), promotion. RAII: dropping a [`Replicated`] closes the proxies, stops both
//! servers and deletes their dirs (and the standby's reaper does the same if the test process dies).
//!
//! Does not own: databases (create them on [`Replicated::primary`] with `TestDb::create` *before* you need them
//! on the standby; they replicate like any other write), the daemon's configuration.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use postgres::{Client, NoTls};
use sync_process::pgtemp;

use super::pg::{PgServer, ServerOptions, HOST, USER};
use super::proxy::FaultProxy;
use super::wait_until;

const WAIT: Duration = Duration::from_secs(60);
const START_ATTEMPTS: usize = 5;

/// A primary, its streaming standby, the replication link between them and the daemon's front address. Field
/// order is drop order: the proxies close before the servers stop.
pub struct Replicated {
    /// The daemon's remote address: the primary, after [`Replicated::fail_over`] the promoted standby.
    pub front: FaultProxy,
    standby: Standby,
    link: FaultProxy,
    primary: PgServer,
    marker: i32,
}

impl Replicated {
    /// Starts the primary, clones the standby through the link proxy, waits until it streams.
    pub fn start() -> Replicated {
        let primary = PgServer::start_with(ServerOptions {
            extra_conf: vec![
                "wal_level = replica".into(),
                "max_wal_senders = 10".into(),
                "max_replication_slots = 10".into(),
                "wal_keep_size = '256MB'".into(),
                "hot_standby = on".into(),
            ],
            hba_lines: Some(vec![
                "local all all trust".into(),
                "local replication all trust".into(),
                "host all all 127.0.0.1/32 trust".into(),
                "host replication all 127.0.0.1/32 trust".into(),
            ]),
            files: Vec::new(),
        });
        let primary_addr = SocketAddr::from(([127, 0, 0, 1], primary.port()));
        let link = FaultProxy::start(primary_addr);
        let standby = Standby::clone_from(link.port());
        let front = FaultProxy::start(primary_addr);
        let mut r = Replicated {
            front,
            standby,
            link,
            primary,
            marker: 0,
        };
        let streaming = wait_until(WAIT, || {
            r.standby
                .query_text("postgres", "SELECT status FROM pg_stat_wal_receiver")
                .is_some_and(|s| s == "streaming")
        });
        assert!(streaming, "the standby does not stream from the primary\n{}", r.logs());
        r.primary
            .admin_client()
            .batch_execute("CREATE TABLE sync_test_marker (n int NOT NULL)")
            .unwrap_or_else(|e| panic!("creating the replication marker table on the primary: {e}"));
        r.wait_replayed();
        r
    }

    /// The primary (connect to it, create databases on it, ...).
    pub fn primary(&self) -> &PgServer {
        &self.primary
    }

    /// The standby's port (a hot standby: read-only until promoted).
    pub fn standby_port(&self) -> u16 {
        self.standby.port
    }

    /// A superuser connection to database `db` on the standby.
    pub fn standby_client(&self, db: &str) -> Client {
        self.standby
            .connect(db)
            .unwrap_or_else(|e| panic!("connecting to the standby's {db}: {e}\n{}", self.standby.log_tail()))
    }

    /// Waits until the standby has replayed every commit the primary made so far: a marker row committed on the
    /// primary now is visible on the standby (WAL is replayed in order, so everything before it is too).
    pub fn wait_replayed(&mut self) {
        self.marker += 1;
        let n = self.marker;
        self.primary
            .admin_client()
            .execute("INSERT INTO sync_test_marker (n) VALUES ($1)", &[&n])
            .unwrap_or_else(|e| panic!("writing the replication marker on the primary: {e}"));
        let sql = format!("SELECT count(*)::text FROM sync_test_marker WHERE n = {n}");
        let seen = wait_until(WAIT, || {
            self.standby.query_text("postgres", &sql).as_deref() == Some("1")
        });
        assert!(
            seen,
            "the standby did not replay marker {n} within {WAIT:?}\n{}",
            self.logs()
        );
    }

    /// Cuts the replication connection and refuses new ones: from now on the primary's commits stay on the
    /// primary (asynchronous replication: the primary does not wait for the standby).
    pub fn cut_replication(&self) {
        self.link.set_refuse(true);
        self.link.cut_all();
    }

    /// Whether the standby currently streams from the primary.
    pub fn is_streaming(&self) -> bool {
        self.standby
            .query_text("postgres", "SELECT status FROM pg_stat_wal_receiver")
            .is_some_and(|s| s == "streaming")
    }

    /// Immediate stop of the primary: like kill -9 of the server, no shutdown checkpoint and nothing more sent
    /// to anyone. It is never started again (its data has diverged from the standby's).
    pub fn kill_primary(&self) {
        self.primary.kill();
    }

    /// Promotes the standby (`pg_promote`, waiting for it) and checks it left recovery.
    pub fn promote(&self) {
        let mut c = self.standby_client("postgres");
        let done: bool = c
            .query_one("SELECT pg_promote(true, 60)", &[])
            .unwrap_or_else(|e| panic!("pg_promote on the standby: {e}\n{}", self.standby.log_tail()))
            .get(0);
        assert!(
            done,
            "pg_promote did not finish within 60 s\n{}",
            self.standby.log_tail()
        );
        let primary_now = wait_until(WAIT, || {
            self.standby
                .query_text("postgres", "SELECT pg_is_in_recovery()::text")
                .as_deref()
                == Some("false")
        });
        assert!(
            primary_now,
            "the promoted standby is still in recovery\n{}",
            self.standby.log_tail()
        );
    }

    /// The failover as an operator's tooling does it: the primary crashes, the standby is promoted, and the
    /// remote address (the front proxy) now reaches the standby; connections still open to the old primary are
    /// cut.
    pub fn fail_over(&self) {
        self.kill_primary();
        self.promote();
        self.front
            .set_target(SocketAddr::from(([127, 0, 0, 1], self.standby.port)));
        self.front.cut_all();
    }

    /// The tails of both servers' logs.
    pub fn logs(&self) -> String {
        format!("{}\n{}", self.primary.log_tail(), self.standby.log_tail())
    }
}

/// A streaming standby in its own temp dir (also its data dir), on a free loopback port. Drop stops it
/// (immediate) and deletes the dir.
pub struct Standby {
    dir: PathBuf,
    port: u16,
    reaper: Option<Child>,
}

impl Standby {
    /// `pg_basebackup -R` from the server reached on 127.0.0.1:`via` (so the `primary_conninfo` it writes goes
    /// through the same address), then starts the copy as a hot standby.
    fn clone_from(via: u16) -> Standby {
        let dir = super::unique_temp_dir("sync-process-standby");
        let mut standby = Standby {
            reaper: pgtemp::spawn_reaper(&dir),
            dir,
            port: 0,
        };
        let dir_text = standby.dir.to_string_lossy().into_owned();
        if pgtemp::is_root() {
            run_checked(Command::new("chown").arg(format!("{USER}:")).arg(&standby.dir), "chown");
        }
        run_checked(Command::new("chmod").arg("0700").arg(&standby.dir), "chmod");
        let basebackup = pgtemp::bin_dir()
            .unwrap_or_else(|e| panic!("{e}"))
            .join("pg_basebackup");
        assert!(
            basebackup.is_file(),
            "{} is missing: install it with `apt-get install -y postgresql`",
            basebackup.display()
        );
        let port = via.to_string();
        let out = tool(
            "pg_basebackup",
            &[
                "-h",
                HOST,
                "-p",
                &port,
                "-U",
                USER,
                "-D",
                &dir_text,
                "-R",
                "-X",
                "stream",
                "--no-sync",
                "-c",
                "fast",
            ],
            Path::new("/"),
        );
        assert!(
            out.status.success(),
            "pg_basebackup failed ({}): {}",
            out.status,
            text(&out)
        );
        // The primary's conf names its own socket dir; the standby keeps its socket in its own dir.
        let conf = standby.dir.join("postgresql.conf");
        OpenOptions::new()
            .append(true)
            .open(&conf)
            .and_then(|mut f| f.write_all(format!("\n# standby\nunix_socket_directories = '{dir_text}'\n").as_bytes()))
            .unwrap_or_else(|e| panic!("appending to {}: {e}", conf.display()));
        let mut errors = Vec::new();
        for _ in 0..START_ATTEMPTS {
            standby.port = pgtemp::free_port().unwrap_or_else(|e| panic!("{e}"));
            let log = standby.dir.join("standby.log").to_string_lossy().into_owned();
            let port = format!("-p {}", standby.port);
            let out = tool(
                "pg_ctl",
                &["start", "-D", &dir_text, "-l", &log, "-w", "-t", "60", "-o", &port],
                &standby.dir,
            );
            if out.status.success() {
                let ready = wait_until(WAIT, || standby.connect("postgres").is_ok());
                assert!(ready, "the standby does not accept connections\n{}", standby.log_tail());
                return standby;
            }
            errors.push(text(&out));
        }
        panic!(
            "the standby did not start after {START_ATTEMPTS} attempts:\n{}\n{}",
            errors.join("\n"),
            standby.log_tail()
        );
    }

    fn connect(&self, db: &str) -> Result<Client, postgres::Error> {
        let mut config = pgtemp::client_config(HOST, self.port, db);
        config.connect_timeout(Duration::from_secs(2));
        config.connect(NoTls)
    }

    /// The first column of the first row of `sql` as text, None on any error (the standby may be busy).
    fn query_text(&self, db: &str, sql: &str) -> Option<String> {
        let mut c = self.connect(db).ok()?;
        c.query_opt(sql, &[]).ok()??.try_get::<_, Option<String>>(0).ok()?
    }

    fn log_tail(&self) -> String {
        let log = fs::read(self.dir.join("standby.log")).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "--- tail of {}/standby.log ---\n{}",
            self.dir.display(),
            lines[lines.len().saturating_sub(40)..].join("\n")
        )
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        let dir = self.dir.to_string_lossy().into_owned();
        if let Ok(argv) = pgtemp::tool_argv("pg_ctl") {
            let _ = Command::new(&argv[0])
                .args(&argv[1..])
                .args(["stop", "-D", &dir, "-m", "immediate", "-w"])
                .current_dir("/")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::remove_dir_all(&self.dir);
        if let Some(mut reaper) = self.reaper.take() {
            let _ = reaper.kill();
            let _ = reaper.wait();
        }
    }
}

/// Runs a server tool (as postgres when root) from `cwd` and collects its output.
fn tool(name: &str, args: &[&str], cwd: &Path) -> Output {
    let argv = pgtemp::tool_argv(name).unwrap_or_else(|e| panic!("{e}"));
    Command::new(&argv[0])
        .args(&argv[1..])
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", argv.join(" ")))
}

fn run_checked(cmd: &mut Command, what: &str) {
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("running {what}: {e}"));
    assert!(status.success(), "{what} failed ({status})");
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
