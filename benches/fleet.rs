//! A fleet against one central through PgBouncer: `cargo bench --bench fleet`.
//!
//! One central PostgreSQL behind PgBouncer 1.18 in transaction pooling (BENCH_FLEET_POOL server connections,
//! default 10), and one local server holding a database per site (in the field each box has its own; here
//! they share the machine's cores, which is said next to the figures). Each case reseeds every site with
//! BENCH_FLEET_READINGS readings (default 5,000; 100 meters per site) and starts `sync-process once` for all
//! its sites at the same moment (each with its own SYNC_SOURCE_ID), then waits for all of them. Figures per
//! case: wall time until the last site finished, aggregate readings/s and its ratio to one site alone through
//! the same pooler, CPU of the central server and of PgBouncer per 1,000 readings, the most central backends
//! seen (sampled every 50 ms; the table shows the lowest over the rounds, as PgBouncer keeps its pool open
//! between cases). Every case is checked: the central holds every reading exactly once (count,
//! and count of distinct (meter, timestamp)), in timestamp order per site, and every site's queue is empty.
//!
//! BENCH_FLEET_CASES (default "1:direct,1:pooler,20:pooler,50:pooler"): sites and path of each case;
//! BENCH_FLEET_ROUNDS (default 2) rounds alternate the cases, medians are printed; BATCH_SIZE via
//! BENCH_FLEET_BATCH (default 100). Figures: BENCHMARKS.md ("A fleet through PgBouncer").

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use sync_process::config::Config;
use sync_process::db::ConnectionManager;
use sync_process::pgtemp::bouncer::{BouncerOptions, PgBouncer, PoolMode};
use sync_process::pgtemp::{self};
use sync_process::shutdown::Shutdown;

use common::{connect, cpu_time, env_or, machine, server_cpu, spawn, thousands, Servers, DB};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Direct,
    Pooler,
}

#[derive(Clone, Copy)]
struct Case {
    sites: usize,
    path: Path,
}

impl Case {
    fn label(&self) -> String {
        let via = match self.path {
            Path::Direct => "direct",
            Path::Pooler => "through PgBouncer",
        };
        format!("{} site{} {via}", self.sites, if self.sites == 1 { "" } else { "s" })
    }
}

/// One run of a case.
struct Run {
    wall: Duration,
    central_cpu: Duration,
    pooler_cpu: Duration,
    peak_backends: i64,
}

fn parse_cases(text: &str) -> Vec<Case> {
    text.split(',')
        .filter(|c| !c.trim().is_empty())
        .map(|c| {
            let (n, via) = c.trim().split_once(':').unwrap_or((c.trim(), "pooler"));
            let sites = n
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .unwrap_or_else(|| panic!("BENCH_FLEET_CASES: {n:?} is not a number of sites (1 or more)"));
            let path = match via {
                "direct" => Path::Direct,
                "pooler" => Path::Pooler,
                other => panic!("BENCH_FLEET_CASES: {other:?} is not a path (accepted: direct, pooler)"),
            };
            Case { sites, path }
        })
        .collect()
}

fn site_db(i: usize) -> String {
    format!("site_{i}")
}

fn main() {
    let readings: i64 = env_or("BENCH_FLEET_READINGS", 5_000);
    let rounds: usize = env_or("BENCH_FLEET_ROUNDS", 2);
    let batch: u32 = env_or("BENCH_FLEET_BATCH", 100);
    let pool: u32 = env_or("BENCH_FLEET_POOL", 10);
    let cases = parse_cases(
        &std::env::var("BENCH_FLEET_CASES").unwrap_or_else(|_| "1:direct,1:pooler,20:pooler,50:pooler".into()),
    );
    let max_sites = cases.iter().map(|c| c.sites).max().unwrap_or(1);

    let servers = Servers::start();
    let bouncer = PgBouncer::start(
        servers.remote.port(),
        BouncerOptions {
            mode: PoolMode::Transaction,
            pool_size: pool,
            min_pool_size: 2,
            max_clients: 1000,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    println!("{}", machine(&mut servers.remote_client()));
    println!(
        "# A fleet through PgBouncer: {readings} readings per site, BATCH_SIZE {batch}, pool of {pool} server \
         connections, {rounds} rounds"
    );

    // The site databases: copies of the migrated `bench` database of the local server.
    {
        // From the maintenance database: a template must have no other session.
        let mut local = pgtemp::client_config(pgtemp::HOST, servers.local.port(), "postgres")
            .connect(postgres::NoTls)
            .unwrap_or_else(|e| panic!("connecting to the local server: {e}"));
        for i in 0..max_sites {
            let name = site_db(i);
            for sql in [
                format!("DROP DATABASE IF EXISTS {name}"),
                format!("CREATE DATABASE {name} TEMPLATE {DB}"),
            ] {
                local.batch_execute(&sql).unwrap_or_else(|e| panic!("{sql}: {e:?}"));
            }
        }
    }
    let env_of = |case: &Case, i: usize| -> BTreeMap<String, String> {
        let port = match case.path {
            Path::Direct => servers.remote.port(),
            Path::Pooler => bouncer.port(),
        };
        let mut env = servers.env(port, batch);
        env.insert("POSTGRES_SYNC_DB".into(), site_db(i));
        env.insert("SYNC_SOURCE_ID".into(), format!("site-{i}"));
        env.insert("LOG_LEVEL".into(), "warn".into());
        env
    };
    // Sanity: the configuration of site 0 is accepted.
    let cfg = Config::from_map(&env_of(&cases[0], 0)).expect("a site's configuration");
    drop(ConnectionManager::new(&cfg, Shutdown::new()).expect("connection manager"));

    let mut runs: Vec<Vec<Run>> = cases.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (k, case) in cases.iter().enumerate() {
            reseed(&servers, case.sites, readings);
            let run = run_case(&servers, &bouncer, case, &env_of);
            verify(&servers, case.sites, readings).unwrap_or_else(|e| panic!("{} (round {round}): {e}", case.label()));
            let total = (case.sites as i64 * readings) as f64;
            println!(
                "  round {round}: {:<28} {:>7.2} s  {:>9} readings/s  central CPU {:>6.1} ms / 1000 readings  \
                 PgBouncer {:>5.1} ms / 1000  peak central backends {}  (exactly-once, order ok)",
                case.label(),
                run.wall.as_secs_f64(),
                thousands(total / run.wall.as_secs_f64()),
                run.central_cpu.as_secs_f64() * 1e6 / total,
                run.pooler_cpu.as_secs_f64() * 1e6 / total,
                run.peak_backends
            );
            runs[k].push(run);
        }
    }

    let one_pooled = cases
        .iter()
        .position(|c| c.sites == 1 && c.path == Path::Pooler)
        .map(|k| rate(&runs[k], readings));
    println!("\n| case | wall (median) | readings/s, all sites | x one site | central CPU / 1000 readings | PgBouncer CPU / 1000 | peak central backends |");
    println!("|---|---|---|---|---|---|---|");
    for (k, case) in cases.iter().enumerate() {
        let total = (case.sites as i64 * readings) as f64;
        let wall = median(runs[k].iter().map(|r| r.wall.as_secs_f64()).collect());
        let r = rate(&runs[k], readings) * case.sites as f64;
        let ratio = one_pooled
            .map(|one| format!("{:.2}", r / one))
            .unwrap_or_else(|| "-".into());
        let cpu = median(
            runs[k]
                .iter()
                .map(|r| r.central_cpu.as_secs_f64() * 1e6 / total)
                .collect(),
        );
        let pooler = median(
            runs[k]
                .iter()
                .map(|r| r.pooler_cpu.as_secs_f64() * 1e6 / total)
                .collect(),
        );
        let backends = runs[k].iter().map(|r| r.peak_backends).min().unwrap_or(0);
        println!(
            "| {} | {wall:.2} s | {} | {ratio} | {cpu:.1} ms | {pooler:.1} ms | {backends} |",
            case.label(),
            thousands(r)
        );
    }
}

/// Readings per second of one site of a case (median over its runs: sites x readings / wall, per site).
fn rate(runs: &[Run], readings: i64) -> f64 {
    median(runs.iter().map(|r| readings as f64 / r.wall.as_secs_f64()).collect())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Every site's queue filled anew (100 meters per site, one reading per meter and minute), the central emptied.
fn reseed(servers: &Servers, sites: usize, readings: i64) {
    for i in 0..sites {
        let mut c = pgtemp::client_config(pgtemp::HOST, servers.local.port(), &site_db(i))
            .connect(postgres::NoTls)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", site_db(i)));
        c.batch_execute(&format!(
            "TRUNCATE meter_readings RESTART IDENTITY; TRUNCATE sync_upload_batches; TRUNCATE sync_quarantine;
             INSERT INTO meter_readings (meter_id, timestamp, value, unit, metadata)
             SELECT 'site-{i}-m' || (g % 100), timestamp '2026-01-01' + g * interval '1 minute',
                    (g * 7 % 100000)::numeric / 100, 'kWh', NULL
             FROM generate_series(1, {readings}) g"
        ))
        .and_then(|_| c.batch_execute("VACUUM ANALYZE meter_readings"))
        .unwrap_or_else(|e| panic!("seeding {}: {e:?}", site_db(i)));
    }
    servers
        .remote_client()
        .batch_execute(
            "TRUNCATE meter_readings RESTART IDENTITY; TRUNCATE sync_upload_ledger; TRUNCATE sync_upload_chain; \
             CHECKPOINT",
        )
        .expect("emptying the central");
}

/// Starts every site's `once` together and waits for all; the central's backends are sampled meanwhile.
fn run_case(
    servers: &Servers,
    bouncer: &PgBouncer,
    case: &Case,
    env_of: &dyn Fn(&Case, usize) -> BTreeMap<String, String>,
) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicI64::new(0));
    let sampler = {
        let (stop, peak, port) = (stop.clone(), peak.clone(), servers.remote.port());
        thread::spawn(move || {
            let mut c = connect(port);
            while !stop.load(Ordering::SeqCst) {
                if let Ok(row) = c.query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
                    &[],
                ) {
                    peak.fetch_max(row.get::<_, i64>(0), Ordering::SeqCst);
                }
                thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let pooler_pid = bouncer.pid().and_then(|p| u32::try_from(p).ok());
    let pooler_before = pooler_pid.and_then(cpu_time).unwrap_or_default();
    let central_before = server_cpu(servers.remote.data_dir());
    let t0 = Instant::now();
    let children: Vec<_> = (0..case.sites).map(|i| spawn(&["once"], &env_of(case, i))).collect();
    for (i, child) in children.into_iter().enumerate() {
        let done = child.wait();
        assert_eq!(
            done.code,
            Some(0),
            "{}: site {i}'s `once` failed:\n{}",
            case.label(),
            done.stderr_tail
        );
    }
    let wall = t0.elapsed();
    let central_cpu = server_cpu(servers.remote.data_dir()).saturating_sub(central_before);
    let pooler_cpu = pooler_pid
        .and_then(cpu_time)
        .unwrap_or_default()
        .saturating_sub(pooler_before);
    stop.store(true, Ordering::SeqCst);
    let _ = sampler.join();
    Run {
        wall,
        central_cpu,
        pooler_cpu,
        peak_backends: peak.load(Ordering::SeqCst),
    }
}

/// Exactly once and in order on the central; nothing left on any site.
fn verify(servers: &Servers, sites: usize, readings: i64) -> Result<(), String> {
    let mut central = servers.remote_client();
    let row = central
        .query_one(
            "SELECT count(*), count(DISTINCT (meter_id, timestamp)),
                    count(*) FILTER (WHERE back)
             FROM (SELECT meter_id, timestamp,
                          timestamp < lag(timestamp) OVER (PARTITION BY split_part(meter_id, '-m', 1) ORDER BY id)
                            AS back
                   FROM meter_readings) x",
            &[],
        )
        .map_err(|e| format!("counting on the central: {e:?}"))?;
    let (n, distinct, back): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let expected = sites as i64 * readings;
    if n != expected || distinct != expected {
        return Err(format!(
            "the central holds {n} readings ({distinct} distinct), {expected} were seeded"
        ));
    }
    if back != 0 {
        return Err(format!("{back} readings arrived before an older one of the same site"));
    }
    for i in 0..sites {
        let mut c = pgtemp::client_config(pgtemp::HOST, servers.local.port(), &site_db(i))
            .connect(postgres::NoTls)
            .map_err(|e| format!("connecting to {}: {e}", site_db(i)))?;
        let left: i64 = c
            .query_one("SELECT count(*) FROM meter_readings", &[])
            .map_err(|e| format!("counting on {}: {e}", site_db(i)))?
            .get(0);
        if left != 0 {
            return Err(format!("{left} readings left on {}", site_db(i)));
        }
    }
    Ok(())
}
