//! What a batch costs on a Citus central, against plain PostgreSQL in the same run: `cargo bench --bench
//! citus`. Starts a local server, a plain remote and a Citus cluster (coordinator + 2 workers, from
//! `sync_process::pgtemp`; Citus built by ../shared/vendor/citus/build.sh), lays the central out as the README
//! documents (sql/citus/by-meter.sql, sql/citus/by-site.sql), with Citus's defaults and with
//! `citus.multi_shard_modify_mode = 'sequential'`, and times `sync-process once` draining BENCH_CITUS_N
//! readings (default 5,000) in batches of BENCH_CITUS_BATCH (default 100). Every run is checked: the remote
//! holds exactly the readings (count and an order-free digest of their text), the local queue is empty.
//! Rounds alternate the cases (BENCH_CITUS_ROUNDS, default 3); medians are printed as a markdown table.
//! Figures: BENCHMARKS.md ("Citus").

mod common;

use std::collections::BTreeMap;

use postgres::Client;
use sync_process::config::Config;
use sync_process::db::ConnectionManager;
use sync_process::pgtemp::{self, PgTemp};
use sync_process::shutdown::Shutdown;

use common::{connect, env_or, machine, spawn, Servers};

const BY_METER: &str = include_str!("../sql/citus/by-meter.sql");
const BY_SITE: &str = include_str!("../sql/citus/by-site.sql");

struct Case {
    label: &'static str,
    /// None: the plain remote.
    layout: Option<&'static str>,
    db: String,
}

fn main() {
    let n: i64 = env_or("BENCH_CITUS_N", 5_000);
    let batch: u32 = env_or("BENCH_CITUS_BATCH", 100);
    let rounds: usize = env_or("BENCH_CITUS_ROUNDS", 3);
    let servers = Servers::start();
    let opts = pgtemp::Options {
        extra_conf: vec![
            "shared_preload_libraries = 'citus'".into(),
            "max_connections = 120".into(),
            "max_prepared_transactions = 120".into(),
        ],
        ..Default::default()
    };
    let nodes: Vec<PgTemp> = (0..3)
        .map(|i| {
            PgTemp::start(&format!("sync-process-bench-citus{i}"), &opts)
                .unwrap_or_else(|e| panic!("{e} (is Citus installed? ../shared/vendor/citus/build.sh)"))
        })
        .collect();
    let mut cases = vec![Case {
        label: "plain PostgreSQL",
        layout: None,
        db: common::DB.to_string(),
    }];
    for (label, layout, sequential, db) in [
        ("Citus (a) by meter, defaults", BY_METER, false, "a_default"),
        ("Citus (a) by meter, sequential", BY_METER, true, "a_sequential"),
        ("Citus (b) by site, defaults", BY_SITE, false, "b_default"),
        ("Citus (b) by site, sequential", BY_SITE, true, "b_sequential"),
    ] {
        citus_database(&servers, &nodes, db, layout, sequential);
        cases.push(Case {
            label,
            layout: Some(layout),
            db: db.to_string(),
        });
    }
    let coordinator = nodes[0].port();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for round in 0..rounds {
        for (i, case) in cases.iter().enumerate() {
            let port = if case.layout.is_some() {
                coordinator
            } else {
                servers.remote.port()
            };
            let ms = run(&servers, case, port, n, batch);
            eprintln!("round {round}: {}: {ms:.0} ms", case.label);
            times[i].push(ms);
        }
    }
    println!("\n{}", machine(&mut servers.local_client()));
    println!("\n{n} readings, BATCH_SIZE={batch}, UPLOAD_BATCHES_IN_FLIGHT=1, median of {rounds} (`once`, wall)\n");
    println!("| central | drain (ms) | per batch (ms) | x plain |");
    println!("|---|---|---|---|");
    let batches = (n as f64 / f64::from(batch)).ceil();
    let plain = median(times[0].iter().copied());
    for (case, t) in cases.iter().zip(&times) {
        let m = median(t.iter().copied());
        println!("| {} | {m:.0} | {:.1} | {:.1} |", case.label, m / batches, m / plain);
    }
}

/// A fresh Citus database `db` on every node, the nodes registered, migrated (on the coordinator) and laid out.
fn citus_database(servers: &Servers, nodes: &[PgTemp], db: &str, layout: &str, sequential: bool) {
    for node in nodes {
        node.create_database(db).unwrap_or_else(|e| panic!("{e}"));
        node.connect(db)
            .and_then(|mut c| {
                c.batch_execute("CREATE EXTENSION citus")
                    .map_err(|e| sync_process::error::Error::Other(format!("CREATE EXTENSION citus: {e}")))
            })
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let mut c = nodes[0].connect(db).unwrap_or_else(|e| panic!("{e}"));
    let host = pgtemp::HOST;
    c.execute(
        "SELECT citus_set_coordinator_host($1, $2)",
        &[&host, &i32::from(nodes[0].port())],
    )
    .expect("citus_set_coordinator_host");
    for w in &nodes[1..] {
        c.execute("SELECT citus_add_node($1, $2)", &[&host, &i32::from(w.port())])
            .expect("citus_add_node");
    }
    let mut map = servers.env(nodes[0].port(), 100);
    map.insert("POSTGRES_CLIENT_DB".into(), db.into());
    let cfg = Config::from_map(&map).expect("bench configuration");
    let conns = ConnectionManager::new(&cfg, Shutdown::new()).expect("connection manager");
    sync_process::migrate::migrate(&conns.remote, false).expect("migrating the coordinator");
    c.batch_execute(layout).expect("laying the central out");
    if sequential {
        c.batch_execute(&format!(
            "ALTER DATABASE {db} SET citus.multi_shard_modify_mode = 'sequential'"
        ))
        .expect("sequential");
    }
}

/// Seeds `n` readings locally, empties the remote, drains with `once`; checks exactly-once; returns the wall
/// time in ms.
fn run(servers: &Servers, case: &Case, port: u16, n: i64, batch: u32) -> f64 {
    let mut local = servers.local_client();
    local
        .batch_execute("TRUNCATE meter_readings, sync_upload_batches, sync_quarantine")
        .expect("truncating local");
    local
        .execute(
            "INSERT INTO meter_readings (meter_id, timestamp, value, unit, metadata)
             SELECT 'meter-' || (g % 200), timestamp '2024-01-01' + g * interval '1.000001 second',
                    ((g % 1000)::numeric / 100)::numeric(12,3), 'kWh', jsonb_build_object('seq', g)
             FROM generate_series(1, $1::int8) g",
            &[&n],
        )
        .expect("seeding");
    let expected = digest(&mut local);
    let mut remote = remote_client(port, &case.db);
    remote
        .batch_execute("TRUNCATE meter_readings; TRUNCATE sync_upload_ledger; TRUNCATE sync_upload_chain")
        .expect("truncating remote");
    let mut map: BTreeMap<String, String> = servers.env(port, batch);
    map.insert("POSTGRES_CLIENT_DB".into(), case.db.clone());
    if case.layout == Some(BY_SITE) {
        map.insert("UPLOAD_SOURCE_COLUMN".into(), "site_id".into());
    }
    let done = spawn(&["once"], &map).wait();
    assert_eq!(done.code, Some(0), "{}: once failed: {}", case.label, done.stderr_tail);
    let left: i64 = local
        .query_one("SELECT count(*) FROM meter_readings", &[])
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "{}: local queue not empty", case.label);
    assert_eq!(
        digest(&mut remote),
        expected,
        "{}: the remote readings differ",
        case.label
    );
    done.wall.as_secs_f64() * 1000.0
}

/// (count, order-free digest of every reading's text).
fn digest(c: &mut Client) -> (i64, String) {
    let r = c
        .query_one(
            "SELECT count(*), coalesce(sum(('x' || substr(md5(ROW(meter_id, timestamp::text, value::text, unit,
                    metadata::text)::text), 1, 15))::bit(60)::int8)::text, '0') FROM meter_readings",
            &[],
        )
        .expect("digest");
    (r.get(0), r.get(1))
}

fn remote_client(port: u16, db: &str) -> Client {
    if db == common::DB {
        return connect(port);
    }
    pgtemp::client_config(pgtemp::HOST, port, db)
        .connect(postgres::NoTls)
        .unwrap_or_else(|e| panic!("connecting to {db} on {port}: {e}"))
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
