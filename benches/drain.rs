//! `cargo bench --bench drain`: the upload drain against its references, in one run, on the same two throwaway
//! servers (BENCHMARKS.md, "Upload drain", holds the figures and how to read them).
//!
//! Sections, in order:
//! - loopback: 200,000 queued readings (BENCH_ROWS) drained by the binary COPY pipe (the limit), by a
//!   hand-written 100-row store-and-forward loop, and by the daemon (`once`) at BATCH_SIZE 5000 and 100, with
//!   the daemon's peak RSS; the four are interleaved ROUNDS times (3) and medians reported; then the hand loop
//!   once more without its `is_synchronized` predicate (BENCH_BARE_LOOP=0 skips it), for contrast;
//! - latency: 20,000 readings through the fault proxy at 10 ms each way: hand-written loop vs the daemon, with
//!   one batch in flight (the default) and with UPLOAD_BATCHES_IN_FLIGHT=4 (opt-in);
//! - growth: the daemon at BATCH_SIZE 100 on 20k, 200k (from loopback) and 1M readings: per-row cost;
//! - explain: EXPLAIN (ANALYZE, BUFFERS) of the claim after 100,000 deletions (200k and 1M queues);
//! - idle: `run` with an empty queue, a cycle every 2 s, for SOAK_SECONDS (60): CPU time and RSS;
//! - 5m (only with BENCH_5M=1): 5,000,000 queued readings, the daemon's peak RSS over ~30 s of draining;
//! - validate: the cost of UPLOAD_VALIDATE: the daemon at BATCH_SIZE 100 and 5000 with every check on and off,
//!   interleaved ROUNDS times on the same BENCH_ROWS readings (all of which pass: their meters are on both
//!   sides, the window covers their 2024 timestamps), medians of the drain (uploadResult.duration).
//! - fleet, bytes, durable, link: data shaped like a real fleet's, bytes per reading on the wire, durable
//!   commits on disk with a 1,000,000 backlog, a 50 ms / 20 Mbit/s link (drain/field.rs says what each runs;
//!   sizes: BENCH_FLEET_ROWS, BENCH_BYTES_ROWS, BENCH_BACKLOG_ROWS, BENCH_LINK_ROWS, BENCH_LINK_HAND_ROWS).
//!
//! Every drain starts from the same re-seeded rows and is checked for exactly-once afterwards: remote count ==
//! seeded, local queue, claimed batches and quarantine empty, the remote multiset digest equal to the seeded
//! one, and (daemon) remote insertion order following timestamp order.
//!
//! Knobs for digging (none is needed for the figures): BENCH_ONLY=loopback,latency,growth,explain,idle,5m,
//! validate,fleet,bytes,durable,link runs
//! some sections; BENCH_PGSS=1 loads pg_stat_statements and prints each run's statements by server time;
//! BENCH_PERF_DIR=dir records `perf record -a` per run; BENCH_DAEMON_BIN runs another build of the binary (one
//! with symbols); BENCH_DAEMON_ENV="K=V,..." adds variables to every daemon run (separated by `;` instead when
//! the value holds one, for a value with commas: "UPLOAD_VALIDATE=known-meter,finite-value;K=V"); BENCH_LOCAL_DB_SET /
//! BENCH_REMOTE_DB_SET="name=value,..." apply `ALTER DATABASE ... SET` on a side; BENCH_SHARED_BUFFERS=128MB sets both
//! servers' shared_buffers (default pgtemp's 32MB).
//! Does not own: the daemon (src/), the proxy (tests/it/support/proxy.rs, included by path, not copied).

mod common;

#[path = "drain/field.rs"]
mod field;

#[allow(dead_code)]
#[path = "../tests/it/support/proxy.rs"]
mod proxy;

use std::net::SocketAddr;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use common::{mb, thousands, CpuSplit, Finished, Report, Servers, Verdict, DIGEST, SEED};
use postgres::types::ToSql;
use postgres::Client;
use sync_process::upload::wire::{Timestamp, Wire};

/// Readings of the loopback section.
const DEFAULT_ROWS: i64 = 200_000;
/// Batches in flight for the opt-in run through the proxy.
const IN_FLIGHT: u32 = 4;
/// Readings through the latency proxy.
const LATENCY_ROWS: i64 = 20_000;
/// One-way delay of the proxy (20 ms round trip).
const ONE_WAY: Duration = Duration::from_millis(10);
/// Rows per batch of the hand-written loop.
const HAND_BATCH: usize = 100;

fn main() {
    let rows = common::env_or("BENCH_ROWS", DEFAULT_ROWS);
    let rounds = common::env_or("ROUNDS", 3usize).max(1);
    let soak = common::env_or("SOAK_SECONDS", 60u64);
    let started = Instant::now();
    println!("drain bench: starting two throwaway PostgreSQL servers ...");
    let servers = Servers::start();
    let mut local = servers.local_client();
    let mut remote = servers.remote_client();
    let machine = common::machine(&mut local);
    println!("{machine}\nbinary: {}", common::bin());
    let report = Report::default();
    let mut b = Bench {
        servers: &servers,
        local: &mut local,
        remote: &mut remote,
        report: &report,
    };

    let mut daemon_100_per_row = None;
    if common::selected("loopback") {
        daemon_100_per_row = b.loopback(rows, rounds);
    }
    if common::selected("latency") {
        b.latency();
    }
    if common::selected("growth") {
        b.growth(rows, daemon_100_per_row);
    }
    if common::selected("explain") {
        b.explain();
    }
    if common::selected("idle") {
        b.idle(soak);
    }
    if std::env::var("BENCH_5M").as_deref() == Ok("1") && common::selected("5m") {
        b.five_million();
    }
    if common::selected("validate") {
        b.validate(rows, rounds);
    }
    let fleet_rows = common::env_or("BENCH_FLEET_ROWS", 200_000i64);
    let bytes_rows = common::env_or("BENCH_BYTES_ROWS", 50_000i64);
    let backlog_rows = common::env_or("BENCH_BACKLOG_ROWS", 1_000_000i64);
    let link_rows = common::env_or("BENCH_LINK_ROWS", 1_000_000i64);
    let link_hand_rows = common::env_or("BENCH_LINK_HAND_ROWS", 10_000i64);
    if common::selected("fleet") {
        b.fleet(fleet_rows);
    }
    if common::selected("bytes") {
        b.bytes(bytes_rows);
    }
    if common::selected("durable") {
        b.durable(fleet_rows, backlog_rows);
    }
    if common::selected("link") {
        b.link(link_rows, link_hand_rows);
    }
    report.print("Upload drain: results");
    println!("\n{machine}");
    println!(
        "Command: `cargo bench --bench drain` (BENCH_ONLY={}, BENCH_ROWS={rows}, ROUNDS={rounds}, SOAK_SECONDS={soak}{}, \
         BENCH_FLEET_ROWS={fleet_rows}, BENCH_BYTES_ROWS={bytes_rows}, BENCH_BACKLOG_ROWS={backlog_rows}, \
         BENCH_LINK_ROWS={link_rows}, BENCH_LINK_HAND_ROWS={link_hand_rows}); took {:.0} s.",
        std::env::var("BENCH_ONLY").unwrap_or_else(|_| "(all)".into()),
        if std::env::var("BENCH_5M").as_deref() == Ok("1") {
            ", BENCH_5M=1"
        } else {
            ""
        },
        started.elapsed().as_secs_f64()
    );
}

struct Bench<'a> {
    servers: &'a Servers,
    local: &'a mut Client,
    remote: &'a mut Client,
    report: &'a Report,
}

/// The seeded queue: how many readings and their multiset digest (by the data set's digest query).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seeded {
    count: i64,
    digest: String,
    data: &'static Data,
}

/// A data set: how to seed `$1` readings locally and how to digest a readings table (on either side).
#[derive(Debug, PartialEq, Eq)]
struct Data {
    name: &'static str,
    seed: &'static str,
    digest: &'static str,
}

/// Today's uniform data set ([`SEED`], [`DIGEST`]).
static UNIFORM: Data = Data {
    name: "uniform",
    seed: SEED,
    digest: DIGEST,
};

/// One timed drain.
struct Run {
    rows: i64,
    wall: Duration,
    /// The daemon's own figures, when it was the daemon.
    daemon: Option<DaemonRun>,
    /// Exactly-once held (Err says what broke).
    check: Result<(), String>,
    /// CPU of the two servers and of the bench process with its children (psql, the daemon) during the run.
    cpu: CpuSplit,
}

struct DaemonRun {
    finished: Finished,
    /// uploadResult.duration: the drain alone, without process start, connects and the download parts.
    drain: Duration,
}

impl Run {
    fn rate(&self) -> f64 {
        self.rows as f64 / self.wall.as_secs_f64()
    }

    fn checked(&self) -> &'static str {
        if self.check.is_ok() {
            "exactly-once ok"
        } else {
            "EXACTLY-ONCE BROKEN"
        }
    }
}

impl Bench<'_> {
    // ----- Set-up and checks. -----

    /// Empties both sides and queues `n` uniform readings locally; returns their digest (when `digest`).
    fn seed(&mut self, n: i64, digest: bool) -> Seeded {
        self.seed_with(n, digest, &UNIFORM)
    }

    /// [`Self::seed`] with readings of `data`.
    fn seed_with(&mut self, n: i64, digest: bool, data: &'static Data) -> Seeded {
        let t0 = Instant::now();
        self.local
            .batch_execute(
                "TRUNCATE meter_readings RESTART IDENTITY; TRUNCATE sync_upload_batches; TRUNCATE sync_quarantine;",
            )
            .expect("truncating local");
        self.remote
            .batch_execute("TRUNCATE meter_readings RESTART IDENTITY; TRUNCATE sync_upload_ledger;")
            .expect("truncating remote");
        self.local.execute(data.seed, &[&n]).expect("seeding");
        for c in [&mut *self.local, &mut *self.remote] {
            c.batch_execute("VACUUM ANALYZE meter_readings").expect("vacuum");
            c.batch_execute("CHECKPOINT").expect("checkpoint");
        }
        let seeded = if digest {
            digest_of(self.local, data)
        } else {
            Seeded {
                count: n,
                digest: String::new(),
                data,
            }
        };
        println!(
            "  seeded {} {} readings in {:.1} s",
            thousands(n as f64),
            data.name,
            t0.elapsed().as_secs_f64()
        );
        seeded
    }

    /// Exactly-once after a full drain. With UPLOAD_CONFIRM_SECONDS > 0 (BENCH_DAEMON_ENV) the uploaded readings
    /// stay locally, marked, in acknowledged batches: those are awaiting confirmation, not left over.
    fn verify(&mut self, seeded: &Seeded) -> Result<(), String> {
        let local: i64 = self
            .local
            .query_one(
                "SELECT count(*) FROM meter_readings WHERE is_synchronized IS NOT TRUE",
                &[],
            )
            .map(|r| r.get(0))
            .map_err(|e| e.to_string())?;
        let (pending, awaiting, marked): (i64, i64, i64) = self
            .local
            .query_one(
                "SELECT (SELECT count(*) FROM sync_upload_batches WHERE acknowledged_at IS NULL), \
                        (SELECT coalesce(sum(cardinality(reading_ids)), 0)::int8 FROM sync_upload_batches \
                         WHERE acknowledged_at IS NOT NULL), \
                        (SELECT count(*) FROM meter_readings WHERE is_synchronized)",
                &[],
            )
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .map_err(|e| e.to_string())?;
        let mut problems = Vec::new();
        if awaiting != marked {
            problems.push(format!(
                "{marked} readings marked locally, {awaiting} named by batches awaiting confirmation"
            ));
        }
        let quarantined: i64 = self
            .local
            .query_one("SELECT count(*) FROM sync_quarantine", &[])
            .map(|r| r.get(0))
            .map_err(|e| e.to_string())?;
        let got = digest_of(self.remote, seeded.data);
        if local != 0 {
            problems.push(format!("{local} readings left locally"));
        }
        if pending != 0 {
            problems.push(format!("{pending} claimed batches left"));
        }
        if quarantined != 0 {
            problems.push(format!("{quarantined} readings quarantined"));
        }
        if got.count != seeded.count {
            problems.push(format!(
                "remote holds {} readings, {} were seeded",
                got.count, seeded.count
            ));
        }
        if got.digest != seeded.digest {
            problems.push(format!("remote digest {} != seeded {}", got.digest, seeded.digest));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Whether remote insertion order (id) follows timestamp order.
    fn remote_in_order(&mut self) -> bool {
        self.remote
            .query_one(
                "SELECT count(*) FROM (SELECT timestamp < lag(timestamp) OVER (ORDER BY id) AS back FROM meter_readings) s \
                 WHERE back",
                &[],
            )
            .map(|r| r.get::<_, i64>(0) == 0)
            .unwrap_or(false)
    }

    // ----- The three ways to drain. -----

    /// The limit: binary COPY out of local piped into COPY in on remote, then the local DELETE (psql x3).
    fn copy_pipe(&mut self, seeded: &Seeded) -> Run {
        self.copy_pipe_to(seeded, self.servers.remote.port())
    }

    /// [`Self::copy_pipe`] with the remote reached at `remote_port` (the server or a proxy).
    fn copy_pipe_to(&mut self, seeded: &Seeded, remote_port: u16) -> Run {
        let label = format!("copy-{}-{remote_port}", seeded.count);
        self.servers.pgss_reset();
        let profile = common::Profile::start(&label);
        let cpu0 = CpuSplit::now(self.servers);
        let t0 = Instant::now();
        let mut out = Servers::psql(self.servers.local.port())
            .args([
                "-c",
                "COPY (SELECT meter_id, timestamp, value, unit, metadata FROM meter_readings ORDER BY timestamp, id) \
                 TO STDOUT (FORMAT binary)",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("psql COPY TO");
        let pipe = out.stdout.take().expect("psql stdout");
        let into = Servers::psql(remote_port)
            .args([
                "-c",
                "COPY meter_readings (meter_id, timestamp, value, unit, metadata) FROM STDIN (FORMAT binary)",
            ])
            .stdin(Stdio::from(pipe))
            .status()
            .expect("psql COPY FROM");
        let from = out.wait().expect("psql COPY TO");
        assert!(from.success() && into.success(), "COPY pipe failed: {from} / {into}");
        let del = Servers::psql(self.servers.local.port())
            .args(["-c", "DELETE FROM meter_readings"])
            .status()
            .expect("psql DELETE");
        assert!(del.success(), "psql DELETE failed: {del}");
        let wall = t0.elapsed();
        let cpu = CpuSplit::after(self.servers, cpu0);
        profile.stop();
        self.servers.pgss_print(&label);
        let check = self.verify(seeded);
        Run {
            rows: seeded.count,
            wall,
            daemon: None,
            check,
            cpu,
        }
    }

    /// The hand-written loop, remote reached at `remote_port` (the server or the proxy); see [`hand_loop`].
    fn hand(&mut self, seeded: &Seeded, remote_port: u16) -> Run {
        self.hand_with(seeded, remote_port, HAND_SELECT)
    }

    fn hand_with(&mut self, seeded: &Seeded, remote_port: u16, select: &str) -> Run {
        let label = format!("hand-{}-{remote_port}", seeded.count);
        self.servers.pgss_reset();
        let profile = common::Profile::start(&label);
        let cpu0 = CpuSplit::now(self.servers);
        let t0 = Instant::now();
        let moved = hand_loop(self.servers.local.port(), remote_port, select).expect("hand-written loop");
        let wall = t0.elapsed();
        let cpu = CpuSplit::after(self.servers, cpu0);
        profile.stop();
        self.servers.pgss_print(&label);
        assert_eq!(moved, seeded.count as u64, "hand-written loop moved {moved}");
        let check = self.verify(seeded);
        Run {
            rows: seeded.count,
            wall,
            daemon: None,
            check,
            cpu,
        }
    }

    /// The daemon: `sync-process once` at `batch_size`, the remote at `remote_port`.
    fn daemon(&mut self, seeded: &Seeded, batch_size: u32, remote_port: u16) -> Run {
        self.daemon_with(seeded, batch_size, remote_port, 1)
    }

    /// [`Self::daemon`] with UPLOAD_BATCHES_IN_FLIGHT = `in_flight`.
    fn daemon_with(&mut self, seeded: &Seeded, batch_size: u32, remote_port: u16, in_flight: u32) -> Run {
        let in_flight = in_flight.to_string();
        self.daemon_vars(
            seeded,
            batch_size,
            remote_port,
            &[("UPLOAD_BATCHES_IN_FLIGHT", &in_flight)],
        )
    }

    /// [`Self::daemon`] with more variables.
    fn daemon_vars(&mut self, seeded: &Seeded, batch_size: u32, remote_port: u16, vars: &[(&str, &str)]) -> Run {
        let mut env = self.servers.env(remote_port, batch_size);
        env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let label = format!("daemon{batch_size}-{}-{remote_port}", seeded.count);
        self.servers.pgss_reset();
        let profile = common::Profile::start(&label);
        let sessions0 = (sessions(self.local), sessions(self.remote));
        let cpu0 = CpuSplit::now(self.servers);
        let finished = common::spawn(&["once"], &env).wait();
        let mut cpu = CpuSplit::after(self.servers, cpu0);
        profile.stop();
        self.servers.pgss_print(&label);
        cpu.client = finished.user + finished.sys; // the daemon alone (not the bench's /proc poller)
        let wall = finished.wall;
        let result: serde_json::Value = serde_json::from_str(finished.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "`once` printed no JSON ({e}); exit {:?}; stdout {:?}; stderr:\n{}",
                finished.code, finished.stdout, finished.stderr_tail
            )
        });
        thread::sleep(Duration::from_millis(600)); // ended sessions reach pg_stat_database within 500 ms
        println!(
            "    sessions opened by the daemon: local {}, remote {}",
            sessions(self.local) - sessions0.0,
            sessions(self.remote) - sessions0.1
        );
        let up = &result["uploadResult"];
        let drain = Duration::from_millis(up["duration"].as_u64().unwrap_or(0));
        let mut check = self.verify(seeded);
        if finished.code != Some(0) || up["recordsUploaded"].as_i64() != Some(seeded.count) {
            check = Err(format!(
                "exit {:?}, uploadResult {up}; {}",
                finished.code,
                check.err().unwrap_or_default()
            ));
        }
        if check.is_ok() && !self.remote_in_order() {
            check = Err("remote insertion order does not follow timestamp order".into());
        }
        Run {
            rows: seeded.count,
            wall,
            daemon: Some(DaemonRun { finished, drain }),
            check,
            cpu,
        }
    }

    // ----- Sections. -----

    /// Returns the daemon's per-row drain time at BATCH_SIZE 100 (median), for the growth section.
    fn loopback(&mut self, rows: i64, rounds: usize) -> Option<Duration> {
        println!("\n== loopback: {} readings, {rounds} round(s)", thousands(rows as f64));
        let mut copy = Vec::new();
        let mut hand = Vec::new();
        let mut d5000 = Vec::new();
        let mut d100 = Vec::new();
        let remote_port = self.servers.remote.port();
        for round in 1..=rounds {
            let seeded = self.seed(rows, true);
            let r = self.copy_pipe(&seeded);
            println!(
                "  round {round}: COPY pipe        {:>9} rows/s ({:.2} s) {}",
                thousands(r.rate()),
                r.wall.as_secs_f64(),
                r.checked()
            );
            copy.push(r);

            self.seed(rows, false);
            let r = self.hand(&seeded, remote_port);
            println!(
                "  round {round}: hand loop (100)  {:>9} rows/s ({:.2} s) {}",
                thousands(r.rate()),
                r.wall.as_secs_f64(),
                r.checked()
            );
            hand.push(r);

            for (size, runs) in [(5000u32, &mut d5000), (100, &mut d100)] {
                self.seed(rows, false);
                let r = self.daemon(&seeded, size, remote_port);
                print_daemon(&format!("round {round}: daemon @{size}"), &r);
                runs.push(r);
            }
        }
        // The hand-written loop without the is_synchronized predicate (no index serves it): once, for contrast.
        let bare = if common::env_or("BENCH_BARE_LOOP", 1u32) == 1 {
            let seeded = self.seed(rows, true);
            let r = self.hand_with(&seeded, remote_port, HAND_SELECT_BARE);
            println!(
                "  hand loop, no predicate {:>9} rows/s ({:.2} s) {}",
                thousands(r.rate()),
                r.wall.as_secs_f64(),
                r.checked()
            );
            Some(r)
        } else {
            None
        };
        let copy_rate = median(copy.iter().map(Run::rate));
        let hand_rate = median(hand.iter().map(Run::rate));
        let d5000_rate = median(d5000.iter().map(Run::rate));
        let d100_rate = median(d100.iter().map(Run::rate));
        let n = thousands(rows as f64);
        let all_ok = |runs: &[Run]| runs.iter().all(|r| r.check.is_ok());
        let rep = self.report;
        rep.row(
            &format!("{n} readings, loopback: binary COPY pipe + DELETE (the limit)"),
            "reference",
            format!("{} rows/s ({})", thousands(copy_rate), checked_all(&copy)),
            "-".into(),
            if all_ok(&copy) { Verdict::Info } else { Verdict::Miss },
        );
        rep.row(
            &format!("{n} readings, loopback: hand-written 100-row loop"),
            "reference",
            format!("{} rows/s ({})", thousands(hand_rate), checked_all(&hand)),
            "-".into(),
            if all_ok(&hand) { Verdict::Info } else { Verdict::Miss },
        );
        if let Some(r) = &bare {
            rep.row(
                &format!("{n} readings, loopback: the same loop without `WHERE is_synchronized = false` (no index: a sort of the queue per batch)"),
                "(contrast)",
                format!("{} rows/s ({})", thousands(r.rate()), r.checked()),
                format!("daemon @100 = {:.1} × this", d100_rate / r.rate()),
                if r.check.is_ok() { Verdict::Info } else { Verdict::Miss },
            );
        }
        let ratio = d5000_rate / copy_rate;
        rep.row(
            &format!("{n} readings, loopback, daemon BATCH_SIZE 5000"),
            "≥ 0.6 × COPY pipe",
            format!("{} rows/s ({})", thousands(d5000_rate), checked_all(&d5000)),
            format!("{ratio:.2} × COPY"),
            Verdict::of(ratio >= 0.6 && all_ok(&d5000)),
        );
        let ratio = d100_rate / hand_rate;
        rep.row(
            &format!("{n} readings, loopback, daemon BATCH_SIZE 100"),
            "≥ 2 × hand loop",
            format!("{} rows/s ({})", thousands(d100_rate), checked_all(&d100)),
            format!("{ratio:.2} × hand loop"),
            Verdict::of(ratio >= 2.0 && all_ok(&d100)),
        );
        for (size, runs, limit_mb) in [(100u32, &d100, 8u64), (5000, &d5000, 16)] {
            let hwm = runs.iter().map(|r| fin(r).peaks.vm_hwm_kb).max().unwrap_or(0);
            let anon = runs.iter().map(|r| fin(r).peaks.rss_anon_kb).max().unwrap_or(0);
            let file = runs.iter().map(|r| fin(r).peaks.rss_file_kb).max().unwrap_or(0);
            rep.row(
                &format!("peak RSS of the daemon during the {n} drain, BATCH_SIZE {size}"),
                &format!("≤ {limit_mb} MB"),
                format!(
                    "{} (VmHWM, highest of {} runs); RssAnon at most {}, RssFile at most {}",
                    mb(hwm),
                    runs.len(),
                    mb(anon),
                    mb(file)
                ),
                format!("{:.2} × target", hwm as f64 / 1024.0 / limit_mb as f64),
                Verdict::of(hwm <= limit_mb * 1024),
            );
            if let Some(r) = runs.first() {
                let groups: Vec<String> = fin(r)
                    .peaks
                    .smaps
                    .iter()
                    .take(8)
                    .map(|(g, kb)| format!("{g} {kb} kB"))
                    .collect();
                rep.note(format!(
                    "RSS by mapping at its highest sample, daemon @{size}: {}; threads at most {}",
                    groups.join(", "),
                    fin(r).peaks.threads
                ));
            }
        }
        for (label, runs) in [("@5000", &d5000), ("@100", &d100)] {
            let r = median_run(runs);
            let f = fin(r);
            rep.note(format!(
                "daemon {label}: wall {:.2} s, of which the drain (uploadResult.duration) {:.2} s; daemon CPU user {:.2} s + \
                 sys {:.2} s ({:.1} µs per reading)",
                r.wall.as_secs_f64(),
                r.daemon.as_ref().map_or(0.0, |d| d.drain.as_secs_f64()),
                f.user.as_secs_f64(),
                f.sys.as_secs_f64(),
                (f.user + f.sys).as_secs_f64() * 1e6 / r.rows as f64
            ));
        }
        for (label, runs, client) in [
            ("COPY pipe", &copy, "psql x3"),
            ("hand-written loop", &hand, "the loop (bench process)"),
            ("daemon @5000", &d5000, "daemon"),
            ("daemon @100", &d100, "daemon"),
        ] {
            let r = median_run(runs);
            rep.note(format!(
                "where the time goes, {label}: {}",
                r.cpu.describe(r.wall, client)
            ));
        }
        if rounds > 1 {
            let list = |runs: &[Run]| runs.iter().map(|r| thousands(r.rate())).collect::<Vec<_>>().join(", ");
            rep.note(format!(
                "rows/s per round: COPY {}; hand {}; daemon@5000 {}; daemon@100 {}",
                list(&copy),
                list(&hand),
                list(&d5000),
                list(&d100)
            ));
        }
        for r in copy.iter().chain(&hand).chain(&d5000).chain(&d100) {
            if let Err(e) = &r.check {
                rep.note(format!("exactly-once broken: {e}"));
            }
        }
        let per_row: Vec<f64> = d100
            .iter()
            .filter_map(|r| r.daemon.as_ref().map(|d| d.drain.as_secs_f64() / r.rows as f64))
            .collect();
        (!per_row.is_empty()).then(|| Duration::from_secs_f64(median(per_row.into_iter())))
    }

    /// UPLOAD_VALIDATE's cost: every check on against off, at BATCH_SIZE 100 and 5000, interleaved `rounds`
    /// times on the same readings, all of which pass (the seed's meters on both sides, so the download changes
    /// nothing; a window that covers the seed's 2024 timestamps). Compared on the drain alone
    /// (uploadResult.duration).
    fn validate(&mut self, rows: i64, rounds: usize) {
        const CHECKS: &str = "known-meter,meter-unit,finite-value,timestamp-window";
        const METERS: &str = "INSERT INTO meters (meter_id, name, meter_type, unit)
            SELECT 'meter-' || lpad(g::text, 2, '0'), 'bench meter', 'electricity', CASE WHEN g < 15 THEN 'kWh' ELSE 'm3' END
            FROM generate_series(0, 19) AS g";
        println!(
            "\n== validate: {} readings, every check on vs off, {rounds} round(s)",
            thousands(rows as f64)
        );
        for c in [&mut *self.local, &mut *self.remote] {
            c.batch_execute(&format!("TRUNCATE meters; {METERS}; ANALYZE meters"))
                .expect("seeding the meters");
        }
        let remote_port = self.servers.remote.port();
        let on: &[(&str, &str)] = &[("UPLOAD_VALIDATE", CHECKS), ("UPLOAD_TIMESTAMP_WINDOW", "-36500d..+1h")];
        let mut runs: Vec<(u32, bool, Run)> = Vec::new();
        let seeded = self.seed(rows, true);
        for round in 1..=rounds {
            for size in [100u32, 5000] {
                for checks in [false, true] {
                    self.seed(rows, false);
                    let r = self.daemon_vars(&seeded, size, remote_port, if checks { on } else { &[] });
                    print_daemon(
                        &format!("round {round}: @{size} checks {}", if checks { "on" } else { "off" }),
                        &r,
                    );
                    runs.push((size, checks, r));
                }
            }
        }
        for c in [&mut *self.local, &mut *self.remote] {
            c.batch_execute("TRUNCATE meters").expect("emptying the meters");
        }
        let n = thousands(rows as f64);
        let drain_rate = |r: &Run| {
            let secs = r.daemon.as_ref().map_or(0.0, |d| d.drain.as_secs_f64());
            if secs > 0.0 {
                r.rows as f64 / secs
            } else {
                0.0
            }
        };
        for size in [100u32, 5000] {
            let of = |checks: bool| -> Vec<&Run> {
                runs.iter()
                    .filter(|(s, c, _)| *s == size && *c == checks)
                    .map(|(_, _, r)| r)
                    .collect()
            };
            let (off, on) = (of(false), of(true));
            let (off_rate, on_rate) = (
                median(off.iter().map(|r| drain_rate(r))),
                median(on.iter().map(|r| drain_rate(r))),
            );
            let ok = off.iter().chain(&on).all(|r| r.check.is_ok());
            self.report.row(
                &format!(
                    "{n} readings, loopback, daemon BATCH_SIZE {size}: every UPLOAD_VALIDATE check on vs off (drain)"
                ),
                "(cost)",
                format!(
                    "on {} rows/s, off {} rows/s ({})",
                    thousands(on_rate),
                    thousands(off_rate),
                    if ok {
                        "exactly-once ok, nothing quarantined"
                    } else {
                        "EXACTLY-ONCE BROKEN"
                    }
                ),
                format!(
                    "on = {:.2} × off",
                    if off_rate > 0.0 { on_rate / off_rate } else { 0.0 }
                ),
                if ok { Verdict::Info } else { Verdict::Miss },
            );
            if rounds > 1 {
                let list = |v: &[&Run]| {
                    v.iter()
                        .map(|r| thousands(drain_rate(r)))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                self.report.note(format!(
                    "validate @{size}, drain rows/s per round: off {}; on {}",
                    list(&off),
                    list(&on)
                ));
            }
        }
        for (_, _, r) in &runs {
            if let Err(e) = &r.check {
                self.report.note(format!("exactly-once broken: {e}"));
            }
        }
    }

    fn latency(&mut self) {
        println!(
            "\n== latency: {} readings through the proxy at {} ms each way",
            thousands(LATENCY_ROWS as f64),
            ONE_WAY.as_millis()
        );
        let target = SocketAddr::from(([127, 0, 0, 1], self.servers.remote.port()));
        let proxy = proxy::FaultProxy::start(target);
        proxy.set_latency(ONE_WAY);
        // One round trip through the proxy, as a client sees it.
        let rtt = common::round_trip(proxy.port(), 21);
        println!("  round trip through the proxy: {:.1} ms", rtt.as_secs_f64() * 1e3);
        let seeded = self.seed(LATENCY_ROWS, true);
        let hand = self.hand(&seeded, proxy.port());
        println!(
            "  hand loop (100)  {:>9} rows/s ({:.2} s) {}",
            thousands(hand.rate()),
            hand.wall.as_secs_f64(),
            hand.checked()
        );
        self.seed(LATENCY_ROWS, false);
        let daemon = self.daemon(&seeded, 100, proxy.port());
        print_daemon("daemon @100", &daemon);
        self.seed(LATENCY_ROWS, false);
        let wide = self.daemon_with(&seeded, 100, proxy.port(), IN_FLIGHT);
        print_daemon(&format!("daemon @100, {IN_FLIGHT} batches in flight"), &wide);
        let n = thousands(LATENCY_ROWS as f64);
        let rep = self.report;
        rep.row(
            &format!("{n} readings, proxy at 20 ms round trip: hand-written 100-row loop"),
            "reference",
            format!("{} rows/s ({})", thousands(hand.rate()), hand.checked()),
            format!(
                "{:.1} ms per batch = {:.2} round trips of {:.1} ms",
                hand.wall.as_secs_f64() * 1000.0 * HAND_BATCH as f64 / hand.rows as f64,
                hand.wall.as_secs_f64() * HAND_BATCH as f64 / hand.rows as f64 / rtt.as_secs_f64(),
                rtt.as_secs_f64() * 1e3
            ),
            if hand.check.is_ok() {
                Verdict::Info
            } else {
                Verdict::Miss
            },
        );
        let ratio = daemon.rate() / hand.rate();
        let drain = daemon.daemon.as_ref().map_or(Duration::ZERO, |d| d.drain);
        rep.row(
            &format!("{n} readings, proxy at 20 ms round trip, daemon BATCH_SIZE 100"),
            "≥ 3 × hand loop",
            format!("{} rows/s ({})", thousands(daemon.rate()), daemon.checked()),
            format!(
                "{ratio:.2} × hand loop; {:.1} ms per batch in the drain = {:.2} round trips",
                drain.as_secs_f64() * 1000.0 * 100.0 / daemon.rows as f64,
                drain.as_secs_f64() * 100.0 / daemon.rows as f64 / rtt.as_secs_f64()
            ),
            Verdict::of(ratio >= 3.0 && daemon.check.is_ok()),
        );
        let ratio = wide.rate() / hand.rate();
        let wide_drain = wide.daemon.as_ref().map_or(Duration::ZERO, |d| d.drain);
        rep.row(
            &format!(
                "{n} readings, proxy at 20 ms round trip, daemon BATCH_SIZE 100, UPLOAD_BATCHES_IN_FLIGHT={IN_FLIGHT} (opt-in)"
            ),
            "≥ 3 × hand loop",
            format!("{} rows/s ({})", thousands(wide.rate()), wide.checked()),
            format!(
                "{ratio:.2} × hand loop; {:.1} ms per batch in the drain = {:.2} round trips",
                wide_drain.as_secs_f64() * 1000.0 * 100.0 / wide.rows as f64,
                wide_drain.as_secs_f64() * 100.0 / wide.rows as f64 / rtt.as_secs_f64()
            ),
            Verdict::of(ratio >= 3.0 && wide.check.is_ok()),
        );
        rep.note(format!(
            "latency: daemon wall {:.2} s, of which the drain {:.2} s (the rest: process start, connects through the \
             proxy, the empty download parts)",
            daemon.wall.as_secs_f64(),
            drain.as_secs_f64()
        ));
        rep.note(format!(
            "latency, hand-written loop: {}",
            hand.cpu.describe(hand.wall, "the loop")
        ));
        rep.note(format!(
            "latency, daemon @100: {}",
            daemon.cpu.describe(daemon.wall, "daemon")
        ));
        for r in [&hand, &daemon, &wide] {
            if let Err(e) = &r.check {
                rep.note(format!("exactly-once broken: {e}"));
            }
        }
    }

    fn growth(&mut self, rows: i64, from_loopback: Option<Duration>) {
        println!(
            "\n== growth: daemon @100 on 20k, {} (loopback) and 1M readings",
            thousands(rows as f64)
        );
        let remote_port = self.servers.remote.port();
        let mut points: Vec<(i64, Duration, Duration, bool)> = Vec::new(); // rows, per-row drain, wall, ok
        for n in [20_000i64, rows, 1_000_000] {
            if n == rows {
                if let Some(per_row) = from_loopback {
                    points.push((n, per_row, Duration::ZERO, true));
                    continue;
                }
            }
            let seeded = self.seed(n, true);
            let r = self.daemon(&seeded, 100, remote_port);
            print_daemon(&format!("daemon @100, {} readings", thousands(n as f64)), &r);
            let drain = r.daemon.as_ref().map_or(r.wall, |d| d.drain);
            if let Err(e) = &r.check {
                self.report.note(format!("exactly-once broken at {n}: {e}"));
            }
            points.push((n, drain / n as u32, r.wall, r.check.is_ok()));
        }
        let base = points.iter().map(|p| p.1).min().unwrap_or_default();
        for (n, per_row, wall, ok) in &points {
            let ratio = per_row.as_secs_f64() / base.as_secs_f64();
            let measured = if wall.is_zero() {
                format!("{:.1} µs per reading (the loopback run)", per_row.as_secs_f64() * 1e6)
            } else {
                format!(
                    "{:.1} µs per reading; drain {:.1} s, wall {:.1} s",
                    per_row.as_secs_f64() * 1e6,
                    per_row.as_secs_f64() * *n as f64,
                    wall.as_secs_f64()
                )
            };
            self.report.row(
                &format!(
                    "drain time per reading, {} readings, BATCH_SIZE 100",
                    thousands(*n as f64)
                ),
                "flat (≤ 1.5 × the lowest)",
                measured,
                format!("{ratio:.2} × lowest"),
                Verdict::of(ratio <= 1.5 && *ok),
            );
        }
        // The hand-written loop rescans the queue from its start: its per-row cost at 20k, for contrast.
        let seeded = self.seed(20_000, true);
        let hand = self.hand(&seeded, remote_port);
        self.report.note(format!(
            "hand-written loop at 20,000 readings (loopback): {:.1} µs per reading ({} rows/s); {}",
            hand.wall.as_secs_f64() * 1e6 / hand.rows as f64,
            thousands(hand.rate()),
            hand.checked()
        ));
    }

    /// EXPLAIN (ANALYZE, BUFFERS) of the per-batch statement (finish + keyset claim), of the keyset claim, and of
    /// the rescan-from-start queries, on a queue that just lost its first 100,000 readings (no vacuum since).
    fn explain(&mut self) {
        println!("\n== explain: the claim after 100,000 deletions");
        for n in [200_000i64, 1_000_000] {
            self.seed(n, false);
            let mut c = self.servers.local_client();
            // The drain's cursor after 1,000 batches: the key of the 100,000th reading, which is deleted with the
            // ones before it (no vacuum in between: autovacuum is off for this table until the end).
            let key = c
                .query_one(
                    "SELECT timestamp::text, id FROM meter_readings ORDER BY timestamp, id OFFSET 99999 LIMIT 1",
                    &[],
                )
                .expect("the 100,000th key");
            let (ts, id): (String, i32) = (key.get(0), key.get(1));
            let prev = format!("'{ts}'");
            c.batch_execute(
                "ALTER TABLE meter_readings SET (autovacuum_enabled = off);
                 DELETE FROM meter_readings WHERE id IN (SELECT id FROM meter_readings ORDER BY timestamp, id LIMIT 100000)",
            )
            .expect("deleting 100k");
            let sql = sync_process::upload::sql::CLAIM_NEXT;
            c.batch_execute(&format!("PREPARE claim_next(bigint, timestamp, int) AS {sql}"))
                .expect("prepare claim_next");
            c.batch_execute(&format!(
                "PREPARE finish_and_claim(bigint, timestamp, int, uuid) AS {}",
                sync_process::upload::sql::FINISH_AND_CLAIM
            ))
            .expect("prepare finish_and_claim");
            c.batch_execute(&format!(
                "PREPARE claim_first(bigint) AS {}",
                sync_process::upload::sql::CLAIM_FIRST
            ))
            .expect("prepare claim_first");
            let mut plans = Vec::new();
            // 1. the keyset claim.
            plans.push((
                "keyset claim (CLAIM_NEXT)",
                explain(&mut c, &format!("EXECUTE claim_next(100, {prev}, {id})")),
            ));
            // 2. the per-batch statement: finish a batch of 100 and claim the next 100.
            c.batch_execute("BEGIN").expect("begin");
            let rows = c
                .query(&format!("EXECUTE claim_next(100, {prev}, {id})"), &[])
                .expect("claiming a batch");
            let batch: String = rows[0].get("batch_text");
            let last_ts = rows[rows.len() - 1].get::<_, Wire<Timestamp>>("ts_wire").to_text();
            let last_id: i64 = rows[rows.len() - 1].get("id_num");
            plans.push((
                "per-batch statement (FINISH_AND_CLAIM)",
                explain_in_tx(
                    &mut c,
                    &format!("EXECUTE finish_and_claim(100, '{last_ts}', {last_id}, '{batch}')"),
                ),
            ));
            c.batch_execute("ROLLBACK").expect("rollback");
            // 3. the rescans from the start, twice (the first scan marks the dead index entries).
            for label in [
                "rescan from the start (CLAIM_FIRST), first",
                "rescan from the start (CLAIM_FIRST), again",
            ] {
                plans.push((label, explain(&mut c, "EXECUTE claim_first(100)")));
            }
            plans.push((
                "hand-written loop's SELECT (WHERE is_synchronized = false)",
                explain(&mut c, HAND_SELECT),
            ));
            plans.push((
                "the same without the is_synchronized predicate",
                explain(&mut c, HAND_SELECT_BARE),
            ));
            c.batch_execute("ALTER TABLE meter_readings RESET (autovacuum_enabled); DEALLOCATE ALL")
                .expect("reset");
            for (label, plan) in &plans {
                let buffers = plan
                    .iter()
                    .find(|l| l.trim_start().starts_with("Buffers:"))
                    .map(|l| l.trim().to_string())
                    .unwrap_or_default();
                // The claim inside the statement: the first Buffers line under "CTE c".
                let claim_buffers = plan
                    .iter()
                    .skip_while(|l| l.trim() != "CTE c")
                    .find(|l| l.trim_start().starts_with("Buffers:"))
                    .map(|l| l.trim().to_string())
                    .unwrap_or_default();
                let time = plan
                    .iter()
                    .find(|l| l.starts_with("Execution Time"))
                    .map(|l| l.trim().to_string())
                    .unwrap_or_default();
                let index = plan
                    .iter()
                    .any(|l| l.contains("Index Scan") || l.contains("Index Only Scan"));
                let first_node = plan.first().cloned().unwrap_or_default();
                println!("  --- {} readings, {label}: {buffers}; {time}", thousands(n as f64));
                for l in plan {
                    println!("      {l}");
                }
                let keyset = label.starts_with("keyset") || label.starts_with("per-batch");
                let measured = if claim_buffers.is_empty() || claim_buffers == buffers {
                    format!("{buffers}; {time}")
                } else {
                    format!("whole statement {buffers}, of which the claim (CTE c) {claim_buffers}; {time}")
                };
                let claim = if claim_buffers.is_empty() {
                    &buffers
                } else {
                    &claim_buffers
                };
                self.report.row(
                    &format!(
                        "EXPLAIN (ANALYZE, BUFFERS), {} queued, first 100,000 deleted: {label}",
                        thousands(n as f64)
                    ),
                    if keyset {
                        "few buffers, index scan"
                    } else {
                        "(contrast)"
                    },
                    measured,
                    if index {
                        "index scan".into()
                    } else {
                        format!("no index scan: {}", first_node.trim())
                    },
                    if keyset {
                        Verdict::of(index && buffer_count(claim) < 50)
                    } else {
                        Verdict::Info
                    },
                );
            }
        }
    }

    fn idle(&mut self, soak: u64) {
        println!("\n== idle: `run`, empty queue, SYNC_INTERVAL_SECONDS=2, {soak} s");
        self.local
            .batch_execute("TRUNCATE meter_readings RESTART IDENTITY; TRUNCATE sync_upload_batches")
            .expect("empty queue");
        let mut env = self.servers.env(self.servers.remote.port(), 100);
        env.insert("SYNC_INTERVAL_SECONDS".into(), "2".into());
        let port = sync_process::pgtemp::free_port().expect("free port");
        env.insert("STATUS_BIND".into(), format!("127.0.0.1:{port}"));
        let child = common::spawn(&["run"], &env);
        let pid = child.pid;
        thread::sleep(Duration::from_secs(6)); // start-up and the first cycles
        let logs_before: i64 = self
            .local
            .query_one("SELECT count(*) FROM sync_logs", &[])
            .map(|r| r.get(0))
            .unwrap_or(0);
        let cpu0 = common::cpu_time(pid).expect("cpu time");
        let t0 = Instant::now();
        let mut samples = Vec::new(); // (seconds, VmRSS, RssAnon)
        let step = Duration::from_secs(if soak > 300 { 10 } else { 1 });
        while t0.elapsed() < Duration::from_secs(soak) {
            if let Some((rss, anon)) = common::rss_now(pid) {
                samples.push((t0.elapsed().as_secs(), rss, anon));
            }
            thread::sleep(step);
        }
        let window = t0.elapsed();
        let cpu = common::cpu_time(pid).expect("cpu time") - cpu0;
        let logs_after: i64 = self
            .local
            .query_one("SELECT count(*) FROM sync_logs", &[])
            .map(|r| r.get(0))
            .unwrap_or(0);
        if let Some((rss, anon)) = common::rss_now(pid) {
            samples.push((window.as_secs(), rss, anon));
        }
        let smaps = common::smaps_groups(pid).unwrap_or_default();
        let threads = common::threads_now(pid).unwrap_or(0);
        let t_term = Instant::now();
        common::signal(pid, common::SIGTERM);
        let finished = child.wait();
        let stop_time = t_term.elapsed();
        let pct = cpu.as_secs_f64() / window.as_secs_f64() * 100.0;
        let cycles = (window.as_secs_f64() / 2.0).round();
        let first = samples.first().copied().unwrap_or_default();
        let last = samples.last().copied().unwrap_or_default();
        let max_rss = samples.iter().map(|s| s.1).max().unwrap_or(0);
        let rep = self.report;
        rep.row(
            &format!(
                "idle daemon (`run`, empty queue, a cycle every 2 s): CPU over {} s",
                window.as_secs()
            ),
            "~0 % (no polling loop)",
            format!(
                "{:.0} ms CPU = {pct:.2} % of one core; {:.1} ms per cycle (~{cycles} cycles, {} sync_logs rows)",
                cpu.as_secs_f64() * 1000.0,
                cpu.as_secs_f64() * 1000.0 / cycles.max(1.0),
                logs_after - logs_before
            ),
            "-".into(),
            Verdict::of(pct < 1.0),
        );
        // Growth after warm-up: from the sample a quarter into the window to the last one.
        let quarter = samples.get(samples.len() / 4).copied().unwrap_or(first);
        let growth = last.2 as i64 - quarter.2 as i64;
        let series: Vec<String> = (0..=10)
            .filter_map(|i| samples.get((samples.len().saturating_sub(1)) * i / 10))
            .map(|(t, rss, anon)| format!("{t}s {rss}/{anon}"))
            .collect();
        println!("  VmRSS/RssAnon kB over time: {}", series.join(", "));
        rep.row(
            &format!("idle daemon: RSS over {} s (issue: 30-minute soak)", window.as_secs()),
            "flat (no growth)",
            format!(
                "VmRSS {} kB -> {} kB (max {max_rss} kB); RssAnon {} kB -> {} kB at {} s -> {} kB at the end \
                 ({growth:+} kB after the first quarter)",
                first.1, last.1, first.2, quarter.2, quarter.0, last.2
            ),
            format!("{} samples", samples.len()),
            Verdict::of(growth <= 64),
        );
        let groups: Vec<String> = smaps.iter().take(8).map(|(g, kb)| format!("{g} {kb} kB")).collect();
        rep.note(format!(
            "idle RSS by mapping at the end: {}; {threads} threads",
            groups.join(", ")
        ));
        rep.note(format!(
            "idle VmRSS/RssAnon (kB) over the window: {}",
            series.join(", ")
        ));
        rep.note(format!(
            "idle daemon: SIGTERM -> exit {:?} in {:.2} s",
            finished.code,
            stop_time.as_secs_f64()
        ));
    }

    /// 5,000,000 queued readings: the daemon's memory while draining for ~30 s (then SIGTERM); the queue must
    /// not be read into memory. Checks exactly-once of the part drained (remote + local = seeded, by a
    /// multiset hash; the md5 string would not fit).
    fn five_million(&mut self) {
        const N: i64 = 5_000_000;
        println!("\n== 5M: {} readings, daemon @100 for ~30 s", thousands(N as f64));
        self.seed(N, false);
        let hash = "SELECT count(*), coalesce(sum(hashtextextended(meter_id || '|' || timestamp::text || '|' || \
                    value::text || '|' || unit || '|' || coalesce(metadata::text, '<null>'), 0)::numeric), 0)::text \
                    FROM meter_readings";
        let before = self.local.query_one(hash, &[]).expect("hash");
        let (n0, h0): (i64, String) = (before.get(0), before.get(1));
        let child = common::spawn(&["once"], &self.servers.env(self.servers.remote.port(), 100));
        thread::sleep(Duration::from_secs(30));
        common::signal(child.pid, common::SIGTERM);
        let f = child.wait();
        let l = self.local.query_one(hash, &[]).expect("hash");
        let r = self.remote.query_one(hash, &[]).expect("hash");
        let (nl, hl, nr, hr): (i64, String, i64, String) = (l.get(0), l.get(1), r.get(0), r.get(1));
        // numeric sums as text: added in SQL to keep every digit.
        let total: String = self
            .local
            .query_one("SELECT ($1::text::numeric + $2::text::numeric)::text", &[&hl, &hr])
            .map(|r| r.get(0))
            .unwrap_or_default();
        let pending: i64 = self
            .local
            .query_one("SELECT count(*) FROM sync_upload_batches", &[])
            .map(|r| r.get(0))
            .unwrap_or(-1);
        let ok = nl + nr == n0 && total == h0 && pending == 0 && f.code == Some(0);
        println!(
            "  drained {} in ~30 s, exit {:?}, local {nl} + remote {nr} = {} (seeded {n0}), pending batches {pending}",
            thousands(nr as f64),
            f.code,
            nl + nr
        );
        self.report.row(
            "peak RSS draining a 5,000,000-reading queue, BATCH_SIZE 100, ~30 s then SIGTERM",
            "≤ 8 MB, not growing with the queue",
            format!(
                "{} (VmHWM), RssAnon at most {}; {} readings drained ({})",
                mb(f.peaks.vm_hwm_kb),
                mb(f.peaks.rss_anon_kb),
                thousands(nr as f64),
                if ok { "exactly-once ok" } else { "EXACTLY-ONCE BROKEN" }
            ),
            format!("{:.2} × target", f.peaks.vm_hwm_kb as f64 / 1024.0 / 8.0),
            Verdict::of(f.peaks.vm_hwm_kb <= 8 * 1024 && ok),
        );
        // Leave the servers small for whatever runs next.
        self.local
            .batch_execute("TRUNCATE meter_readings RESTART IDENTITY; TRUNCATE sync_upload_batches")
            .ok();
    }
}

/// The hand-written loop's query: the design's "unsynchronized readings, oldest first, 100 at a time", served by
/// the design's index idx_meter_readings_sync (is_synchronized, timestamp). Values as text.
const HAND_SELECT: &str = "SELECT id, meter_id, timestamp::text AS ts, value::text AS v, unit, metadata::text AS md \
                           FROM meter_readings WHERE is_synchronized = false ORDER BY timestamp LIMIT 100";

/// The same query without the predicate, as the issue words it: since the claim index is partial (WHERE
/// is_synchronized IS NOT TRUE) and the design's index leads with is_synchronized, no index serves it, and every
/// batch sorts the whole queue.
const HAND_SELECT_BARE: &str =
    "SELECT id, meter_id, timestamp::text AS ts, value::text AS v, unit, metadata::text AS md \
                                FROM meter_readings ORDER BY timestamp LIMIT 100";

/// The typical hand-written store-and-forward loop: SELECT the oldest 100 ([`HAND_SELECT`]), INSERT them in one multi-row statement inside one remote transaction, DELETE them by id locally.
/// Statements are prepared once (no re-parse per batch). Returns the readings moved.
fn hand_loop(local_port: u16, remote_port: u16, select: &str) -> Result<u64, postgres::Error> {
    let mut local = common::connect(local_port);
    let mut remote = common::connect(remote_port);
    let select = local.prepare(select)?;
    let delete = local.prepare("DELETE FROM meter_readings WHERE id = ANY($1)")?;
    let insert_sql = |n: usize| {
        let values: Vec<String> = (0..n)
            .map(|i| {
                let p = i * 5;
                format!(
                    "(${}, ${}::text::timestamp, ${}::text::numeric, ${}, ${}::text::jsonb)",
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4,
                    p + 5
                )
            })
            .collect();
        format!(
            "INSERT INTO meter_readings (meter_id, timestamp, value, unit, metadata) VALUES {}",
            values.join(", ")
        )
    };
    let insert_full = remote.prepare(&insert_sql(HAND_BATCH))?;
    let mut moved = 0u64;
    loop {
        let rows = local.query(&select, &[])?;
        if rows.is_empty() {
            return Ok(moved);
        }
        let ids: Vec<i32> = rows.iter().map(|r| r.get("id")).collect();
        let cols: Vec<(String, String, String, String, Option<String>)> = rows
            .iter()
            .map(|r| (r.get("meter_id"), r.get("ts"), r.get("v"), r.get("unit"), r.get("md")))
            .collect();
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(cols.len() * 5);
        for (m, t, v, u, md) in &cols {
            let row: [&(dyn ToSql + Sync); 5] = [m, t, v, u, md];
            params.extend(row);
        }
        let insert = if rows.len() == HAND_BATCH {
            insert_full.clone()
        } else {
            remote.prepare(&insert_sql(rows.len()))?
        };
        let mut tx = remote.transaction()?;
        tx.execute(&insert, &params)?;
        tx.commit()?;
        local.execute(&delete, &[&ids])?;
        moved += rows.len() as u64;
    }
}

/// Sessions ever opened on the bench database of this server (pg_stat_database.sessions, PostgreSQL 14+).
fn sessions(c: &mut Client) -> i64 {
    c.query_one(
        "SELECT coalesce(sessions, 0) FROM pg_stat_database WHERE datname = current_database()",
        &[],
    )
    .map(|r| r.get(0))
    .unwrap_or(0)
}

fn digest_of(c: &mut Client, data: &'static Data) -> Seeded {
    let row = c.query_one(data.digest, &[]).expect("digest");
    Seeded {
        count: row.get(0),
        digest: row.get(1),
        data,
    }
}

fn explain(c: &mut Client, statement: &str) -> Vec<String> {
    c.batch_execute("BEGIN").expect("begin");
    let plan = explain_in_tx(c, statement);
    c.batch_execute("ROLLBACK").expect("rollback");
    plan
}

/// EXPLAIN ANALYZE runs the statement: callers keep it inside a transaction they roll back.
fn explain_in_tx(c: &mut Client, statement: &str) -> Vec<String> {
    c.simple_query(&format!("EXPLAIN (ANALYZE, BUFFERS) {statement}"))
        .expect("explain")
        .into_iter()
        .filter_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect()
}

/// "Buffers: shared hit=12 read=3 dirtied=1" -> 15 (hit + read).
fn buffer_count(line: &str) -> u64 {
    line.split_whitespace()
        .filter_map(|w| w.strip_prefix("hit=").or_else(|| w.strip_prefix("read=")))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

fn fin(r: &Run) -> &Finished {
    &r.daemon.as_ref().expect("a daemon run").finished
}

fn print_daemon(label: &str, r: &Run) {
    let f = fin(r);
    println!(
        "  {label:<28} {:>9} rows/s ({:.2} s, drain {:.2} s) peak RSS {} kB (anon {} kB), CPU {:.2}+{:.2} s, exit {:?}; {}",
        thousands(r.rate()),
        r.wall.as_secs_f64(),
        r.daemon.as_ref().map_or(0.0, |d| d.drain.as_secs_f64()),
        f.peaks.vm_hwm_kb,
        f.peaks.rss_anon_kb,
        f.user.as_secs_f64(),
        f.sys.as_secs_f64(),
        f.code,
        r.checked()
    );
    if let Err(e) = &r.check {
        println!("    {e}\n    stderr tail:\n{}", f.stderr_tail);
    }
}

fn checked_all(runs: &[Run]) -> &'static str {
    if runs.iter().all(|r| r.check.is_ok()) {
        "exactly-once ok"
    } else {
        "EXACTLY-ONCE BROKEN"
    }
}

/// The run with the median rate.
fn median_run(runs: &[Run]) -> &Run {
    let mut sorted: Vec<&Run> = runs.iter().collect();
    sorted.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    sorted[sorted.len() / 2]
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
