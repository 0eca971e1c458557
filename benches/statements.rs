//! What the pooler-safe remote statement costs on a direct connection: `cargo bench --bench statements`.
//!
//! The daemon sends its remote upload statement unnamed (parse, bind and execute in one round trip, planned at
//! every execution: a pooler in transaction mode may hand each statement to another server connection, and
//! Citus cannot distribute a forced generic plan). A direct connection could keep a named statement prepared
//! once. This bench runs the daemon's own statement text (`sql::UPLOAD`) with the same parameter types on one
//! remote server, three ways, each on its own connection: unnamed (the daemon), named with PostgreSQL's
//! default plan choice, and named with `plan_cache_mode = force_generic_plan` (what the daemon did before the
//! pooler change). It sends BENCH_STMT_READINGS readings (default 200,000) in batches of each BENCH_STMT_SIZES size
//! (default "100,5000": 2,000 and 40 batches) and reads each backend's CPU from /proc; rounds alternate the modes
//! (BENCH_STMT_ROUNDS, default 3), medians are printed as a markdown table. Every round checks that each
//! mode inserted exactly its readings and ledger rows. Figures: BENCHMARKS.md ("Unnamed remote statements").

mod common;

use std::error::Error;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
use postgres::{Client, Statement};
use sync_process::upload::sql;

use common::{cpu_time, env_or, machine, Servers};

/// A value's binary wire bytes, of whatever type the statement declares (the daemon's parameters are the
/// local server's binary values passed through; here the remote server makes them once).
#[derive(Debug)]
struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Raw, Box<dyn Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

impl ToSql for Raw {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.extend_from_slice(&self.0);
        Ok(IsNull::No)
    }
    fn accepts(_: &Type) -> bool {
        true
    }
    to_sql_checked!();
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Unnamed,
    NamedAuto,
    NamedGeneric,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Unnamed, Mode::NamedAuto, Mode::NamedGeneric];

    fn label(self) -> &'static str {
        match self {
            Mode::Unnamed => "unnamed (the daemon: parsed and planned each batch)",
            Mode::NamedAuto => "named, prepared once (plan_cache_mode auto)",
            Mode::NamedGeneric => "named, prepared once, force_generic_plan",
        }
    }
}

/// The five reading arrays of one batch, in the statement's parameter order $4..$8.
struct Arrays([Raw; 5]);

const TYPES: [Type; 8] = [
    Type::TEXT,
    Type::TEXT,
    Type::INT4,
    Type::TEXT_ARRAY,
    Type::TIMESTAMP_ARRAY,
    Type::NUMERIC_ARRAY,
    Type::TEXT_ARRAY,
    Type::JSONB_ARRAY,
];

fn arrays(c: &mut Client, n: i32) -> Arrays {
    let row = c
        .query_one(
            "SELECT array_agg('meter-' || (i % 50) ORDER BY i),
                    array_agg(timestamp '2024-01-01' + i * interval '1.5 s' ORDER BY i),
                    array_agg(round(i * 1.2345, 1 + i % 6) ORDER BY i),
                    array_agg('kWh'::text ORDER BY i),
                    array_agg(CASE WHEN i % 10 = 0 THEN NULL ELSE jsonb_build_object('q', i % 3, 'tag', 'é\"x') END ORDER BY i)
             FROM generate_series(1, $1) i",
            &[&n],
        )
        .unwrap_or_else(|e| panic!("making the arrays of a {n}-reading batch: {e}"));
    Arrays([row.get(0), row.get(1), row.get(2), row.get(3), row.get(4)])
}

struct Conn {
    client: Client,
    backend: u32,
    prepared: Option<Statement>,
}

fn open(servers: &Servers, mode: Mode, text: &str) -> Conn {
    let mut client = servers.remote_client();
    if mode == Mode::NamedGeneric {
        client
            .batch_execute("SET plan_cache_mode = force_generic_plan")
            .unwrap_or_else(|e| panic!("setting plan_cache_mode: {e}"));
    }
    let backend = client
        .query_one("SELECT pg_backend_pid()", &[])
        .map(|r| r.get::<_, i32>(0) as u32)
        .unwrap_or_else(|e| panic!("reading the backend pid: {e}"));
    let prepared = (mode != Mode::Unnamed).then(|| {
        client
            .prepare_typed(text, &TYPES)
            .unwrap_or_else(|e| panic!("preparing the upload statement: {e}"))
    });
    Conn {
        client,
        backend,
        prepared,
    }
}

/// Sends `batches` batches of `a` (n readings each) as site `site`; returns (wall, backend CPU).
fn run(conn: &mut Conn, text: &str, site: &str, n: i32, a: &Arrays, batches: u32, first: u64) -> (Duration, Duration) {
    let cpu0 = cpu_time(conn.backend).unwrap_or_default();
    let t0 = Instant::now();
    for k in 0..u64::from(batches) {
        let id = format!("00000000-0000-4000-8000-{:012x}", first + k);
        let params: [&(dyn ToSql + Sync); 8] = [&site, &id, &n, &a.0[0], &a.0[1], &a.0[2], &a.0[3], &a.0[4]];
        let rows = match &conn.prepared {
            Some(st) => conn.client.execute(st, &params),
            None => {
                let typed: Vec<(&(dyn ToSql + Sync), Type)> =
                    params.iter().zip(TYPES.iter()).map(|(p, t)| (*p, t.clone())).collect();
                conn.client.execute_typed(text, &typed)
            }
        }
        .unwrap_or_else(|e| panic!("batch {id} of site {site}: {e}"));
        assert_eq!(
            rows, n as u64,
            "batch {id} of site {site}: inserted {rows} rows, not {n}"
        );
    }
    let wall = t0.elapsed();
    (wall, cpu_time(conn.backend).unwrap_or_default().saturating_sub(cpu0))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = env_or("BENCH_STMT_ROUNDS", 3);
    let readings: u32 = env_or("BENCH_STMT_READINGS", 200_000);
    let sizes: Vec<i32> = std::env::var("BENCH_STMT_SIZES")
        .unwrap_or_else(|_| "100,5000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("BENCH_STMT_SIZES: {s:?} is not a number"))
        })
        .collect();
    let servers = Servers::start();
    let text = sql::with_source_column(sql::UPLOAD, None, "$1");
    let mut admin = servers.remote_client();
    println!(
        "# Unnamed remote statements on a direct connection\n\n{}\n",
        machine(&mut admin)
    );
    println!("| batch size | mode | wall per batch | backend CPU per batch | x unnamed (CPU) |");
    println!("|---|---|---|---|---|");
    let mut first = 0u64;
    for &n in &sizes {
        let batches = (readings / n.max(1) as u32).max(5);
        let a = arrays(&mut admin, n);
        let mut walls: Vec<Vec<Duration>> = vec![Vec::new(); 3];
        let mut cpus: Vec<Vec<Duration>> = vec![Vec::new(); 3];
        for round in 0..rounds {
            admin
                .batch_execute("TRUNCATE meter_readings, sync_upload_ledger")
                .unwrap_or_else(|e| panic!("truncating the remote: {e}"));
            // Alternate the order of the modes from round to round.
            let order: Vec<usize> = (0..3).map(|i| (i + round) % 3).collect();
            for &m in &order {
                let mode = Mode::ALL[m];
                let site = format!("site-{m}");
                let mut conn = open(&servers, mode, &text);
                // One warm-up batch (catalog caches, the named statement's first plans).
                run(&mut conn, &text, &site, n, &a, 1, first);
                first += 1;
                let (w, c) = run(&mut conn, &text, &site, n, &a, batches, first);
                first += u64::from(batches);
                walls[m].push(w / batches);
                cpus[m].push(c / batches);
            }
            // Exactly what was sent: each mode's ledger rows and readings.
            for (m, _) in Mode::ALL.iter().enumerate() {
                let site = format!("site-{m}");
                let row = admin
                    .query_one(
                        "SELECT (SELECT count(*) FROM sync_upload_ledger WHERE source_id = $1),
                                (SELECT coalesce(sum(row_count), 0)::int8 FROM sync_upload_ledger WHERE source_id = $1)",
                        &[&site],
                    )
                    .unwrap_or_else(|e| panic!("checking site {site}: {e}"));
                let (ledger, recorded): (i64, i64) = (row.get(0), row.get(1));
                assert_eq!(ledger, i64::from(batches) + 1, "{site}: ledger rows");
                assert_eq!(
                    recorded,
                    (i64::from(batches) + 1) * i64::from(n),
                    "{site}: readings recorded"
                );
            }
            let total: i64 = admin
                .query_one("SELECT count(*) FROM meter_readings", &[])
                .map(|r| r.get(0))
                .unwrap_or_else(|e| panic!("counting the remote readings: {e}"));
            assert_eq!(total, 3 * (i64::from(batches) + 1) * i64::from(n), "remote readings");
        }
        let base = median(cpus[0].clone()).as_secs_f64();
        for (m, mode) in Mode::ALL.iter().enumerate() {
            let (w, c) = (median(walls[m].clone()), median(cpus[m].clone()));
            println!(
                "| {n} | {} | {:.3} ms | {:.3} ms | {:.2} |",
                mode.label(),
                w.as_secs_f64() * 1e3,
                c.as_secs_f64() * 1e3,
                if base > 0.0 { c.as_secs_f64() / base } else { f64::NAN }
            );
        }
        eprintln!("size {n}: {batches} batches x {rounds} rounds per mode; rounds (wall per batch, ms):");
        for (m, mode) in Mode::ALL.iter().enumerate() {
            let ms: Vec<String> = walls[m]
                .iter()
                .map(|d| format!("{:.3}", d.as_secs_f64() * 1e3))
                .collect();
            eprintln!("  {}: {}", mode.label(), ms.join(", "));
        }
    }
}
