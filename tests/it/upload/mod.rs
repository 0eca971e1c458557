//! Integration tests: upload (exactly-once store-and-forward), against real PostgreSQL. This module holds the
//! set-up shared by its rooms, which mirror src/upload:
//! - `properties` — Properties 1-4 of the design (quickcheck, one database pair per property, truncated
//!   between cases) and exact value round trips (the claim, upload and finish statements);
//! - `recovery` — crash safety at every step boundary (by stopping between the protocol's steps and by
//!   SIGKILL of a child process) and link cuts during a drain;
//! - `pipeline` — several batches in flight, the chain statements, connection errors and a real outage;
//! - `poison` — poison readings and the quarantine, a remote that rejects everything, the quarantine command;
//! - `drain` — shutdown and budget, the ledger prune, the upload lock, the statements' indexes.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

use postgres::Client;
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult, Testable};

use sync_process::config::Config;
use sync_process::db::ConnectionManager;
use sync_process::quarantine;
use sync_process::shutdown::Shutdown;
use sync_process::upload::{self, ClaimedBatch, UploadOutcome, UploadSyncManager, UploadSyncResult};

use crate::support::daemon::{run_command, Daemon};
use crate::support::env::{closed_port, count};
use crate::support::pg::{self, DbPair, PgServer};
use crate::support::proxy::FaultProxy;

mod drain;
mod pipeline;
mod poison;
mod properties;
mod recovery;

// ----- Set-up -----

/// A migrated database pair with the daemon's configuration and a connection manager. Field order: the
/// pools close before the databases are dropped.
struct Env {
    conns: ConnectionManager,
    cfg: Config,
    map: BTreeMap<String, String>,
    pair: DbPair,
}

impl Env {
    fn new(vars: &[(&str, &str)]) -> Env {
        Env::on(DbPair::new(), None, vars)
    }

    /// `remote_via`: reach the remote through this port (a proxy) instead of directly.
    fn on(pair: DbPair, remote_via: Option<u16>, vars: &[(&str, &str)]) -> Env {
        let mut map = match remote_via {
            Some(port) => pg::env_map_with_remote(&pair, pg::HOST, port),
            None => pg::env_map(&pair),
        };
        for (k, v) in vars {
            map.insert(k.to_string(), v.to_string());
        }
        let cfg = Config::from_map(&map).expect("test configuration");
        // Migrations go direct (not through a proxy that a test may cut).
        let direct = Config::from_map(&pg::env_map(&pair)).expect("direct configuration");
        let direct_conns = ConnectionManager::new(&direct, Shutdown::new()).expect("connection manager");
        sync_process::migrate::migrate(&direct_conns.local, false).expect("local migration");
        sync_process::migrate::migrate(&direct_conns.remote, false).expect("remote migration");
        let conns = ConnectionManager::new(&cfg, Shutdown::new()).expect("connection manager");
        Env { conns, cfg, map, pair }
    }

    fn manager(&self) -> UploadSyncManager<'_> {
        UploadSyncManager::new(&self.conns, &self.cfg)
    }

    fn sync(&self) -> UploadSyncResult {
        self.manager().sync_readings(Duration::from_secs(3600))
    }

    fn local(&self) -> Client {
        self.pair.local.client()
    }

    fn remote(&self) -> Client {
        self.pair.remote.client()
    }

    /// Empties both sides (between quickcheck cases).
    fn truncate(&self) {
        self.local()
            .batch_execute("TRUNCATE meter_readings, sync_upload_batches, sync_quarantine")
            .expect("truncating local");
        self.remote()
            .batch_execute("TRUNCATE meter_readings, sync_upload_ledger")
            .expect("truncating remote");
    }
}

/// A reading as text, the way the tests write and compare them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Reading {
    meter: String,
    ts: String,
    value: String,
    unit: String,
    md: Option<String>,
}

impl Reading {
    fn new(meter: &str, ts: &str, value: &str, md: Option<&str>) -> Reading {
        Reading {
            meter: meter.into(),
            ts: ts.into(),
            value: value.into(),
            unit: "kWh".into(),
            md: md.map(Into::into),
        }
    }
}

fn pick<T: Clone>(g: &mut Gen, items: &[T]) -> T {
    g.choose(items).expect("non-empty choice").clone()
}

impl Arbitrary for Reading {
    fn arbitrary(g: &mut Gen) -> Reading {
        let meter = match u8::arbitrary(g) % 4 {
            0 => pick(
                g,
                &["o'brien", "back\\slash", "\"quoted\"", "ünï-çødé 😀", "tab\there", ""],
            )
            .to_string(),
            _ => format!("meter-{}", u8::arbitrary(g) % 5),
        };
        // Few distinct instants, so that ties on timestamp are common; now and then the extremes.
        let ts = match u8::arbitrary(g) % 16 {
            0 => "infinity".to_string(),
            1 => "-infinity".to_string(),
            2 => "0044-03-15 12:34:56.5 BC".to_string(),
            3 => "0001-01-01 00:00:00".to_string(),
            _ => format!(
                "2024-01-0{} 0{}:00:00.{:06}",
                1 + u8::arbitrary(g) % 3,
                u8::arbitrary(g) % 3,
                u32::arbitrary(g) % 3 * 250_000
            ),
        };
        let value = match u8::arbitrary(g) % 8 {
            0 => "NaN".to_string(),
            1 => "1.50".to_string(),
            2 => "-0.000001".to_string(),
            3 => {
                let digits: String = (0..1 + usize::arbitrary(g) % 80)
                    .map(|_| char::from(b'0' + u8::arbitrary(g) % 10))
                    .collect();
                format!("{}9{digits}.{digits}0", if bool::arbitrary(g) { "-" } else { "" })
            }
            _ => format!(
                "{}.{:0w$}",
                i32::arbitrary(g),
                u16::arbitrary(g),
                w = usize::from(u8::arbitrary(g) % 6)
            ),
        };
        let md = match u8::arbitrary(g) % 5 {
            0 => None,
            1 => Some("null".to_string()),
            2 => Some(r#"{"a": [1, null, {"b": null}], "ü": "😀", "q": "'\"\\"}"#.to_string()),
            _ => Some(
                serde_json::json!({ "k": String::arbitrary(g).replace('\0', ""), "n": i64::arbitrary(g) }).to_string(),
            ),
        };
        Reading {
            meter,
            ts,
            value,
            unit: pick(g, &["kWh", "m3", "°C"]).to_string(),
            md,
        }
    }
}

/// Inserts readings locally, in order (ids ascending); returns their ids.
fn insert(env: &Env, readings: &[Reading]) -> Vec<i64> {
    insert_into(&mut env.local(), readings)
}

fn insert_into(c: &mut Client, readings: &[Reading]) -> Vec<i64> {
    let m: Vec<&str> = readings.iter().map(|r| r.meter.as_str()).collect();
    let t: Vec<&str> = readings.iter().map(|r| r.ts.as_str()).collect();
    let v: Vec<&str> = readings.iter().map(|r| r.value.as_str()).collect();
    let u: Vec<&str> = readings.iter().map(|r| r.unit.as_str()).collect();
    let md: Vec<Option<&str>> = readings.iter().map(|r| r.md.as_deref()).collect();
    c.query(
        "INSERT INTO meter_readings (meter_id, timestamp, value, unit, metadata)
         SELECT m, t::timestamp, v::numeric, u, md::jsonb
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY AS x(m, t, v, u, md, o)
         ORDER BY o RETURNING id::int8",
        &[&m, &t, &v, &u, &md],
    )
    .expect("inserting readings")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Inserts `n` simple readings quickly (server-side), timestamps spread over a day.
fn insert_many(c: &mut Client, n: i64) {
    c.execute(
        "INSERT INTO meter_readings (meter_id, timestamp, value, unit, metadata)
         SELECT 'meter-' || (g % 50), timestamp '2024-01-01' + g * interval '1 second',
                (g % 1000)::numeric / 100, 'kWh', jsonb_build_object('seq', g)
         FROM generate_series(1, $1::int8) AS g",
        &[&n],
    )
    .expect("inserting many readings");
}

/// The readings of a database as a sorted multiset of column texts.
fn snapshot(c: &mut Client) -> Vec<Reading> {
    let mut v: Vec<Reading> = c
        .query(
            "SELECT meter_id::text, timestamp::text, value::text, unit::text, metadata::text FROM meter_readings",
            &[],
        )
        .expect("reading meter_readings")
        .iter()
        .map(|r| Reading {
            meter: r.get(0),
            ts: r.get(1),
            value: r.get(2),
            unit: r.get(3),
            md: r.get(4),
        })
        .collect();
    v.sort();
    v
}

/// Local ids in claim order.
fn local_ids_in_order(c: &mut Client) -> Vec<i64> {
    c.query("SELECT id::int8 FROM meter_readings ORDER BY timestamp, id", &[])
        .expect("local ids")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn ids_of(b: &ClaimedBatch) -> Vec<i64> {
    b.readings.iter().map(|r| r.id).collect()
}

/// Asserts exactly-once: the remote holds exactly `expected` (as a multiset), the local queue and the
/// bookkeeping are empty.
fn assert_exactly_once(env: &Env, expected: &[Reading]) {
    let mut expected = expected.to_vec();
    expected.sort();
    let remote = snapshot(&mut env.remote());
    assert_eq!(remote.len(), expected.len(), "remote row count");
    assert!(remote == expected, "remote readings differ from the originals");
    let mut l = env.local();
    assert_eq!(
        count(&mut l, "SELECT count(*) FROM meter_readings"),
        0,
        "local queue not empty"
    );
    assert_eq!(
        count(&mut l, "SELECT count(*) FROM sync_upload_batches"),
        0,
        "batches still claimed"
    );
}

/// Drains the queue cycle after cycle (at most 200) while every connection through `proxy` is cut again and
/// again, after a random pause in `pause_ms`. Asserts the last cycle succeeded; returns the number of cycles.
fn drain_while_cutting(env: &Env, proxy: &FaultProxy, pause_ms: std::ops::Range<u64>) -> usize {
    let mut g = Gen::new(1000);
    thread::scope(|s| {
        let drain = s.spawn(|| {
            let mut results = Vec::new();
            loop {
                let r = env.sync();
                let done = r.success && !r.backlog_remains;
                results.push(r);
                if done || results.len() > 200 {
                    return results;
                }
            }
        });
        while !drain.is_finished() {
            let pause = pause_ms.start + u64::arbitrary(&mut g) % (pause_ms.end - pause_ms.start);
            thread::sleep(Duration::from_millis(pause));
            proxy.cut_all();
        }
        let results = drain.join().expect("the drain thread panicked");
        assert!(results.last().is_some_and(|r| r.success), "{results:#?}");
        results.len()
    })
}

/// Runs sync_readings until it succeeds with an empty queue (at most `tries` times).
fn sync_until_done(env: &Env, tries: usize) -> Vec<UploadSyncResult> {
    let mut results = Vec::new();
    for _ in 0..tries {
        let r = env.sync();
        let done = r.success && !r.backlog_remains;
        results.push(r);
        if done {
            return results;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("the queue did not drain in {tries} cycles: {results:#?}");
}

thread_local! {
    static CTX: RefCell<Option<Env>> = const { RefCell::new(None) };
}

/// Runs a quickcheck property with `env` available to it through [`with_env`].
fn check<A: Testable>(env: Env, tests: u64, prop: A) {
    CTX.with(|c| *c.borrow_mut() = Some(env));
    QuickCheck::new()
        .tests(tests)
        .max_tests(tests * 10)
        .rng(Gen::new(60))
        .quickcheck(prop);
    CTX.with(|c| c.borrow_mut().take());
}

fn with_env<T>(f: impl FnOnce(&Env) -> T) -> T {
    CTX.with(|c| f(c.borrow().as_ref().expect("the property's Env")))
}
