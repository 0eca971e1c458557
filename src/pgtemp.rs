//! A throwaway PostgreSQL server from the system's server binaries: the one implementation of "start a
//! temporary PostgreSQL" in this repository, used by `sync-process demo` (demo.rs) and by the integration
//! tests' harness (tests/it/support/pg.rs wraps it).
//!
//! Owns: finding the server binaries ([`bin_dir`]), `initdb` in a fresh temp dir (which is also the data dir,
//! the unix socket dir and the home of `server.log`), starting on a free 127.0.0.1 port with trust
//! authentication and `fsync=off`, stopping, and deleting everything on drop. When the effective uid is 0 the
//! server tools run as the `postgres` user (`runuser -u postgres --`) and the dir is chowned to it, because
//! PostgreSQL refuses to run as root. Each server also gets a detached reaper shell that stops it and removes
//! its dir once this process is gone, which covers `kill -9`, aborts and statics that are never dropped.
//! [`PgTemp::keep`] disarms both (for `demo --keep`). [`bouncer`]: PgBouncer in front of such a server, for the
//! pooler tests and the fleet benchmark.
//!
//! Does not own: databases inside the server beyond [`PgTemp::create_database`], schemas (migrate.rs) or the
//! daemon's configuration. Never for production data: fsync is off and every local connection is trusted.

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
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postgres::{Client, NoTls};

use crate::error::{Error, Result};

pub mod bouncer;

/// Address every throwaway server listens on.
pub const HOST: &str = "127.0.0.1";
/// Superuser of every throwaway server (also the OS user the server runs as when started by root).
pub const USER: &str = "postgres";

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: usize = 5;
const INSTALL_HINT: &str = "install them with `apt-get install -y postgresql`";

/// Extra set-up for [`PgTemp::start`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Lines appended to postgresql.conf, e.g. `"ssl = on"`, `"timezone = 'Asia/Tokyo'"`.
    pub extra_conf: Vec<String>,
    /// Replaces pg_hba.conf when `Some`.
    pub hba_lines: Option<Vec<String>>,
    /// Files written into the data dir before the first start (mode 0600, owned by postgres when root),
    /// e.g. `("server.key".into(), pem_bytes)`.
    pub files: Vec<(String, Vec<u8>)>,
}

/// How to stop a server (pg_ctl's `-m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Disconnect clients, checkpoint, exit.
    Fast,
    /// Exit at once, like a crash: the next start runs recovery.
    Immediate,
}

impl StopMode {
    fn as_str(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// A running (or stopped) throwaway server; see the module docs. Drop stops it (immediate) and deletes its dir
/// unless [`PgTemp::keep`] was called.
pub struct PgTemp {
    dir: PathBuf,
    port: u16,
    reaper: Option<Child>,
    kept: bool,
}

impl PgTemp {
    /// Creates `<temp dir>/<prefix>-<pid>-<n>-<nanos>`, runs initdb there and starts the server on a free
    /// loopback port (a few attempts, in case another process takes the port first). Waits until it accepts
    /// connections.
    pub fn start(prefix: &str, opts: &Options) -> Result<PgTemp> {
        bin_dir()?; // fail early, with the install hint
        let dir = unique_temp_dir(prefix)?;
        // From here on, Drop (and the reaper) clean up whatever goes wrong.
        let mut server = PgTemp {
            reaper: spawn_reaper(&dir),
            dir,
            port: 0,
            kept: false,
        };
        if is_root() {
            chown_to_postgres(&server.dir)?;
        }
        server.init(opts)?;
        let mut errors = Vec::new();
        for _ in 0..START_ATTEMPTS {
            server.port = free_port()?;
            match server.pg_ctl_start() {
                Ok(()) => {
                    server.wait_ready()?;
                    return Ok(server);
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(Error::Other(format!(
            "PostgreSQL in {} did not start after {START_ATTEMPTS} attempts:\n{}\n{}",
            server.dir.display(),
            errors.join("\n"),
            server.log_tail(40)
        )))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &str {
        HOST
    }

    /// The data dir (also the temp dir that Drop deletes).
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// Superuser settings for database `db` of this server (no connect timeout set).
    pub fn config(&self, db: &str) -> postgres::Config {
        client_config(HOST, self.port, db)
    }

    /// A superuser connection to database `db`.
    pub fn connect(&self, db: &str) -> Result<Client> {
        self.config(db)
            .connect(NoTls)
            .map_err(|e| Error::Other(format!("connecting to PostgreSQL on {HOST}:{}/{db}: {e}", self.port)))
    }

    /// `CREATE DATABASE name` (the name is used as an identifier: letters, digits and `_` only).
    pub fn create_database(&self, name: &str) -> Result<()> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::Other(format!(
                "database name {name:?}: only letters, digits and _ are allowed"
            )));
        }
        self.connect("postgres")?
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .map_err(|e| Error::Other(format!("CREATE DATABASE {name} on {HOST}:{}: {e}", self.port)))
    }

    /// Stops the server, keeping its data; see [`PgTemp::start_again`].
    pub fn stop(&self, mode: StopMode) -> Result<()> {
        let dir = self.dir_str();
        let out = self.tool("pg_ctl", &["stop", "-D", &dir, "-m", mode.as_str(), "-w", "-t", "60"])?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Other(format!(
                "pg_ctl stop -m {} failed ({}): {}\n{}",
                mode.as_str(),
                out.status,
                output_text(&out),
                self.log_tail(40)
            )))
        }
    }

    /// Starts a stopped server again on the same data dir and port, and waits until it accepts connections.
    pub fn start_again(&self) -> Result<()> {
        self.pg_ctl_start()?;
        self.wait_ready()
    }

    /// Whether `pg_ctl status` finds the server running.
    pub fn is_running(&self) -> bool {
        self.tool("pg_ctl", &["status", "-D", &self.dir_str()])
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// The last `lines` lines of the server log, with a header line.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read(self.dir.join("server.log")).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let all: Vec<&str> = log.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        format!("--- tail of {}/server.log ---\n{tail}", self.dir.display())
    }

    /// `psql` command line that connects to database `db` of this server.
    pub fn psql_command(&self, db: &str) -> String {
        format!("psql -h {HOST} -p {} -U {USER} {db}", self.port)
    }

    /// Shell command line that stops this server (as postgres when run by root).
    pub fn stop_command(&self) -> String {
        match tool_argv("pg_ctl") {
            Ok(argv) => {
                let argv: Vec<String> = argv.iter().map(|a| sh_quote(a)).collect();
                format!("{} -D {} stop", argv.join(" "), sh_quote(&self.dir_str()))
            }
            Err(_) => format!("pg_ctl -D {} stop", sh_quote(&self.dir_str())),
        }
    }

    /// Leaves the server running and its dir in place when this value is dropped (the reaper is stopped
    /// too). Returns the data dir.
    pub fn keep(mut self) -> PathBuf {
        self.kept = true;
        if let Some(mut reaper) = self.reaper.take() {
            let _ = reaper.kill();
            let _ = reaper.wait();
        }
        self.dir.clone()
    }

    fn dir_str(&self) -> String {
        self.dir.to_string_lossy().into_owned()
    }

    /// Runs a server tool (as postgres when root) from the data dir, in its own process group (so a Ctrl-C
    /// meant for the caller does not reach it), and collects its output.
    fn tool(&self, name: &str, args: &[&str]) -> Result<Output> {
        let argv = tool_argv(name)?;
        Command::new(&argv[0])
            .args(&argv[1..])
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .process_group(0)
            .output()
            .map_err(|e| Error::io(format!("running {}", argv.join(" ")), e))
    }

    fn init(&self, opts: &Options) -> Result<()> {
        let dir = self.dir_str();
        let args = [
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
        ];
        let out = self.tool("initdb", &args)?;
        if !out.status.success() {
            return Err(Error::Other(format!(
                "initdb -D {dir} failed ({}):\n{}",
                out.status,
                output_text(&out)
            )));
        }
        let mut conf = format!(
            "\n# throwaway server (sync-process pgtemp): never for real data\nlisten_addresses = '{HOST}'\n\
             unix_socket_directories = '{dir}'\nfsync = off\nsynchronous_commit = off\n\
             full_page_writes = off\nmax_connections = 200\nshared_buffers = 32MB\n"
        );
        for line in &opts.extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        let conf_path = self.dir.join("postgresql.conf");
        OpenOptions::new()
            .append(true)
            .open(&conf_path)
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .map_err(|e| Error::io(format!("appending to {}", conf_path.display()), e))?;
        if let Some(hba) = &opts.hba_lines {
            let path = self.dir.join("pg_hba.conf");
            fs::write(&path, hba.join("\n") + "\n").map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        }
        for (name, bytes) in &opts.files {
            let path = self.dir.join(name);
            fs::write(&path, bytes).map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::io(format!("chmod 600 {}", path.display()), e))?;
            if is_root() {
                chown_to_postgres(&path)?;
            }
        }
        Ok(())
    }

    fn pg_ctl_start(&self) -> Result<()> {
        let dir = self.dir_str();
        let log = self.dir.join("server.log").to_string_lossy().into_owned();
        let port = format!("-p {}", self.port);
        let out = self.tool(
            "pg_ctl",
            &["start", "-D", &dir, "-l", &log, "-w", "-t", "30", "-o", &port],
        )?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Other(format!(
                "pg_ctl start on port {} failed ({}): {}",
                self.port,
                out.status,
                output_text(&out)
            )))
        }
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut config = self.config("postgres");
        config.connect_timeout(Duration::from_secs(1));
        loop {
            let err = match config.connect(NoTls) {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(Error::Other(format!(
                    "PostgreSQL on {HOST}:{} not accepting connections after {READY_TIMEOUT:?}: {err}\n{}",
                    self.port,
                    self.log_tail(40)
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PgTemp {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        // Never panics: every step ignores failure.
        if let Ok(argv) = tool_argv("pg_ctl") {
            let _ = Command::new(&argv[0])
                .args(&argv[1..])
                .args(["stop", "-D", &self.dir_str(), "-m", "immediate", "-w"])
                .current_dir("/")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .status();
        }
        let _ = fs::remove_dir_all(&self.dir);
        if let Some(mut reaper) = self.reaper.take() {
            let _ = reaper.kill();
            let _ = reaper.wait();
        }
    }
}

/// Connection settings for `db` on `host:port` as the superuser (no password: the servers trust local
/// connections).
pub fn client_config(host: &str, port: u16, db: &str) -> postgres::Config {
    let mut config = postgres::Config::new();
    config.host(host).port(port).user(USER).dbname(db);
    config
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

/// The directory holding initdb, pg_ctl and postgres: `pg_config --bindir` if it has initdb, else the highest
/// `/usr/lib/postgresql/<version>/bin` that has it. The error says how to install them.
pub fn bin_dir() -> Result<&'static Path> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match DIR.get_or_init(find_bin_dir) {
        Ok(dir) => Ok(dir.as_path()),
        Err(msg) => Err(Error::Other(msg.clone())),
    }
}

fn find_bin_dir() -> Result<PathBuf, String> {
    let has_initdb = |d: &Path| d.join("initdb").is_file();
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(dir) = from_pg_config.filter(|d| has_initdb(d)) {
        return Ok(dir);
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
        Some((_, dir)) => Ok(dir),
        None => Err(format!(
            "PostgreSQL server binaries not found (tried pg_config --bindir and /usr/lib/postgresql/*/bin): \
             {INSTALL_HINT}"
        )),
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    TcpListener::bind((HOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::io(format!("binding {HOST}:0 to find a free port"), e))
}

/// Creates a fresh directory `<temp dir>/<prefix>-<pid>-<counter>-<nanos>` (also used by the test harness).
pub fn unique_temp_dir(prefix: &str) -> Result<PathBuf> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}-{nanos}", std::process::id()));
    fs::create_dir(&dir).map_err(|e| Error::io(format!("creating temp dir {}", dir.display()), e))?;
    Ok(dir)
}

/// argv prefix for a server tool: `runuser -u postgres -- <bindir>/<name>` when root (public for the test
/// harness, which runs `pg_basebackup` and `pg_ctl` on a standby's data dir).
pub fn tool_argv(name: &str) -> Result<Vec<String>> {
    let exe = bin_dir()?.join(name).to_string_lossy().into_owned();
    Ok(if is_root() {
        ["runuser", "-u", USER, "--", &exe].map(str::to_owned).to_vec()
    } else {
        vec![exe]
    })
}

fn chown_to_postgres(path: &Path) -> Result<()> {
    let status = Command::new("chown")
        .arg(format!("{USER}:"))
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| Error::io("running chown", e))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Other(format!(
            "chown {USER}: {} failed ({status}); as root, the server runs as the `{USER}` user, which the \
             postgresql package creates: {INSTALL_HINT}",
            path.display()
        )))
    }
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Quotes `s` for sh (single quotes, unless it is made only of characters sh leaves alone).
pub fn sh_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/-_.:=@%+,".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Detached shell that, once this process is gone, stops the server in `dir` and removes `dir`. Own process
/// group (survives Ctrl-C), stdio on /dev/null (so a caller's output pipes are not held open). `None` if sh is
/// missing. Public for the test harness's standby servers (kill the returned child to disarm it).
pub fn spawn_reaper(dir: &Path) -> Option<Child> {
    let argv = tool_argv("pg_ctl").ok()?;
    let dir = sh_quote(&dir.to_string_lossy());
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {pg_ctl} stop -D {dir} -m immediate -w; rm -rf {dir}",
        pid = std::process::id(),
        pg_ctl = argv.iter().map(|a| sh_quote(a)).collect::<Vec<_>>().join(" "),
    );
    detached_shell(&script).ok()
}

/// `sh -c script` in its own process group (survives Ctrl-C), in `/`, stdio on /dev/null: the watcher shells of
/// the servers here and of [`bouncer`].
fn detached_shell(script: &str) -> std::io::Result<Child> {
    Command::new("sh")
        .args(["-c", script])
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sh_quote_survives_quotes() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
        assert_eq!(sh_quote("/tmp/x-1"), "/tmp/x-1");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote(""), "''");
    }

    #[test]
    fn create_database_rejects_odd_names_before_connecting() {
        let fake = PgTemp {
            dir: PathBuf::from("/nonexistent"),
            port: 1,
            reaper: None,
            kept: true,
        };
        assert!(fake.create_database("x; DROP").is_err());
        assert!(fake.create_database("").is_err());
    }
}
