//! Shared by the benches (benches/drain.rs, benches/download.rs): two throwaway PostgreSQL servers (local and
//! remote, from `sync_process::pgtemp`: fsync, synchronous_commit and full_page_writes off), the daemon's
//! environment, the `sync-process` binary as a measured child process (wall time, peak RSS by /proc polling
//! and by `wait4`, CPU time), the machine's description and a markdown table printer.
//!
//! Does not own: what is measured (each bench), the servers' mechanics (src/pgtemp.rs), the proxy
//! (tests/it/support/proxy.rs, reused by path in drain.rs).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::raw::{c_int, c_long};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};
use sync_process::config::Config;
use sync_process::db::ConnectionManager;
use sync_process::pgtemp::{self, PgTemp};
use sync_process::shutdown::Shutdown;

/// The release binary, built by `cargo bench` (the bench profile inherits release: opt-level "s", lto).
pub const BIN: &str = env!("CARGO_BIN_EXE_sync-process");
/// Database created on each server.
pub const DB: &str = "bench";
/// Handed to the daemon (trust authentication ignores it; the daemon rejects an empty one).
pub const PASSWORD: &str = "bench-password-not-secret";

/// `name` from the environment parsed, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} does not parse")),
        _ => default,
    }
}

/// Whether section `name` runs: all of them unless BENCH_ONLY lists some (comma separated).
pub fn selected(name: &str) -> bool {
    match std::env::var("BENCH_ONLY") {
        Ok(list) if !list.trim().is_empty() => list.split(',').any(|s| s.trim() == name),
        _ => true,
    }
}

/// The local (edge) and remote (central) servers, each with a migrated database [`DB`].
pub struct Servers {
    pub local: PgTemp,
    pub remote: PgTemp,
}

impl Servers {
    pub fn start() -> Servers {
        let opts = pgtemp::Options::default();
        let local = PgTemp::start("sync-process-bench-local", &opts).unwrap_or_else(|e| panic!("{e}"));
        let remote = PgTemp::start("sync-process-bench-remote", &opts).unwrap_or_else(|e| panic!("{e}"));
        local.create_database(DB).unwrap_or_else(|e| panic!("{e}"));
        remote.create_database(DB).unwrap_or_else(|e| panic!("{e}"));
        let servers = Servers { local, remote };
        let cfg = Config::from_map(&servers.env(servers.remote.port(), 100)).expect("bench configuration");
        let conns = ConnectionManager::new(&cfg, Shutdown::new()).expect("connection manager");
        sync_process::migrate::migrate(&conns.local, false).expect("migrating local");
        sync_process::migrate::migrate(&conns.remote, false).expect("migrating remote");
        servers
    }

    pub fn local_client(&self) -> Client {
        connect(self.local.port())
    }

    pub fn remote_client(&self) -> Client {
        connect(self.remote.port())
    }

    /// The daemon's variables, the remote reached at 127.0.0.1:`remote_port` (the server or a proxy). TLS off
    /// on both sides (the servers have none, and the hand-written loop uses none either); logs at info, to
    /// stderr only; status server off.
    pub fn env(&self, remote_port: u16, batch_size: u32) -> BTreeMap<String, String> {
        let (lp, rp, bs) = (self.local.port().to_string(), remote_port.to_string(), batch_size.to_string());
        [
            ("POSTGRES_SYNC_HOST", pgtemp::HOST),
            ("POSTGRES_SYNC_PORT", &lp),
            ("POSTGRES_SYNC_DB", DB),
            ("POSTGRES_SYNC_USER", pgtemp::USER),
            ("POSTGRES_SYNC_PASSWORD", PASSWORD),
            ("POSTGRES_SYNC_SSLMODE", "disable"),
            ("POSTGRES_CLIENT_HOST", pgtemp::HOST),
            ("POSTGRES_CLIENT_PORT", &rp),
            ("POSTGRES_CLIENT_DB", DB),
            ("POSTGRES_CLIENT_USER", pgtemp::USER),
            ("POSTGRES_CLIENT_PASSWORD", PASSWORD),
            ("POSTGRES_CLIENT_SSLMODE", "disable"),
            ("BATCH_SIZE", &bs),
            ("LOG_LEVEL", "info"),
            ("LOG_FILE", ""),
            ("STATUS_BIND", ""),
            ("SYNC_SOURCE_ID", "bench-site"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// `psql` reaching [`DB`] on `port`: `<bindir>/psql` or `/usr/bin/psql`.
    pub fn psql(port: u16) -> Command {
        let from_bindir = pgtemp::bin_dir().ok().map(|d| d.join("psql")).filter(|p| p.is_file());
        let exe = from_bindir.unwrap_or_else(|| PathBuf::from("/usr/bin/psql"));
        let mut cmd = Command::new(exe);
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", pgtemp::HOST, "-p"])
            .arg(port.to_string())
            .args(["-U", pgtemp::USER, "-d", DB]);
        cmd
    }
}

pub fn connect(port: u16) -> Client {
    pgtemp::client_config(pgtemp::HOST, port, DB)
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("connecting to {}:{port}/{DB}: {e}", pgtemp::HOST))
}

// ---------------------------------------------------------------------------------------------------------
// The binary as a measured child.

#[repr(C)]
#[derive(Default)]
struct Timeval {
    tv_sec: c_long,
    tv_usec: c_long,
}

/// `struct rusage` of Linux (LP64 and ILP32 alike: two timevals, then 14 longs).
#[repr(C)]
#[derive(Default)]
struct Rusage {
    ru_utime: Timeval,
    ru_stime: Timeval,
    ru_maxrss: c_long,
    rest: [c_long; 13],
}

extern "C" {
    fn wait4(pid: c_int, status: *mut c_int, options: c_int, rusage: *mut Rusage) -> c_int;
    fn kill(pid: c_int, sig: c_int) -> c_int;
}

pub const SIGTERM: c_int = 15;

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: c_int) {
    // SAFETY: kill(2) takes plain integers.
    let rc = unsafe { kill(pid as c_int, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// What /proc/<pid>/status showed at its highest, polled every 20 ms.
#[derive(Clone, Debug, Default)]
pub struct Peaks {
    pub vm_hwm_kb: u64,
    pub rss_anon_kb: u64,
    pub rss_file_kb: u64,
    pub threads: u64,
    /// Rss by mapping group (binary, libcrypto, heap, anonymous, ...), from the /proc/<pid>/smaps sample
    /// (one a second) with the highest total.
    pub smaps: Vec<(String, u64)>,
}

/// A finished child.
#[derive(Debug)]
pub struct Finished {
    pub wall: Duration,
    /// Exit code, or None when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr_tail: String,
    /// ru_maxrss from wait4: the exact peak RSS, in kB.
    pub maxrss_kb: u64,
    pub user: Duration,
    pub sys: Duration,
    pub peaks: Peaks,
}

/// A running `sync-process` child with its /proc poller; [`Child::wait`] reaps it with `wait4`.
pub struct Child {
    pub pid: u32,
    started: Instant,
    stop: Arc<AtomicBool>,
    poller: Option<thread::JoinHandle<Peaks>>,
    dir: PathBuf,
    _child: std::process::Child,
}

/// Starts the binary with `args`, a cleared environment plus PATH, HOME and `env`; stdout and stderr go to files.
pub fn spawn(args: &[&str], env: &BTreeMap<String, String>) -> Child {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sync-process-bench-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir).expect("bench temp dir");
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_clear();
    for key in ["PATH", "HOME"] {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    cmd.envs(env)
        .stdin(Stdio::null())
        .stdout(fs::File::create(dir.join("stdout")).expect("stdout file"))
        .stderr(fs::File::create(dir.join("stderr")).expect("stderr file"));
    let started = Instant::now();
    let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {BIN}: {e}"));
    let pid = child.id();
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        thread::spawn(move || poll_proc(pid, &stop))
    };
    Child {
        pid,
        started,
        stop,
        poller: Some(poller),
        dir,
        _child: child,
    }
}

impl Child {
    /// Reaps the child (blocking) and collects everything.
    pub fn wait(mut self) -> Finished {
        let mut status: c_int = 0;
        let mut ru = Rusage::default();
        // SAFETY: a child of this process; status and ru are valid for writing.
        let rc = unsafe { wait4(self.pid as c_int, &mut status, 0, &mut ru) };
        let wall = self.started.elapsed();
        self.stop.store(true, Ordering::SeqCst);
        assert_eq!(rc, self.pid as c_int, "wait4({}) failed", self.pid);
        let peaks = self.poller.take().map(|p| p.join().unwrap_or_default()).unwrap_or_default();
        let code = if status & 0x7f == 0 {
            Some((status >> 8) & 0xff)
        } else {
            None
        };
        let tv = |t: &Timeval| Duration::from_micros((t.tv_sec as u64) * 1_000_000 + t.tv_usec as u64);
        let stdout = fs::read_to_string(self.dir.join("stdout")).unwrap_or_default();
        let stderr = fs::read_to_string(self.dir.join("stderr")).unwrap_or_default();
        let lines: Vec<&str> = stderr.lines().collect();
        let stderr_tail = lines[lines.len().saturating_sub(15)..].join("\n");
        let _ = fs::remove_dir_all(&self.dir);
        Finished {
            wall,
            code,
            stdout,
            stderr_tail,
            maxrss_kb: ru.ru_maxrss.max(0) as u64,
            user: tv(&ru.ru_utime),
            sys: tv(&ru.ru_stime),
            peaks,
        }
    }
}

fn status_kb(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn poll_proc(pid: u32, stop: &AtomicBool) -> Peaks {
    let mut peaks = Peaks::default();
    let mut best_smaps_total = 0;
    let mut last_smaps = Instant::now() - Duration::from_secs(10);
    let path = format!("/proc/{pid}/status");
    while !stop.load(Ordering::SeqCst) {
        let Ok(status) = fs::read_to_string(&path) else { break };
        let Some(hwm) = status_kb(&status, "VmHWM") else { break }; // a zombie has no memory lines
        peaks.vm_hwm_kb = peaks.vm_hwm_kb.max(hwm);
        peaks.rss_anon_kb = peaks.rss_anon_kb.max(status_kb(&status, "RssAnon").unwrap_or(0));
        peaks.rss_file_kb = peaks.rss_file_kb.max(status_kb(&status, "RssFile").unwrap_or(0));
        peaks.threads = peaks.threads.max(status_kb(&status, "Threads").unwrap_or(0));
        if last_smaps.elapsed() >= Duration::from_secs(1) {
            last_smaps = Instant::now();
            if let Some(groups) = smaps_groups(pid) {
                let total: u64 = groups.iter().map(|(_, kb)| kb).sum();
                if total > best_smaps_total {
                    best_smaps_total = total;
                    peaks.smaps = groups;
                }
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    peaks
}

/// Rss of `pid` by mapping group, largest first.
pub fn smaps_groups(pid: u32) -> Option<Vec<(String, u64)>> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut groups: BTreeMap<String, u64> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let name = line.split_whitespace().nth(5).unwrap_or("");
            current = if name.is_empty() {
                "anonymous (heap arenas, thread stacks)".into()
            } else if name.ends_with("sync-process") {
                "sync-process binary".into()
            } else if name.starts_with('/') {
                let file = name.rsplit('/').next().unwrap_or(name);
                file.split(".so").next().unwrap_or(file).to_string()
            } else {
                name.to_string()
            };
        } else if let Some(rest) = line.strip_prefix("Rss:") {
            let kb: u64 = rest.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
            *groups.entry(current.clone()).or_default() += kb;
        }
    }
    let mut v: Vec<(String, u64)> = groups.into_iter().filter(|(_, kb)| *kb > 0).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1));
    Some(v)
}

/// utime + stime of `pid` so far, from /proc/<pid>/stat.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

fn clock_ticks() -> u64 {
    static T: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *T.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    })
}

/// VmRSS and RssAnon of `pid` in kB.
pub fn rss_now(pid: u32) -> Option<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some((status_kb(&status, "VmRSS")?, status_kb(&status, "RssAnon")?))
}

// ---------------------------------------------------------------------------------------------------------
// Reporting.

/// Machine, date and versions, as markdown lines.
pub fn machine(pg: &mut Client) -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_else(|| "unknown".into());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb = status_kb(&meminfo, "MemTotal").unwrap_or(0);
    let nproc = thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let pg_version: String = pg
        .query_one("SHOW server_version", &[])
        .map(|r| r.get(0))
        .unwrap_or_default();
    format!(
        "Machine: {nproc} CPUs ({model}), {:.1} GiB RAM, Linux {}, PostgreSQL {pg_version} (throwaway servers: fsync, \
         synchronous_commit and full_page_writes off, shared_buffers 32MB); {date}.",
        mem_kb as f64 / 1024.0 / 1024.0,
        kernel.trim()
    )
}

/// Collects markdown table rows and prints them at the end (also as they come).
#[derive(Default)]
pub struct Report {
    rows: Mutex<Vec<[String; 6]>>,
    notes: Mutex<Vec<String>>,
}

impl Report {
    /// A row: figure, target, measured, reference/ratio, verdict, note.
    pub fn row(&self, figure: &str, target: &str, measured: String, ratio: String, verdict: Verdict) {
        let row = [
            figure.to_string(),
            target.to_string(),
            measured,
            ratio,
            verdict.to_string(),
            String::new(),
        ];
        println!("  | {} |", row[..5].join(" | "));
        self.rows.lock().unwrap().push(row);
    }

    pub fn note(&self, text: String) {
        println!("  note: {text}");
        self.notes.lock().unwrap().push(text);
    }

    pub fn print(&self, title: &str) {
        println!("\n## {title}\n");
        println!("| figure | target | measured | ratio / reference | pass/miss |");
        println!("|---|---|---|---|---|");
        for r in self.rows.lock().unwrap().iter() {
            println!("| {} | {} | {} | {} | {} |", r[0], r[1], r[2], r[3], r[4]);
        }
        let notes = self.notes.lock().unwrap();
        if !notes.is_empty() {
            println!();
            for n in notes.iter() {
                println!("- {n}");
            }
        }
    }
}

#[derive(Clone, Copy)]
pub enum Verdict {
    Pass,
    Miss,
    Info,
}

impl Verdict {
    pub fn of(ok: bool) -> Verdict {
        if ok {
            Verdict::Pass
        } else {
            Verdict::Miss
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "**pass**",
            Verdict::Miss => "**MISS**",
            Verdict::Info => "-",
        })
    }
}

/// 12345.6 -> "12,346"
pub fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

pub fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}
