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
/// BENCH_DAEMON_BIN overrides it (e.g. a build with symbols, for perf).
pub const BIN: &str = env!("CARGO_BIN_EXE_sync-process");

/// The binary the daemon runs use: BENCH_DAEMON_BIN or [`BIN`].
pub fn bin() -> String {
    std::env::var("BENCH_DAEMON_BIN").unwrap_or_else(|_| BIN.to_string())
}
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

/// The digest of a readings table: md5 over every column as text, in (meter_id, timestamp, value) order (unit
/// and metadata as tie-breakers). Sessions keep the server's DateStyle (ISO) on both sides.
pub const DIGEST: &str = "SELECT count(*), md5(coalesce(string_agg(
    meter_id || '|' || timestamp::text || '|' || value::text || '|' || unit || '|' || coalesce(metadata::text, '<null>'),
    E'\\n' ORDER BY meter_id, timestamp, value, unit, metadata::text), '')) FROM meter_readings";

/// The readings of the uniform sections (benches/drain.rs, benches/inflight.rs): ~20 meters, increasing timestamps with microseconds, NUMERIC with 2-4 decimals (scale kept as
/// text), two units, small JSONB metadata on every other reading. `$1` rows, deterministic.
pub const SEED: &str = "INSERT INTO meter_readings (meter_id, timestamp, value, unit, metadata)
SELECT 'meter-' || lpad((g % 20)::text, 2, '0'),
       timestamp '2024-01-01 00:00:00' + g * interval '1 second' + ((g * 7919) % 1000000) * interval '1 microsecond',
       round(((g * 104729) % 100000000)::numeric / 1000, 2 + (g % 3)::int),
       CASE WHEN g % 20 < 15 THEN 'kWh' ELSE 'm3' END,
       CASE WHEN g % 2 = 0 THEN jsonb_build_object('quality', 'good', 'source', 'modbus', 'seq', g) END
FROM generate_series(1::bigint, $1::bigint) AS g";

/// BENCH_SHARED_BUFFERS (e.g. `128MB`, what Debian's postgresql-15 package gives an edge box): both servers'
/// shared_buffers; unset, pgtemp's 32MB.
pub fn shared_buffers() -> String {
    std::env::var("BENCH_SHARED_BUFFERS").unwrap_or_else(|_| "32MB".into())
}

/// BENCH_PGSS=1: the servers load pg_stat_statements and each measured run prints its statements' server time.
pub fn pgss() -> bool {
    std::env::var("BENCH_PGSS").as_deref() == Ok("1")
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

/// Settings that make a throwaway server durable like an edge box's: every commit flushed to disk (pgtemp
/// turns these off; later lines of postgresql.conf win). The data dirs are under the temp dir, on disk here.
pub const DURABLE: &[&str] = &["fsync = on", "synchronous_commit = on", "full_page_writes = on"];

impl Servers {
    pub fn start() -> Servers {
        Servers::start_with(&[])
    }

    /// [`Servers::start`] with `conf` lines appended to both servers' postgresql.conf (e.g. [`DURABLE`]).
    pub fn start_with(conf: &[&str]) -> Servers {
        let mut opts = pgtemp::Options::default();
        if pgss() {
            opts.extra_conf = vec![
                "shared_preload_libraries = 'pg_stat_statements'".into(),
                "pg_stat_statements.track_planning = on".into(),
                "pg_stat_statements.track = all".into(),
            ];
        }
        opts.extra_conf.push(format!("shared_buffers = '{}'", shared_buffers()));
        opts.extra_conf.extend(conf.iter().map(|l| l.to_string()));
        let local = PgTemp::start("sync-process-bench-local", &opts).unwrap_or_else(|e| panic!("{e}"));
        let remote = PgTemp::start("sync-process-bench-remote", &opts).unwrap_or_else(|e| panic!("{e}"));
        local.create_database(DB).unwrap_or_else(|e| panic!("{e}"));
        remote.create_database(DB).unwrap_or_else(|e| panic!("{e}"));
        let servers = Servers { local, remote };
        let cfg = Config::from_map(&servers.env(servers.remote.port(), 100)).expect("bench configuration");
        let conns = ConnectionManager::new(&cfg, Shutdown::new()).expect("connection manager");
        sync_process::migrate::migrate(&conns.local, false).expect("migrating local");
        sync_process::migrate::migrate(&conns.remote, false).expect("migrating remote");
        if pgss() {
            for mut c in [servers.local_client(), servers.remote_client()] {
                c.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                    .expect("pg_stat_statements");
            }
        }
        // BENCH_LOCAL_DB_SET / BENCH_REMOTE_DB_SET="name=value,...": `ALTER DATABASE bench SET` on that side, for
        // experiments (e.g. plan_cache_mode=force_generic_plan); every later session of either client sees it.
        for (var, port) in [
            ("BENCH_LOCAL_DB_SET", servers.local.port()),
            ("BENCH_REMOTE_DB_SET", servers.remote.port()),
        ] {
            if let Ok(list) = std::env::var(var) {
                let mut c = connect(port);
                for kv in list.split(',').filter(|kv| !kv.trim().is_empty()) {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    c.batch_execute(&format!(
                        "ALTER DATABASE {DB} SET {} = '{}'",
                        k.trim(),
                        v.trim().replace('\'', "''")
                    ))
                    .unwrap_or_else(|e| panic!("{var}: {kv}: {e}"));
                }
            }
        }
        servers
    }

    /// With BENCH_PGSS=1: forgets the statement statistics of both servers.
    pub fn pgss_reset(&self) {
        if pgss() {
            for mut c in [self.local_client(), self.remote_client()] {
                c.batch_execute("SELECT pg_stat_statements_reset()")
                    .expect("pg_stat_statements_reset");
            }
        }
    }

    /// With BENCH_PGSS=1: prints the statements that took the most server time on each side since the last
    /// reset (calls, execution and planning time, rows, buffers).
    pub fn pgss_print(&self, label: &str) {
        if !pgss() {
            return;
        }
        for (side, mut c) in [("local", self.local_client()), ("remote", self.remote_client())] {
            let rows = c
                .query(
                    "SELECT calls, total_exec_time, total_plan_time, rows, shared_blks_hit + shared_blks_read,
                            regexp_replace(query, '\\s+', ' ', 'g')
                     FROM pg_stat_statements
                     WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                       AND query NOT LIKE '%pg_stat_statements%'
                     ORDER BY total_exec_time + total_plan_time DESC LIMIT 8",
                    &[],
                )
                .expect("pg_stat_statements");
            println!("    [{label}] {side} server, statements by server time:");
            for r in rows {
                let (calls, exec, plan, n, blks, q): (i64, f64, f64, i64, i64, String) =
                    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
                let q: String = q.chars().take(110).collect();
                println!(
                    "      {calls:>7} calls  exec {exec:>8.1} ms  plan {plan:>7.1} ms  {:>6.1} µs/call  rows {n:>8}  buffers {blks:>8}  {q}",
                    (exec + plan) * 1000.0 / calls.max(1) as f64
                );
            }
        }
    }

    pub fn local_client(&self) -> Client {
        connect(self.local.port())
    }

    pub fn remote_client(&self) -> Client {
        connect(self.remote.port())
    }

    /// The daemon's variables, the remote reached at 127.0.0.1:`remote_port` (the server or a proxy). TLS off
    /// on both sides (the servers have none, and the hand-written loop uses none either); logs at info, to
    /// stderr only; status server off. `MALLOC_ARENA_MAX=2` as the packaged systemd unit sets it (glibc
    /// otherwise gives each thread that allocates its own arena).
    pub fn env(&self, remote_port: u16, batch_size: u32) -> BTreeMap<String, String> {
        let (lp, rp, bs) = (
            self.local.port().to_string(),
            remote_port.to_string(),
            batch_size.to_string(),
        );
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
            ("MALLOC_ARENA_MAX", "2"),
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

/// One round trip to the server at `port` as a client sees it: the median of `n` `SELECT 1`.
pub fn round_trip(port: u16, n: usize) -> Duration {
    let mut c = connect(port);
    let mut times: Vec<f64> = (0..n.max(1))
        .map(|_| {
            let t = Instant::now();
            c.simple_query("SELECT 1").expect("SELECT 1 through the proxy");
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    Duration::from_secs_f64(times[times.len() / 2])
}

// ---------------------------------------------------------------------------------------------------------
// The binary as a measured child.

#[repr(C)]
#[derive(Default)]
struct Timeval {
    tv_sec: c_long,
    tv_usec: c_long,
}

/// `struct rusage` of 64-bit Linux: two timevals, then 14 longs.
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
    fn getrusage(who: c_int, rusage: *mut Rusage) -> c_int;
}

fn timeval(t: &Timeval) -> Duration {
    Duration::from_micros((t.tv_sec.max(0) as u64) * 1_000_000 + t.tv_usec.max(0) as u64)
}

/// CPU time (user + sys) of this process plus that of its reaped children.
pub fn own_cpu() -> Duration {
    let mut total = Duration::ZERO;
    for who in [0, -1] {
        // RUSAGE_SELF, RUSAGE_CHILDREN
        let mut ru = Rusage::default();
        // SAFETY: ru is valid for writing.
        if unsafe { getrusage(who, &mut ru) } == 0 {
            total += timeval(&ru.ru_utime) + timeval(&ru.ru_stime);
        }
    }
    total
}

/// CPU time (user + sys) used so far by the PostgreSQL server whose data dir is `data_dir`: the postmaster,
/// its live children, and the children it has reaped (ended backends).
pub fn server_cpu(data_dir: &std::path::Path) -> Duration {
    let Some(postmaster) = fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
    else {
        return Duration::ZERO;
    };
    let mut ticks = 0u64;
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else { continue };
        let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let ppid = field(1) as u32;
        if pid == postmaster {
            ticks += field(11) + field(12) + field(13) + field(14); // utime stime cutime cstime
        } else if ppid == postmaster {
            ticks += field(11) + field(12);
        }
    }
    Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
}

/// CPU used by the local server, the remote server and this process with its children, between two points.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSplit {
    pub local: Duration,
    pub remote: Duration,
    pub client: Duration,
}

impl CpuSplit {
    pub fn now(servers: &Servers) -> CpuSplit {
        CpuSplit {
            local: server_cpu(servers.local.data_dir()),
            remote: server_cpu(servers.remote.data_dir()),
            client: own_cpu(),
        }
    }

    /// The CPU used since `before`, measured after a 200 ms pause: the backends of connections just closed have
    /// exited and been reaped by then (while one is being reaped its time is briefly in neither place).
    pub fn after(servers: &Servers, before: CpuSplit) -> CpuSplit {
        thread::sleep(Duration::from_millis(200));
        CpuSplit::now(servers).since(before)
    }

    pub fn since(self, before: CpuSplit) -> CpuSplit {
        CpuSplit {
            local: self.local.saturating_sub(before.local),
            remote: self.remote.saturating_sub(before.remote),
            client: self.client.saturating_sub(before.client),
        }
    }

    /// "local PG 1.20 s, remote PG 0.80 s, client 0.30 s (of 1.50 s wall)"
    pub fn describe(&self, wall: Duration, client: &str) -> String {
        format!(
            "CPU: local PostgreSQL {:.2} s, remote PostgreSQL {:.2} s, {client} {:.2} s; wall {:.2} s",
            self.local.as_secs_f64(),
            self.remote.as_secs_f64(),
            self.client.as_secs_f64(),
            wall.as_secs_f64()
        )
    }
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
    /// Rss by mapping group (binary, libcrypto, heap, anonymous, ...), from a /proc/<pid>/smaps sample taken
    /// near the peak.
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
    /// ru_maxrss from wait4, in kB. Not the daemon's own figure: Linux folds the parent's RSS at spawn into
    /// it (the child shares the parent's memory until exec), so it reads high when the bench process is big.
    /// The reports use the polled VmHWM ([`Peaks::vm_hwm_kb`]) instead.
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
    let mut cmd = Command::new(bin());
    cmd.args(args).env_clear();
    for key in ["PATH", "HOME"] {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    cmd.envs(env);
    // BENCH_DAEMON_ENV="K=V,K2=V2": extra variables for every daemon run (experiments, e.g. MALLOC_ARENA_MAX=1);
    // separated by `;` instead when it holds one, so that a value can be a comma list (UPLOAD_VALIDATE).
    if let Ok(extra) = std::env::var("BENCH_DAEMON_ENV") {
        let sep = if extra.contains(';') { ';' } else { ',' };
        for kv in extra.split(sep).filter(|kv| !kv.trim().is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            cmd.env(k.trim(), v.trim());
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(dir.join("stdout")).expect("stdout file"))
        .stderr(fs::File::create(dir.join("stderr")).expect("stderr file"));
    let started = Instant::now();
    let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {}: {e}", bin()));
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
        let peaks = self
            .poller
            .take()
            .map(|p| p.join().unwrap_or_default())
            .unwrap_or_default();
        let code = if status & 0x7f == 0 {
            Some((status >> 8) & 0xff)
        } else {
            None
        };
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
            user: timeval(&ru.ru_utime),
            sys: timeval(&ru.ru_stime),
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
    // smaps is read when VmRSS has grown by 256 kB since the last read (at most every 100 ms), so the breakdown
    // kept is one taken near the peak.
    let mut smaps_at_rss = 0;
    let mut last_smaps = Instant::now() - Duration::from_secs(10);
    let path = format!("/proc/{pid}/status");
    while !stop.load(Ordering::SeqCst) {
        let Ok(status) = fs::read_to_string(&path) else { break };
        let Some(hwm) = status_kb(&status, "VmHWM") else { break }; // a zombie has no memory lines
        peaks.vm_hwm_kb = peaks.vm_hwm_kb.max(hwm);
        peaks.rss_anon_kb = peaks.rss_anon_kb.max(status_kb(&status, "RssAnon").unwrap_or(0));
        peaks.rss_file_kb = peaks.rss_file_kb.max(status_kb(&status, "RssFile").unwrap_or(0));
        peaks.threads = peaks.threads.max(status_kb(&status, "Threads").unwrap_or(0));
        let rss = status_kb(&status, "VmRSS").unwrap_or(0);
        if rss >= smaps_at_rss + 256 && last_smaps.elapsed() >= Duration::from_millis(100) {
            last_smaps = Instant::now();
            if let Some(groups) = smaps_groups(pid) {
                smaps_at_rss = rss;
                peaks.smaps = groups;
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
    v.sort_by_key(|g| std::cmp::Reverse(g.1));
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

/// Threads of `pid` now.
pub fn threads_now(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_kb(&status, "Threads")
}

/// With BENCH_PERF_DIR set: a system-wide `perf record -a` (cpu-clock, 999 Hz, flat) around one measured run,
/// written to `<dir>/<label>.data`; otherwise nothing. Read with `perf report -i <file> --sort comm,dso,sym`.
pub struct Profile(Option<std::process::Child>);

impl Profile {
    pub fn start(label: &str) -> Profile {
        let Ok(dir) = std::env::var("BENCH_PERF_DIR") else {
            return Profile(None);
        };
        let _ = fs::create_dir_all(&dir);
        let file = PathBuf::from(dir).join(format!("{label}.data"));
        let child = Command::new("perf")
            .args(["record", "-a", "-F", "999", "-e", "cpu-clock", "-o"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        thread::sleep(Duration::from_millis(500)); // perf needs a moment before it records
        Profile(child)
    }

    pub fn stop(self) {
        if let Some(mut child) = self.0 {
            signal(child.id(), 2); // SIGINT: perf writes its file and exits
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Reporting.

/// Machine, date and versions, as markdown lines.
pub fn machine(pg: &mut Client) -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
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
         synchronous_commit and full_page_writes off, shared_buffers {}); {date}.",
        mem_kb as f64 / 1024.0 / 1024.0,
        kernel.trim(),
        shared_buffers()
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
