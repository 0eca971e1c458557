//! `cargo bench --bench status`: what a fresh GET /status costs with a large local queue (BENCHMARKS.md,
//! "Status measured at request time").
//!
//! At 100,000 and 1,000,000 queued readings (BENCH_STATUS_ROWS overrides the largest), each right after the
//! insert (visibility map not yet set: the worst case after a burst) and after VACUUM ANALYZE: the status
//! statement (`sync_process::status::FRESH_SQL`) on a direct connection, against the same-run reference of a
//! bare `SELECT count(*) FROM meter_readings`; then GET /status end to end through the real server (its own
//! pool, its measuring thread, HTTP) and how many answers came back stale at the 500 ms deadline. Medians of
//! ROUNDS runs. Then EXPLAIN (ANALYZE, BUFFERS) of the statement at the largest size.
//! Does not own: the server (src/status/), the servers' mechanics (benches/common, src/pgtemp.rs).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{env_or, thousands, Servers};
use postgres::Client;
use sync_process::config::Config;
use sync_process::status::{History, Snapshot, StatusServer, FRESH_SQL};

const ROUNDS: usize = 15;

const SEED: &str = "INSERT INTO meter_readings (meter_id, timestamp, value, unit, metadata)
SELECT 'meter-' || lpad((g % 20)::text, 2, '0'), timestamp '2024-01-01' + g * interval '1 second',
       round(((g * 104729) % 100000000)::numeric / 1000, 2), 'kWh',
       CASE WHEN g % 2 = 0 THEN jsonb_build_object('quality', 'good', 'seq', g) END
FROM generate_series($1::bigint, $2::bigint) AS g";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time_sql(c: &mut Client, sql: &str) -> Duration {
    median(
        (0..ROUNDS)
            .map(|_| {
                let t = Instant::now();
                c.simple_query(sql).expect("the statement runs");
                t.elapsed()
            })
            .collect(),
    )
}

/// GET /status through the server: (median time, stale answers).
fn time_http(addr: SocketAddr) -> (Duration, usize) {
    let mut stale = 0;
    let times = (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            let mut s = TcpStream::connect(addr).expect("connect");
            write!(s, "GET /status HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("send");
            let mut body = String::new();
            s.read_to_string(&mut body).expect("read");
            let took = t.elapsed();
            assert!(body.starts_with("HTTP/1.1 200"), "{body}");
            stale += usize::from(body.contains("\"stale\":true"));
            took
        })
        .collect();
    (median(times), stale)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let largest: i64 = env_or("BENCH_STATUS_ROWS", 1_000_000);
    let servers = Servers::start();
    let mut c = servers.local_client();
    println!("machine: {}", common::machine(&mut c));
    let cfg = Config::from_map(&servers.env(servers.remote.port(), 100)).expect("bench configuration");
    let server = StatusServer::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        std::sync::Arc::new(std::sync::Mutex::new(Snapshot::default())),
        History::shared(),
        Some(&cfg),
    )
    .expect("status server");
    let addr = server.addr();
    println!(
        "\n| queued | state | status statement | bare count(*) (reference) | ratio | GET /status | stale answers |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|");
    let mut have = 0i64;
    for n in [100_000i64, largest] {
        c.execute(SEED, &[&(have + 1), &n]).expect("seeding");
        have = n;
        for state in ["just inserted", "after VACUUM ANALYZE"] {
            if state != "just inserted" {
                c.batch_execute("VACUUM ANALYZE meter_readings").expect("vacuum");
            }
            let fresh = time_sql(&mut c, FRESH_SQL);
            let bare = time_sql(&mut c, "SELECT count(*) FROM meter_readings");
            let (http, stale) = time_http(addr);
            println!(
                "| {} | {state} | {} | {} | {:.2} | {} | {stale}/{ROUNDS} |",
                thousands(n as f64),
                ms(fresh),
                ms(bare),
                fresh.as_secs_f64() / bare.as_secs_f64(),
                ms(http)
            );
        }
    }
    println!("\nEXPLAIN (ANALYZE, BUFFERS) at {}:", thousands(have as f64));
    for row in c
        .query(&format!("EXPLAIN (ANALYZE, BUFFERS) {FRESH_SQL}"), &[])
        .expect("explain")
    {
        println!("    {}", row.get::<_, String>(0));
    }
    drop(server);
}
