//! Throwaway PostgreSQL servers ([`PgServer`]), per-test databases ([`TestDb`],
//! [`DbPair`]) and the daemon's environment for a pair ([`env_map`]).
//!
//! A server lives in a fresh temp dir (which is also its data dir, log file
//! `server.log` and unix socket dir), listens on a free 127.0.0.1 port with
//! trust authentication, and is stopped (immediate) and deleted on drop. Each
//! server also gets a detached reaper shell that does the same once the test
//! process is gone, which covers the never-dropped [`PgServer::shared`] static,
//! aborts and Ctrl-C. When running as root, `initdb`/`pg_ctl` run as the
//! `postgres` user through `runuser`.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use postgres::{Client, Config, NoTls};

/// Address every test server listens on.
pub const HOST: &str = "127.0.0.1";
/// Superuser of every test server.
pub const USER: &str = "postgres";
/// Password handed to the daemon (trust auth ignores it; the daemon rejects an empty one).
pub const PASSWORD: &str = "test-password-not-secret";

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: usize = 5;

/// Extra set-up for [`PgServer::start_with`].
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Lines appended to postgresql.conf, e.g. `"ssl = on"`, `"timezone = 'Asia/Tokyo'"`.
    pub extra_conf: Vec<String>,
    /// Replaces pg_hba.conf when `Some`.
    pub hba_lines: Option<Vec<String>>,
    /// Files written into the data dir before the first start (mode 0600, owned by
    /// postgres when root), e.g. `("server.key".into(), pem_bytes)`.
    pub files: Vec<(String, Vec<u8>)>,
}

/// A throwaway PostgreSQL server; see the module docs.
pub struct PgServer {
    dir: PathBuf,
    port: u16,
    reaper: Option<Child>,
}

impl PgServer {
    /// Starts a server with default settings.
    pub fn start() -> PgServer {
        PgServer::start_with(ServerOptions::default())
    }

    /// Starts a server with extra configuration, pg_hba.conf and files.
    pub fn start_with(opts: ServerOptions) -> PgServer {
        bin_dir(); // fail early with the install hint
        let dir = super::unique_temp_dir("sync-process-test");
        // From here on, Drop (and the reaper) clean up if anything panics.
        let mut server = PgServer {
            reaper: spawn_reaper(&dir),
            dir,
            port: 0,
        };
        if is_root() {
            chown_to_postgres(&server.dir);
        }
        server.init(&opts);
        let mut errors = Vec::new();
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            match server.pg_ctl_start() {
                Ok(()) => {
                    server.wait_ready();
                    return server;
                }
                Err(e) => errors.push(e),
            }
        }
        panic!(
            "PostgreSQL in {} did not start after {START_ATTEMPTS} attempts:\n{}\n{}",
            server.dir.display(),
            errors.join("\n"),
            server.log_tail()
        );
    }

    /// The server shared by all tests of this test binary; never stop or kill it.
    pub fn shared() -> &'static PgServer {
        static SHARED: OnceLock<PgServer> = OnceLock::new();
        SHARED.get_or_init(PgServer::start)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &str {
        HOST
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// Superuser config for database `db` of this server (no connect timeout set).
    pub fn config(&self, db: &str) -> Config {
        db_config(HOST, self.port, db)
    }

    /// Superuser connection to the `postgres` database.
    pub fn admin_client(&self) -> Client {
        self.config("postgres")
            .connect(NoTls)
            .unwrap_or_else(|e| panic!("admin connection to PostgreSQL on {HOST}:{} failed: {e}", self.port))
    }

    /// Fast shutdown, keeping the data; see [`PgServer::start_again`].
    pub fn stop(&self) {
        self.pg_ctl_stop("fast");
    }

    /// Immediate shutdown (like a crash: the next start runs recovery).
    pub fn kill(&self) {
        self.pg_ctl_stop("immediate");
    }

    /// Starts a stopped server again on the same data dir and port.
    pub fn start_again(&self) {
        if let Err(e) = self.pg_ctl_start() {
            panic!(
                "restarting PostgreSQL on port {} failed: {e}\n{}",
                self.port,
                self.log_tail()
            );
        }
        self.wait_ready();
    }

    pub fn is_running(&self) -> bool {
        self.tool("pg_ctl", &["status", "-D", &self.dir_str()]).status.success()
    }

    /// The last 40 lines of the server log, with a header line.
    pub fn log_tail(&self) -> String {
        let log = fs::read(self.dir.join("server.log")).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!("--- tail of {}/server.log ---\n{tail}", self.dir.display())
    }

    fn dir_str(&self) -> String {
        self.dir.to_string_lossy().into_owned()
    }

    /// Runs a server tool (as postgres when root) from the data dir and collects its output.
    fn tool(&self, name: &str, args: &[&str]) -> Output {
        let argv = tool_argv(name);
        Command::new(&argv[0])
            .args(&argv[1..])
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("could not run {}: {e}", argv.join(" ")))
    }

    fn init(&self, opts: &ServerOptions) {
        let dir = self.dir_str();
        let out = self.tool(
            "initdb",
            &[
                "-D",
                &dir,
                "-A",
                "trust",
                "--auth-host=trust",
                "-U",
                USER,
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        if !out.status.success() {
            panic!("initdb -D {dir} failed ({}):\n{}", out.status, output_text(&out));
        }
        let mut conf = format!(
            "\n# sync-process test harness\nlisten_addresses = '{HOST}'\n\
             unix_socket_directories = '{dir}'\nfsync = off\nsynchronous_commit = off\n\
             full_page_writes = off\nmax_connections = 200\nshared_buffers = 32MB\n"
        );
        for line in &opts.extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        OpenOptions::new()
            .append(true)
            .open(self.dir.join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .expect("appending to postgresql.conf");
        if let Some(hba) = &opts.hba_lines {
            fs::write(self.dir.join("pg_hba.conf"), hba.join("\n") + "\n").expect("writing pg_hba.conf");
        }
        for (name, bytes) in &opts.files {
            let path = self.dir.join(name);
            fs::write(&path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .unwrap_or_else(|e| panic!("chmod 600 {}: {e}", path.display()));
            if is_root() {
                chown_to_postgres(&path);
            }
        }
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let dir = self.dir_str();
        let log = self.dir.join("server.log").to_string_lossy().into_owned();
        let port = format!("-p {}", self.port);
        let out = self.tool(
            "pg_ctl",
            &["start", "-D", &dir, "-l", &log, "-w", "-t", "30", "-o", &port],
        );
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start on port {} failed ({}): {}",
                self.port,
                out.status,
                output_text(&out)
            ))
        }
    }

    fn pg_ctl_stop(&self, mode: &str) {
        let out = self.tool("pg_ctl", &["stop", "-D", &self.dir_str(), "-m", mode, "-w", "-t", "60"]);
        if !out.status.success() {
            panic!(
                "pg_ctl stop -m {mode} failed ({}): {}\n{}",
                out.status,
                output_text(&out),
                self.log_tail()
            );
        }
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut config = self.config("postgres");
        config.connect_timeout(Duration::from_secs(1));
        loop {
            let err = match config.connect(NoTls) {
                Ok(_) => return,
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!(
                    "PostgreSQL on {HOST}:{} not accepting connections after {READY_TIMEOUT:?}: {err}\n{}",
                    self.port,
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // Never panics: every step ignores failure.
        let argv = tool_argv("pg_ctl");
        let _ = Command::new(&argv[0])
            .args(&argv[1..])
            .args(["stop", "-D", &self.dir_str(), "-m", "immediate", "-w"])
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.dir);
        if let Some(mut reaper) = self.reaper.take() {
            let _ = reaper.kill();
            let _ = reaper.wait();
        }
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
    let local_port = pair.local.port().to_string();
    let remote_port = port.to_string();
    [
        ("POSTGRES_SYNC_HOST", HOST),
        ("POSTGRES_SYNC_PORT", &local_port),
        ("POSTGRES_SYNC_DB", pair.local.name()),
        ("POSTGRES_SYNC_USER", USER),
        ("POSTGRES_SYNC_PASSWORD", PASSWORD),
        ("POSTGRES_CLIENT_HOST", host),
        ("POSTGRES_CLIENT_PORT", &remote_port),
        ("POSTGRES_CLIENT_DB", pair.remote.name()),
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
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Whether the effective uid is 0 (from /proc/self/status, else `id -u`).
pub fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_owned))
            .or_else(|| {
                let out = Command::new("id").arg("-u").output().ok()?;
                Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
            });
        euid.as_deref() == Some("0")
    })
}

/// Directory holding initdb, pg_ctl and postgres.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let has_initdb = |d: &Path| d.join("initdb").is_file();
        let from_pg_config = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
        if let Some(dir) = from_pg_config.filter(|d| has_initdb(d)) {
            return dir;
        }
        let mut found: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version = e
                    .file_name()
                    .to_str()?
                    .split('.')
                    .map(|p| p.parse().ok())
                    .collect::<Option<Vec<u32>>>()?;
                Some((version, e.path().join("bin")))
            })
            .filter(|(_, d)| has_initdb(d))
            .collect();
        found.sort();
        match found.pop() {
            Some((_, dir)) => dir,
            None => panic!(
                "PostgreSQL server binaries not found (tried pg_config --bindir and /usr/lib/postgresql/*/bin): \
                 install them with `apt-get install -y postgresql`"
            ),
        }
    })
}

/// argv prefix for a server tool: `runuser -u postgres -- <bindir>/<name>` when root.
fn tool_argv(name: &str) -> Vec<String> {
    let exe = bin_dir().join(name).to_string_lossy().into_owned();
    if is_root() {
        ["runuser", "-u", USER, "--", &exe].map(str::to_owned).to_vec()
    } else {
        vec![exe]
    }
}

fn chown_to_postgres(path: &Path) {
    let status = Command::new("chown")
        .arg(format!("{USER}:"))
        .arg(path)
        .status()
        .unwrap_or_else(|e| panic!("could not run chown: {e}"));
    assert!(status.success(), "chown {USER}: {} failed ({status})", path.display());
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind((HOST, 0))
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0 to find a free port")
        .port()
}

fn db_config(host: &str, port: u16, db: &str) -> Config {
    let mut config = Config::new();
    config.host(host).port(port).user(USER).dbname(db);
    config
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Single-quotes `s` for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Detached shell that, once this process is gone, stops the server in `dir`
/// and removes `dir`. Own process group (survives Ctrl-C), stdio on /dev/null
/// (so cargo test's output pipes are not held open). `None` if sh is missing.
fn spawn_reaper(dir: &Path) -> Option<Child> {
    let dir = sh_quote(&dir.to_string_lossy());
    let pg_ctl: Vec<String> = tool_argv("pg_ctl").iter().map(|a| sh_quote(a)).collect();
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {pg_ctl} stop -D {dir} -m immediate -w; rm -rf {dir}",
        pid = std::process::id(),
        pg_ctl = pg_ctl.join(" "),
    );
    Command::new("sh")
        .args(["-c", &script])
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()
}
