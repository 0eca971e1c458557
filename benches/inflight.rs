//! `cargo bench --bench inflight`: several batches in flight (UPLOAD_BATCHES_IN_FLIGHT = 2, 4, 8) against one,
//! on loopback and through a link with a 50 ms round trip (the fault proxy at 25 ms each way), in one run on
//! the same two throwaway servers (BENCHMARKS.md, "Batches in flight", holds the figures).
//!
//! Each round drains the same re-seeded queue (BENCH_ROWS readings on loopback, 50,000 by default;
//! BENCH_LINK_ROWS through the link, 20,000) at BATCH_SIZE 100 with `sync-process once`, once per N, and the
//! medians over ROUNDS (3) are reported: readings per second of the drain (uploadResult.duration), the ratio
//! to N = 1 of the same link, and the chain breaks the drain logged (a batch in flight that ran before the one
//! ahead of it was in; the daemon counts them in /metrics as sync_process_upload_chain_breaks_total) per 100
//! batches. Targets: every N ≥ 1.0 × N = 1, and fewer than 1 break per 100 batches. After every drain:
//! exactly-once (remote count and multiset digest equal to the seeded ones, local queue, claimed batches and
//! quarantine empty) and remote insertion order following timestamp order.
//!
//! Knobs: BENCH_ONLY=loopback,link runs one of the two; BENCH_INFLIGHT=2,4,8 the widths besides 1.
//! Does not own: the daemon (src/), the proxy (tests/it/support/proxy.rs, included by path).

mod common;

#[allow(dead_code)]
#[path = "../tests/it/support/proxy.rs"]
mod proxy;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{thousands, Report, Servers, Verdict, DIGEST, SEED};
use postgres::Client;

/// Readings per drain on loopback and through the link.
const LOOPBACK_ROWS: i64 = 50_000;
const LINK_ROWS: i64 = 20_000;
/// One-way delay of the proxy: a 50 ms round trip.
const ONE_WAY: Duration = Duration::from_millis(25);
const BATCH: u32 = 100;

/// One drain at one width.
struct Drain {
    /// Readings per second of the drain itself (uploadResult.duration).
    rate: f64,
    batches: u64,
    breaks: u64,
    /// Exactly-once and remote order held (Err says what broke).
    check: Result<(), String>,
}

fn main() {
    let rounds = common::env_or("ROUNDS", 3usize).max(1);
    let widths: Vec<u32> = std::env::var("BENCH_INFLIGHT")
        .unwrap_or_else(|_| "2,4,8".into())
        .split(',')
        .filter_map(|w| w.trim().parse().ok())
        .filter(|&w| (2..=8).contains(&w))
        .collect();
    let started = Instant::now();
    println!("inflight bench: starting two throwaway PostgreSQL servers ...");
    let servers = Servers::start();
    let mut local = servers.local_client();
    let mut remote = servers.remote_client();
    println!("{}\nbinary: {}", common::machine(&mut local), common::bin());
    let report = Report::default();
    let mut links: Vec<(&str, i64, Option<proxy::FaultProxy>)> = Vec::new();
    if common::selected("loopback") {
        links.push(("loopback", common::env_or("BENCH_ROWS", LOOPBACK_ROWS), None));
    }
    if common::selected("link") {
        let target = SocketAddr::from(([127, 0, 0, 1], servers.remote.port()));
        let p = proxy::FaultProxy::start(target);
        p.set_latency(ONE_WAY);
        links.push((
            "50 ms round trip",
            common::env_or("BENCH_LINK_ROWS", LINK_ROWS),
            Some(p),
        ));
    }
    for (link, rows, proxy) in &links {
        let port = proxy.as_ref().map_or(servers.remote.port(), |p| p.port());
        println!(
            "\n== {link}: {} readings, BATCH_SIZE {BATCH}, {rounds} round(s)",
            thousands(*rows as f64)
        );
        let all: Vec<u32> = std::iter::once(1).chain(widths.iter().copied()).collect();
        let mut runs: Vec<Vec<Drain>> = all.iter().map(|_| Vec::new()).collect();
        for round in 1..=rounds {
            for (i, &n) in all.iter().enumerate() {
                let seeded = seed(&mut local, &mut remote, *rows);
                let d = drain(&servers, port, n, &seeded, &mut local, &mut remote);
                println!(
                    "  round {round}: N = {n}: {:>9} rows/s, {} batches, {} chain breaks; {}",
                    thousands(d.rate),
                    d.batches,
                    d.breaks,
                    if d.check.is_ok() {
                        "exactly-once and order ok"
                    } else {
                        "EXACTLY-ONCE OR ORDER BROKEN"
                    }
                );
                if let Err(e) = &d.check {
                    println!("    {e}");
                }
                runs[i].push(d);
            }
        }
        let base = median(runs[0].iter().map(|d| d.rate));
        for (i, &n) in all.iter().enumerate() {
            let rate = median(runs[i].iter().map(|d| d.rate));
            let (batches, breaks) = runs[i].iter().fold((0, 0), |(b, k), d| (b + d.batches, k + d.breaks));
            let per_100 = if batches == 0 {
                0.0
            } else {
                breaks as f64 * 100.0 / batches as f64
            };
            let ok = runs[i].iter().all(|d| d.check.is_ok());
            let ratio = rate / base;
            report.row(
                &format!(
                    "{link}, {} readings, BATCH_SIZE {BATCH}, UPLOAD_BATCHES_IN_FLIGHT={n}",
                    thousands(*rows as f64)
                ),
                if n == 1 {
                    "reference"
                } else {
                    "≥ 1.0 × N = 1; < 1 break / 100 batches"
                },
                format!(
                    "{} rows/s; {breaks} chain breaks in {batches} batches ({per_100:.2} / 100); {}",
                    thousands(rate),
                    if ok {
                        "exactly-once and order ok"
                    } else {
                        "EXACTLY-ONCE OR ORDER BROKEN"
                    }
                ),
                format!("{ratio:.2} × N = 1"),
                if n == 1 {
                    if ok {
                        Verdict::Info
                    } else {
                        Verdict::Miss
                    }
                } else {
                    Verdict::of(ok && ratio >= 1.0 && per_100 < 1.0)
                },
            );
        }
    }
    report.print(&format!(
        "Batches in flight (`cargo bench --bench inflight`, {rounds} round(s), medians; {:.0} s)",
        started.elapsed().as_secs_f64()
    ));
}

/// Empties both sides (and the site's chain row) and queues `n` readings locally; returns their count and
/// digest.
fn seed(local: &mut Client, remote: &mut Client, n: i64) -> (i64, String) {
    local
        .batch_execute(
            "TRUNCATE meter_readings RESTART IDENTITY; TRUNCATE sync_upload_batches; TRUNCATE sync_quarantine;",
        )
        .expect("truncating local");
    remote
        .batch_execute(
            "TRUNCATE meter_readings RESTART IDENTITY; TRUNCATE sync_upload_ledger; TRUNCATE sync_upload_chain;",
        )
        .expect("truncating remote");
    local.execute(SEED, &[&n]).expect("seeding");
    for c in [&mut *local, &mut *remote] {
        c.batch_execute("VACUUM ANALYZE meter_readings").expect("vacuum");
        c.batch_execute("CHECKPOINT").expect("checkpoint");
    }
    digest(local)
}

fn digest(c: &mut Client) -> (i64, String) {
    let row = c.query_one(DIGEST, &[]).expect("digest");
    (row.get(0), row.get(1))
}

/// `sync-process once` with `n` batches in flight, the remote at 127.0.0.1:`port`; then the checks.
fn drain(
    servers: &Servers,
    port: u16,
    n: u32,
    seeded: &(i64, String),
    local: &mut Client,
    remote: &mut Client,
) -> Drain {
    let mut env = servers.env(port, BATCH);
    env.insert("UPLOAD_BATCHES_IN_FLIGHT".into(), n.to_string());
    let finished = common::spawn(&["once"], &env).wait();
    let result: serde_json::Value = serde_json::from_str(finished.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "`once` printed no JSON ({e}); exit {:?}; stderr:\n{}",
            finished.code, finished.stderr_tail
        )
    });
    let up = &result["uploadResult"];
    let drain_ms = up["duration"].as_u64().unwrap_or(0).max(1);
    let rate = seeded.0 as f64 * 1000.0 / drain_ms as f64;
    // The drain's summary line (at info with several in flight): "... N batches in T ms (n in flight, K chain
    // breaks); queue empty".
    let summary = finished
        .stderr_tail
        .lines()
        .find(|l| l.contains("batches in") && l.contains("queue empty"));
    let number_before = |line: &str, word: &str| -> Option<u64> {
        let at = line.find(word)?;
        line[..at]
            .split_whitespace()
            .last()?
            .trim_start_matches('(')
            .parse()
            .ok()
    };
    let (batches, breaks) = match summary {
        Some(l) => (
            number_before(l, " batches in").unwrap_or(0),
            number_before(l, " chain breaks").unwrap_or(0),
        ),
        None => ((seeded.0 as u64).div_ceil(u64::from(BATCH)), 0),
    };
    let mut problems = Vec::new();
    if finished.code != Some(0) || up["recordsUploaded"].as_i64() != Some(seeded.0) {
        problems.push(format!("exit {:?}, uploadResult {up}", finished.code));
    }
    if n > 1 && summary.is_none() {
        problems.push(format!("no drain summary in the log:\n{}", finished.stderr_tail));
    }
    let left: i64 = local
        .query_one(
            "SELECT (SELECT count(*) FROM meter_readings) + (SELECT count(*) FROM sync_upload_batches) \
             + (SELECT count(*) FROM sync_quarantine)",
            &[],
        )
        .map(|r| r.get(0))
        .unwrap_or(-1);
    if left != 0 {
        problems.push(format!("{left} readings, batches or quarantined readings left locally"));
    }
    if digest(remote) != *seeded {
        problems.push("the remote readings differ from the seeded ones".into());
    }
    let back: i64 = remote
        .query_one(
            "SELECT count(*) FROM (SELECT timestamp < lag(timestamp) OVER (ORDER BY id) AS back FROM meter_readings) s \
             WHERE back",
            &[],
        )
        .map(|r| r.get(0))
        .unwrap_or(-1);
    if back != 0 {
        problems.push(format!("{back} remote readings out of timestamp order"));
    }
    Drain {
        rate,
        batches,
        breaks,
        check: if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        },
    }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
