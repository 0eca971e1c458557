//! Integration tests: upload (exactly-once store-and-forward), against real PostgreSQL.
//!
//! Properties 1-4 of the design (quickcheck, one database pair per property, truncated between cases), exact
//! value round trips, crash safety at every step boundary (by stopping between the protocol's steps and by
//! SIGKILL of a child process), link cuts, poison readings and the quarantine, a remote that rejects
//! everything, and a real outage of the remote server.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
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
use crate::support::pg::{self, DbPair, PgServer};
use crate::support::proxy::FaultProxy;

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

fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
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

/// A loopback port nobody listens on.
fn closed_port() -> u16 {
    let l = TcpListener::bind((pg::HOST, 0)).expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    port
}

// ----- Properties 1-4 -----

// **Feature: database-sync-process, Property 1: Batch size limit enforcement**
// Each claimed batch holds at most BATCH_SIZE readings, in (timestamp, id) order, and they are the oldest
// unclaimed ones; successive claims (with or without finishing in between) walk the queue without gap or
// overlap. The batch's bookkeeping row names exactly its readings, in order.
fn prop_claims_are_bounded_ordered_and_oldest_first(readings: Vec<Reading>, batch: u8, finish_mask: u32) -> TestResult {
    with_env(|env| {
        env.truncate();
        insert(env, &readings);
        let mut cfg = env.cfg.clone();
        cfg.batch_size = 1 + u32::from(batch % 25);
        let m = UploadSyncManager::new(&env.conns, &cfg);
        let mut l = env.local();
        let order = local_ids_in_order(&mut l);
        let mut cursor = None;
        let mut taken = Vec::new();
        for k in 0.. {
            let Some(b) = m.claim_batch(cursor.as_ref()).expect("claim") else {
                break;
            };
            let ids = ids_of(&b);
            if ids.is_empty() || ids.len() > cfg.batch_size as usize {
                return TestResult::error(format!(
                    "batch of {} readings with BATCH_SIZE {}",
                    ids.len(),
                    cfg.batch_size
                ));
            }
            let expected = &order[taken.len()..(taken.len() + ids.len()).min(order.len())];
            if ids != expected {
                return TestResult::error(format!(
                    "batch {k} is {ids:?}, expected the oldest unclaimed {expected:?}"
                ));
            }
            let row = l
                .query_one(
                    "SELECT reading_ids FROM sync_upload_batches WHERE batch_id = $1::text::uuid",
                    &[&b.batch_id],
                )
                .expect("batch row");
            if row.get::<_, Vec<i64>>(0) != ids {
                return TestResult::error("the bookkeeping row does not name the batch's readings in order");
            }
            // A full batch unless it is the last one.
            if ids.len() < cfg.batch_size as usize && taken.len() + ids.len() != order.len() {
                return TestResult::error("a short batch before the end of the queue");
            }
            taken.extend(ids);
            cursor = b.cursor();
            if finish_mask >> (k % 32) & 1 == 1 {
                m.finish_batch(&b.batch_id).expect("finish");
            }
        }
        TestResult::from_bool(taken == order)
    })
}

#[test]
fn prop_1_batch_size_limit() {
    check(
        Env::new(&[]),
        100,
        prop_claims_are_bounded_ordered_and_oldest_first as fn(Vec<Reading>, u8, u32) -> TestResult,
    );
}

// **Feature: database-sync-process, Property 2: Upload-delete atomicity**
// After a successful upload and finish, exactly the claimed ids are gone locally (every other reading is
// still there) and exactly the claimed readings are present remotely, with the batch in the ledger; a full
// drain then leaves the remote equal to the original queue as a multiset.
fn prop_upload_then_finish_moves_exactly_the_batch(readings: Vec<Reading>, batch: u8) -> TestResult {
    if readings.is_empty() {
        return TestResult::discard();
    }
    with_env(|env| {
        env.truncate();
        insert(env, &readings);
        let mut cfg = env.cfg.clone();
        cfg.batch_size = 1 + u32::from(batch % 40);
        let m = UploadSyncManager::new(&env.conns, &cfg);
        let (mut l, mut r) = (env.local(), env.remote());
        let before_ids = local_ids_in_order(&mut l);
        let before = snapshot(&mut l);
        let b = m.claim_batch(None).expect("claim").expect("a batch");
        let claimed: Vec<i64> = ids_of(&b);
        let claimed_rows: Vec<Reading> = l
            .query(
                "SELECT meter_id::text, timestamp::text, value::text, unit::text, metadata::text FROM meter_readings
                 WHERE id = ANY($1::int8[])",
                &[&claimed],
            )
            .expect("claimed rows")
            .iter()
            .map(|x| Reading {
                meter: x.get(0),
                ts: x.get(1),
                value: x.get(2),
                unit: x.get(3),
                md: x.get(4),
            })
            .collect();
        assert_eq!(
            m.upload_batch(&b).expect("upload"),
            UploadOutcome::Uploaded(claimed.len() as u64)
        );
        assert_eq!(m.finish_batch(&b.batch_id).expect("finish"), claimed.len() as u64);
        let after_ids = local_ids_in_order(&mut l);
        let expected_left: Vec<i64> = before_ids.iter().copied().filter(|i| !claimed.contains(i)).collect();
        if after_ids != expected_left {
            return TestResult::error("local readings other than exactly the claimed ones changed");
        }
        let mut want = claimed_rows;
        want.sort();
        if snapshot(&mut r) != want {
            return TestResult::error("the remote does not hold exactly the claimed readings");
        }
        let ledger: i32 = r
            .query_one(
                "SELECT row_count FROM sync_upload_ledger WHERE source_id = 'test-site' AND batch_id = $1::text::uuid",
                &[&b.batch_id],
            )
            .expect("ledger row")
            .get(0);
        if ledger as usize != claimed.len() {
            return TestResult::error("ledger row_count");
        }
        // The rest of the queue, by the drain.
        let res = m.sync_readings(Duration::from_secs(600));
        if !res.success || res.records_uploaded as usize != before.len() - claimed.len() {
            return TestResult::error(format!("drain: {res:?}"));
        }
        TestResult::from_bool(snapshot(&mut r) == before && snapshot(&mut l).is_empty())
    })
}

#[test]
fn prop_2_upload_delete_atomicity() {
    check(
        Env::new(&[]),
        100,
        prop_upload_then_finish_moves_exactly_the_batch as fn(Vec<Reading>, u8) -> TestResult,
    );
}

/// How the remote statement of Property 3 fails.
#[derive(Clone, Copy, Debug)]
enum Failure {
    /// A CHECK constraint rejects a value (SQLSTATE 23514, a data error).
    Check,
    /// A trigger raises an exception (P0001, not a data error).
    Trigger,
    /// A trigger raises numeric_value_out_of_range (22003) from the k-th row on.
    TriggerData,
}

impl Arbitrary for Failure {
    fn arbitrary(g: &mut Gen) -> Failure {
        pick(g, &[Failure::Check, Failure::Trigger, Failure::TriggerData])
    }
}

fn local_full_state(c: &mut Client) -> Vec<String> {
    let mut v: Vec<String> = c
        .query(
            "SELECT id || '|' || meter_id || '|' || timestamp::text || '|' || value::text || '|' || unit || '|' ||
                    coalesce(metadata::text, '<NULL>') || '|' || coalesce(created_at::text, '') FROM meter_readings",
            &[],
        )
        .expect("local state")
        .iter()
        .map(|r| r.get(0))
        .collect();
    v.sort();
    v
}

// **Feature: database-sync-process, Property 3: Transaction atomicity**
// When the remote statement fails at any row (a constraint, a trigger raising, a data error in the middle of
// the batch), no reading of the batch and no ledger row persist remotely, and nothing changes locally except
// the batch bookkeeping (the readings are still there, unchanged, and still claimed).
fn prop_failed_upload_leaves_nothing_behind(readings: Vec<Reading>, poison_at: usize, failure: Failure) -> TestResult {
    if readings.is_empty() {
        return TestResult::discard();
    }
    with_env(|env| {
        env.truncate();
        let mut readings = readings;
        let k = poison_at % readings.len();
        // Ties on timestamp would make the claim order differ from the insert order: poison by content.
        match failure {
            Failure::Check => readings[k].unit = "poison-unit".into(),
            Failure::Trigger => readings[k].meter = "poison-raise".into(),
            Failure::TriggerData => readings[k].meter = "poison-data".into(),
        }
        insert(env, &readings);
        let mut cfg = env.cfg.clone();
        cfg.batch_size = readings.len() as u32;
        let m = UploadSyncManager::new(&env.conns, &cfg);
        let (mut l, mut r) = (env.local(), env.remote());
        let before = local_full_state(&mut l);
        let b = m.claim_batch(None).expect("claim").expect("a batch");
        let err = match m.upload_batch(&b) {
            Ok(o) => return TestResult::error(format!("the upload succeeded: {o:?}")),
            Err(e) => e,
        };
        let expect_data = !matches!(failure, Failure::Trigger);
        if err.is_data_error() != expect_data || err.is_transient() {
            return TestResult::error(format!("misclassified ({failure:?}): {err}"));
        }
        let remote_rows = count(&mut r, "SELECT count(*) FROM meter_readings");
        let ledger_rows = count(&mut r, "SELECT count(*) FROM sync_upload_ledger");
        let after = local_full_state(&mut l);
        let still_claimed: Vec<i64> = l
            .query_one(
                "SELECT reading_ids FROM sync_upload_batches WHERE batch_id = $1::text::uuid",
                &[&b.batch_id],
            )
            .expect("batch row")
            .get(0);
        TestResult::from_bool(remote_rows == 0 && ledger_rows == 0 && after == before && still_claimed == ids_of(&b))
    })
}

#[test]
fn prop_3_transaction_atomicity() {
    let env = Env::new(&[]);
    env.remote()
        .batch_execute(
            "ALTER TABLE meter_readings ADD CONSTRAINT no_poison_unit CHECK (unit <> 'poison-unit');
             CREATE FUNCTION reject_poison() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.meter_id = 'poison-raise' THEN RAISE EXCEPTION 'rejected by trigger'; END IF;
               IF NEW.meter_id = 'poison-data' THEN
                 RAISE EXCEPTION 'value out of range' USING ERRCODE = 'numeric_value_out_of_range';
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER reject_poison BEFORE INSERT ON meter_readings FOR EACH ROW EXECUTE FUNCTION reject_poison();",
        )
        .expect("remote constraint and trigger");
    check(
        env,
        100,
        prop_failed_upload_leaves_nothing_behind as fn(Vec<Reading>, usize, Failure) -> TestResult,
    );
}

// **Feature: database-sync-process, Property 4: Data preservation on failure**
// With the remote unreachable, a cycle fails and every reading stays local, unchanged and unsynchronized
// (is_synchronized false), whatever the queue and batch size; the error names the remote and is never taken
// for a data error; nothing is quarantined.
fn prop_unreachable_remote_keeps_everything(readings: Vec<Reading>, batch: u8) -> TestResult {
    with_env(|env| {
        env.truncate();
        insert(env, &readings);
        let mut cfg = env.cfg.clone();
        cfg.batch_size = 1 + u32::from(batch % 30);
        let m = UploadSyncManager::new(&env.conns, &cfg);
        let mut l = env.local();
        let before = local_full_state(&mut l);
        let res = m.sync_readings(Duration::from_secs(60));
        let after = local_full_state(&mut l);
        let unsynced = count(
            &mut l,
            "SELECT count(*) FROM meter_readings WHERE is_synchronized IS NOT TRUE",
        );
        let ok = if readings.is_empty() {
            res.success && res.records_uploaded == 0
        } else {
            !res.success
                && res.records_uploaded == 0
                && res.records_deleted == 0
                && res.records_quarantined == 0
                && res
                    .error
                    .as_deref()
                    .is_some_and(|e| e.contains(&format!("{}:{}", cfg.remote.host, cfg.remote.port)))
        };
        let direct = m.upload_batch(&ClaimedBatch {
            batch_id: "00000000-0000-0000-0000-000000000001".into(),
            readings: vec![],
        });
        let classified = matches!(&direct, Err(e) if e.is_transient() && !e.is_data_error());
        TestResult::from_bool(
            ok && classified
                && after == before
                && unsynced == readings.len() as i64
                && count(&mut l, "SELECT count(*) FROM sync_quarantine") == 0,
        )
    })
}

#[test]
fn prop_4_data_preservation_on_failure() {
    let port = closed_port().to_string();
    let pair = DbPair::new();
    // The remote is migrated directly, then reached through a port nobody listens on.
    let env = Env::on(
        pair,
        Some(port.parse().expect("port")),
        &[
            ("MAX_CONNECTION_RETRIES", "0"),
            ("MAX_QUERY_RETRIES", "1"),
            ("RETRY_BASE_DELAY_MS", "1"),
            // r2d2 keeps trying for this long before a checkout fails.
            ("DB_CONNECTION_TIMEOUT_MS", "20"),
        ],
    );
    check(
        env,
        100,
        prop_unreachable_remote_keeps_everything as fn(Vec<Reading>, u8) -> TestResult,
    );
}

// ----- Exact values -----

#[test]
fn exact_values_round_trip_across_time_zones() {
    let pair = DbPair::new();
    // Three different zones: local server session, remote server session, and this test's sessions (UTC).
    pair.local
        .client()
        .batch_execute(&format!(
            "ALTER DATABASE {} SET timezone = 'America/New_York'",
            pair.local.name()
        ))
        .expect("tz");
    pair.remote
        .client()
        .batch_execute(&format!(
            "ALTER DATABASE {} SET timezone = 'Asia/Tokyo'",
            pair.remote.name()
        ))
        .expect("tz");
    let env = Env::on(pair, None, &[("BATCH_SIZE", "7")]);
    let thousand_digits: String = "1234567890".repeat(100);
    let fraction = format!("0.{}", "9876543210".repeat(50));
    let values = [
        thousand_digits.as_str(),
        fraction.as_str(),
        "1e-300",
        "NaN",
        "1.50",
        "1.5",
        "-0.000",
        "0",
        "-123456789012345678901234567890.000000000000000000001",
    ];
    let times = [
        "2024-02-29 23:59:59.999999",
        "2024-03-31 02:30:00.000001",
        "infinity",
        "-infinity",
        "0001-01-01 00:00:00",
        "0044-03-15 12:00:00 BC",
        "4713-01-01 00:00:00 BC",
        "294276-12-31 23:59:59.999999",
    ];
    let metas: [Option<&str>; 7] = [
        None,
        Some("null"),
        Some(r#"{"a": null, "b": [null, {"c": null}], "ü": "日本語 😀", "e": "\u00e9"}"#),
        Some(r#""just a string""#),
        Some("[]"),
        Some(r#"{"big": 123456789012345678901234567890.123456789, "tiny": 1e-300}"#),
        Some(r#"{"quote": "it's \"q\" \\ back"}"#),
    ];
    let meters = [
        "o'brien",
        "back\\slash",
        "\"double\"",
        "semi;colon --",
        "",
        "new\nline",
        "ünïcødé",
    ];
    let mut readings = Vec::new();
    for (i, v) in values.iter().enumerate() {
        for (j, t) in times.iter().enumerate() {
            let md = metas[(i + j) % metas.len()];
            readings.push(Reading::new(meters[(i * 3 + j) % meters.len()], t, v, md));
        }
    }
    // Identical readings are each their own reading.
    let twin = Reading::new("twin", "2024-05-05 05:05:05.5", "5.50", Some(r#"{"same": true}"#));
    readings.extend([twin.clone(), twin.clone(), twin]);
    insert(&env, &readings);
    let original = snapshot(&mut env.local());
    let r = env.sync();
    assert!(r.success, "{r:?}");
    assert_eq!(r.records_uploaded, readings.len() as u64);
    assert_eq!(r.records_deleted, readings.len() as u64);
    assert_exactly_once(&env, &original);
    // Spot checks in the remote's own zone and datestyle-independent forms.
    let mut remote = env.remote();
    let n: i64 = remote
        .query_one(
            "SELECT count(*) FROM meter_readings WHERE value::text = $1 AND scale(value) = 2",
            &[&"1.50"],
        )
        .expect("1.50")
        .get(0);
    assert_eq!(n, times.len() as i64, "1.50 keeps its scale");
    let twins = count(
        &mut remote,
        "SELECT count(*) FROM meter_readings WHERE meter_id = 'twin'",
    );
    assert_eq!(twins, 3);
    let nulls = count(
        &mut remote,
        "SELECT count(*) FROM meter_readings WHERE metadata IS NULL",
    );
    let json_nulls = count(
        &mut remote,
        "SELECT count(*) FROM meter_readings WHERE metadata = 'null'::jsonb",
    );
    let expect_nulls = readings.iter().filter(|r| r.md.is_none()).count() as i64;
    let expect_json_nulls = readings.iter().filter(|r| r.md.as_deref() == Some("null")).count() as i64;
    assert_eq!(
        (nulls, json_nulls),
        (expect_nulls, expect_json_nulls),
        "SQL NULL and JSON null stay distinct"
    );
    let ordered: Vec<String> = remote
        .query("SELECT timestamp::text FROM meter_readings ORDER BY id", &[])
        .expect("remote order")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut sorted_by_time: Vec<String> = env
        .local()
        .query(
            "SELECT t::timestamp::text FROM unnest($1::text[]) AS t ORDER BY t::timestamp",
            &[&readings.iter().map(|r| r.ts.clone()).collect::<Vec<_>>()],
        )
        .expect("sorted times")
        .iter()
        .map(|r| r.get(0))
        .collect();
    sorted_by_time.dedup();
    let mut seen = ordered.clone();
    seen.dedup();
    assert_eq!(seen, sorted_by_time, "remote insertion order follows timestamp order");
}

// ----- Crash safety -----

/// How far the manual protocol run gets before it "crashes".
#[derive(Clone, Debug)]
struct CrashPlan {
    readings: Vec<Reading>,
    batch: u32,
    /// Protocol steps (claim, upload, finish, claim, ...) executed before the crash.
    steps: usize,
    /// Finish with the merged finish-and-claim statement (as the drain does).
    merged: bool,
    /// Run the steps as the pipelined drain does (the upload of batch k and the local finish of k-1 with the
    /// claim of k+1 side by side, so two batches are pending); bit i of `order` says which of the two of round
    /// i completes first.
    pipelined: bool,
    order: u64,
}

impl Arbitrary for CrashPlan {
    fn arbitrary(g: &mut Gen) -> CrashPlan {
        let readings: Vec<Reading> = Arbitrary::arbitrary(g);
        CrashPlan {
            readings,
            batch: 1 + u32::arbitrary(g) % 12,
            steps: usize::arbitrary(g) % 40,
            merged: bool::arbitrary(g),
            pipelined: bool::arbitrary(g),
            order: u64::arbitrary(g),
        }
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = CrashPlan>> {
        let me = self.clone();
        Box::new(
            self.readings
                .shrink()
                .map(move |readings| CrashPlan { readings, ..me.clone() }),
        )
    }
}

/// Runs claim / upload / finish (or finish-and-claim) by hand for `steps` steps, then "crashes" (drops
/// everything in memory). Returns the last step completed.
fn run_until_crash(m: &UploadSyncManager<'_>, steps: usize, merged: bool) -> &'static str {
    #[derive(PartialEq)]
    enum Next {
        Claim,
        Upload,
        Finish,
    }
    let mut cursor = None;
    let mut last = "nothing";
    let mut batch: Option<ClaimedBatch> = None;
    let mut next = Next::Claim;
    for _ in 0..steps {
        match next {
            Next::Claim => match m.claim_batch(cursor.as_ref()).expect("claim") {
                Some(b) => {
                    cursor = b.cursor();
                    batch = Some(b);
                    last = "claim";
                    next = Next::Upload;
                }
                None => break,
            },
            Next::Upload => {
                m.upload_batch(batch.as_ref().expect("claimed")).expect("upload");
                last = "upload";
                next = Next::Finish;
            }
            Next::Finish => {
                let b = batch.take().expect("claimed");
                match (&cursor, merged) {
                    (Some(after), true) => {
                        let (_, claimed) = m.finish_and_claim_batch(&b.batch_id, after).expect("finish and claim");
                        last = "finish-and-claim";
                        next = Next::Claim;
                        if let Some(c) = claimed {
                            cursor = c.cursor();
                            batch = Some(c);
                            next = Next::Upload;
                        }
                    }
                    _ => {
                        m.finish_batch(&b.batch_id).expect("finish");
                        last = "finish";
                        next = Next::Claim;
                    }
                }
            }
        }
    }
    last
}

/// The pipelined drain's order of steps, by hand: claim b1; then per round the upload of b(k) and the local
/// finish of b(k-1) with the claim of b(k+1), in the order `order` gives; at the end of the queue, the finish
/// of the last batch. "Crashes" after `steps` steps. Returns the last step completed.
fn run_pipelined_until_crash(m: &UploadSyncManager<'_>, steps: usize, order: u64) -> &'static str {
    let mut done = 0usize;
    let mut last = "nothing";
    let mut step = |name: &'static str| {
        if done >= steps {
            return false;
        }
        done += 1;
        last = name;
        true
    };
    if !step("claim") {
        return last;
    }
    let mut current = m.claim_batch(None).expect("claim");
    let mut uploaded: Option<ClaimedBatch> = None;
    let mut round = 0u32;
    while let Some(b) = current.take() {
        let after = b.cursor().expect("a claimed batch has a key");
        let upload_first = order.rotate_right(round) & 1 == 1;
        round += 1;
        let mut next = None;
        for local_turn in [!upload_first, upload_first] {
            if local_turn {
                if !step("local finish-and-claim") {
                    return last;
                }
                next = match uploaded.take() {
                    Some(prev) => {
                        m.finish_and_claim_batch(&prev.batch_id, &after)
                            .expect("finish and claim")
                            .1
                    }
                    None => m.claim_batch(Some(&after)).expect("claim"),
                };
            } else {
                if !step("upload") {
                    return last;
                }
                m.upload_batch(&b).expect("upload");
            }
        }
        uploaded = Some(b);
        current = next;
    }
    if let Some(prev) = uploaded {
        if step("finish") {
            m.finish_batch(&prev.batch_id).expect("finish");
        }
    }
    last
}

// A crash after any step of the protocol (after claim; after the remote commit and before the local delete;
// after the delete; with one batch uploaded and the next claimed, as the pipelined drain has them), followed
// by a restart, delivers every reading exactly once.
fn prop_crash_at_any_step_boundary_is_exactly_once(plan: CrashPlan) -> TestResult {
    with_env(|env| {
        env.truncate();
        insert(env, &plan.readings);
        let original = snapshot(&mut env.local());
        let mut cfg = env.cfg.clone();
        cfg.batch_size = plan.batch;
        let m = UploadSyncManager::new(&env.conns, &cfg);
        let stopped_after = if plan.pipelined {
            run_pipelined_until_crash(&m, plan.steps, plan.order)
        } else {
            run_until_crash(&m, plan.steps, plan.merged)
        };
        // The restart: a fresh manager (nothing in memory survives).
        let restarted = UploadSyncManager::new(&env.conns, &cfg).sync_readings(Duration::from_secs(600));
        if !restarted.success {
            return TestResult::error(format!("restart after {stopped_after} failed: {restarted:?}"));
        }
        let remote = snapshot(&mut env.remote());
        let mut l = env.local();
        let left = count(&mut l, "SELECT count(*) FROM meter_readings")
            + count(&mut l, "SELECT count(*) FROM sync_upload_batches");
        let out_of_order = count(
            &mut env.remote(),
            "SELECT count(*) FROM (SELECT timestamp < lag(timestamp) OVER (ORDER BY id) AS back \
             FROM meter_readings) AS x WHERE back",
        );
        if out_of_order != 0 {
            return TestResult::error(format!(
                "after a crash after {stopped_after}: {out_of_order} remote readings inserted before an older one"
            ));
        }
        if remote != original || left != 0 {
            return TestResult::error(format!(
                "after a crash after {stopped_after}: remote {} rows, original {}, {left} left locally",
                remote.len(),
                original.len()
            ));
        }
        TestResult::passed()
    })
}

#[test]
fn crash_at_every_step_boundary_is_exactly_once() {
    check(
        Env::new(&[]),
        100,
        prop_crash_at_any_step_boundary_is_exactly_once as fn(CrashPlan) -> TestResult,
    );
}

#[test]
fn an_already_uploaded_batch_is_recognized_by_the_ledger_before_any_reading_is_inserted() {
    let env = Env::new(&[("BATCH_SIZE", "10")]);
    // A remote unique constraint on the readings themselves: a second insert of the same rows would fail on it
    // (a data error) if the ledger were not checked first.
    env.remote()
        .batch_execute("ALTER TABLE meter_readings ADD CONSTRAINT one_per_instant UNIQUE (meter_id, timestamp)")
        .expect("unique constraint");
    let readings: Vec<Reading> = (0..10)
        .map(|i| Reading::new("m", &format!("2024-01-01 00:00:{i:02}"), &i.to_string(), None))
        .collect();
    insert(&env, &readings);
    let original = snapshot(&mut env.local());
    let m = env.manager();
    let b = m.claim_batch(None).expect("claim").expect("batch");
    assert_eq!(m.upload_batch(&b).expect("first upload"), UploadOutcome::Uploaded(10));
    // The acknowledgement was "lost": the same batch again.
    assert_eq!(
        m.upload_batch(&b).expect("second upload"),
        UploadOutcome::AlreadyPresent
    );
    let r = env.sync();
    assert!(r.success, "{r:?}");
    assert_eq!(
        (r.records_uploaded, r.records_deleted, r.records_quarantined),
        (0, 10, 0)
    );
    assert_exactly_once(&env, &original);
}

#[test]
fn killed_child_process_then_once_again_is_exactly_once() {
    let env = Env::new(&[]);
    let mut l = env.local();
    let mut g = Gen::new(1000);
    insert_many(&mut l, 30_000);
    let original = snapshot(&mut l);
    for round in 0..4 {
        let before = count(&mut l, "SELECT count(*) FROM meter_readings");
        let mut daemon = Daemon::spawn(&["once"], &env.map);
        // A random moment once the drain is under way (or right at the start in round 0).
        if round > 0 {
            crate::support::wait_until(Duration::from_secs(10), || {
                count(&mut l, "SELECT count(*) FROM meter_readings") < before || !daemon.is_running()
            });
        }
        thread::sleep(Duration::from_millis(u64::arbitrary(&mut g) % 300));
        daemon.kill();
        let left = count(&mut l, "SELECT count(*) FROM meter_readings");
        eprintln!("round {round}: killed with {left} readings left");
    }
    let out = run_command(&["once"], &env.map);
    assert!(
        out.status.success(),
        "once after the kills: {}\n{}",
        out.stdout,
        out.stderr
    );
    assert_exactly_once(&env, &original);
}

// ----- Faults -----

#[test]
fn link_cuts_during_a_long_drain_are_exactly_once() {
    let pair = DbPair::new();
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], pair.remote.port())));
    let env = Env::on(
        pair,
        Some(proxy.port()),
        &[("MAX_QUERY_RETRIES", "3"), ("RETRY_BASE_DELAY_MS", "5")],
    );
    let mut l = env.local();
    insert_many(&mut l, 20_000);
    let original = snapshot(&mut l);
    let cycles = drain_while_cutting(&env, &proxy, 5..65);
    eprintln!(
        "drained through {cycles} cycle(s) and {} connections",
        proxy.connections_opened()
    );
    assert_exactly_once(&env, &original);
}

// ----- Several batches in flight (UPLOAD_BATCHES_IN_FLIGHT > 1) -----

/// Remote readings whose timestamp is older than that of a reading inserted before them (by remote id).
fn remote_out_of_order(env: &Env) -> i64 {
    count(
        &mut env.remote(),
        "SELECT count(*) FROM (SELECT timestamp < lag(timestamp) OVER (ORDER BY id) AS back \
         FROM meter_readings) AS x WHERE back",
    )
}

// With 2-4 batches in flight on as many connections, and poison readings among them (so that batches fail
// while later ones are in flight and must be sent again), every good reading arrives exactly once, the poison
// ones are quarantined, and remote insertion order still follows timestamp order.
fn prop_batches_in_flight_arrive_once_and_in_order(
    readings: Vec<Reading>,
    batch: u8,
    width: u8,
    poison_mask: u64,
) -> TestResult {
    with_env(|env| {
        env.truncate();
        env.remote()
            .batch_execute("TRUNCATE sync_upload_chain")
            .expect("truncating the chain");
        insert(env, &readings);
        // Poison by position in claim order, every fourth reading and the last one good: the control readings
        // of a rejected batch (the oldest 8 queued outside it) then always include a good one (a batch rejected
        // along with every control reading is a storm, the remote rejecting everything, which is not what this
        // property is about).
        let n = readings.len() as i64;
        let ranks: Vec<i64> = (1..n)
            .filter(|&rank| rank % 4 != 0 && poison_mask.rotate_right(rank as u32) & 0b11 == 0b11)
            .collect();
        env.local()
            .execute(
                "UPDATE meter_readings SET unit = 'poison' WHERE id IN (SELECT id FROM \
                 (SELECT id, row_number() OVER (ORDER BY timestamp, id) AS rank FROM meter_readings) AS r \
                 WHERE rank = ANY($1))",
                &[&ranks],
            )
            .expect("poisoning");
        let poison = ranks.len() as u64;
        let original = snapshot(&mut env.local());
        let mut cfg = env.cfg.clone();
        cfg.batch_size = 1 + u32::from(batch % 7);
        cfg.upload_batches_in_flight = 2 + u32::from(width % 3);
        let r = UploadSyncManager::new(&env.conns, &cfg).sync_readings(Duration::from_secs(600));
        if !r.success || r.records_quarantined != poison {
            return TestResult::error(format!("{r:?}, {poison} poison readings"));
        }
        let good: Vec<Reading> = original.into_iter().filter(|r| r.unit != "poison").collect();
        let remote = snapshot(&mut env.remote());
        let left = count(&mut env.local(), "SELECT count(*) FROM meter_readings")
            + count(&mut env.local(), "SELECT count(*) FROM sync_upload_batches");
        let out_of_order = remote_out_of_order(env);
        if remote != good || left != 0 || out_of_order != 0 {
            return TestResult::error(format!(
                "remote {} readings (want {}), {left} left locally, {out_of_order} out of order; {r:?}",
                remote.len(),
                good.len()
            ));
        }
        TestResult::passed()
    })
}

#[test]
fn batches_in_flight_arrive_once_and_in_order() {
    let env = Env::new(&[("UPLOAD_BATCHES_IN_FLIGHT", "4")]);
    env.remote()
        .batch_execute("ALTER TABLE meter_readings ADD CONSTRAINT no_poison CHECK (unit <> 'poison')")
        .expect("constraint");
    check(
        env,
        100,
        prop_batches_in_flight_arrive_once_and_in_order as fn(Vec<Reading>, u8, u8, u64) -> TestResult,
    );
}

/// Runs one of the remote upload statements for a batch of two readings at `ts` of `site`; `before` is the
/// ninth parameter of UPLOAD_AFTER. Returns the readings inserted.
fn run_upload(
    c: &mut impl postgres::GenericClient,
    statement: &str,
    site: &str,
    id: &str,
    ts: &str,
    before: &str,
) -> u64 {
    let n = 2i32;
    let (m, t, v, u, md) = (
        vec!["m".to_string(); 2],
        vec![ts.to_string(); 2],
        vec!["1".to_string(); 2],
        vec!["kWh".to_string(); 2],
        vec![None::<String>; 2],
    );
    use postgres::types::Type;
    let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![&site, &id, &n, &m, &t, &v, &u, &md];
    let mut types = vec![Type::TEXT, Type::TEXT, Type::INT4];
    types.extend([Type::TEXT_ARRAY; 5]);
    if statement == upload::sql::UPLOAD_AFTER {
        params.push(&before);
        types.push(Type::TEXT);
    }
    let st = c.prepare_typed(statement, &types).expect("prepare");
    c.execute(&st, &params).expect("upload statement")
}

// The chain statements themselves, on the remote: a batch sent after another waits for it (row lock), goes in
// after it when it commits, and inserts nothing when it rolls back or was never there.
#[test]
fn a_batch_in_flight_goes_in_only_after_the_batch_before_it() {
    use upload::sql::{UPLOAD_AFTER, UPLOAD_LEAD};
    let env = Env::new(&[]);
    let (a, b, c, d) = (
        "00000000-0000-0000-0000-00000000000a",
        "00000000-0000-0000-0000-00000000000b",
        "00000000-0000-0000-0000-00000000000c",
        "00000000-0000-0000-0000-00000000000d",
    );
    let mut r1 = env.remote();
    for (site, commit) in [("commits", true), ("rolls-back", false)] {
        assert_eq!(run_upload(&mut r1, UPLOAD_LEAD, site, a, "2024-01-01 00:00:00", ""), 2);
        // Not after the head: nothing, not even a ledger row.
        assert_eq!(run_upload(&mut r1, UPLOAD_AFTER, site, b, "2024-01-01 00:00:01", c), 0);
        // C after A, in a transaction left open; D after C waits for it.
        let mut holder = env.remote();
        let mut tx = holder.transaction().expect("begin");
        assert_eq!(run_upload(&mut tx, UPLOAD_AFTER, site, c, "2024-01-01 00:00:02", a), 2);
        let mut r2 = env.remote();
        let site_owned = site.to_string();
        let waiting =
            thread::spawn(move || run_upload(&mut r2, UPLOAD_AFTER, &site_owned, d, "2024-01-01 00:00:03", c));
        thread::sleep(Duration::from_millis(300));
        assert!(!waiting.is_finished(), "the batch after waits for the one before it");
        if commit {
            tx.commit().expect("commit");
            assert_eq!(waiting.join().expect("thread"), 2, "in, after its predecessor");
        } else {
            tx.rollback().expect("rollback");
            assert_eq!(waiting.join().expect("thread"), 0, "nothing without its predecessor");
        }
        let head: String = r1
            .query_one(
                "SELECT head::text FROM sync_upload_chain WHERE source_id = $1",
                &[&site],
            )
            .expect("head")
            .get(0);
        assert_eq!(head, if commit { d } else { a });
    }
    // commits: A, C, D; rolls-back: A. Nothing else, in order.
    assert_eq!(count(&mut r1, "SELECT count(*) FROM meter_readings"), 8);
    assert_eq!(count(&mut r1, "SELECT count(*) FROM sync_upload_ledger"), 4);
    let order: Vec<String> = r1
        .query(
            "SELECT timestamp::text FROM meter_readings WHERE id > (SELECT min(id) + 1 FROM meter_readings) \
             AND id < (SELECT max(id) - 1 FROM meter_readings) ORDER BY id",
            &[],
        )
        .expect("order")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        order,
        [
            "2024-01-01 00:00:02",
            "2024-01-01 00:00:02",
            "2024-01-01 00:00:03",
            "2024-01-01 00:00:03"
        ]
    );
}

// Through a link with latency (so uploads really overlap) that is cut again and again: exactly once, in order,
// and the chain head names the last batch uploaded.
#[test]
fn batches_in_flight_through_a_slow_link_that_is_cut() {
    let pair = DbPair::new();
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], pair.remote.port())));
    proxy.set_latency(Duration::from_millis(2));
    let env = Env::on(
        pair,
        Some(proxy.port()),
        &[
            ("UPLOAD_BATCHES_IN_FLIGHT", "4"),
            ("BATCH_SIZE", "50"),
            ("MAX_QUERY_RETRIES", "3"),
            ("RETRY_BASE_DELAY_MS", "5"),
        ],
    );
    let mut l = env.local();
    insert_many(&mut l, 6_000);
    let original = snapshot(&mut l);
    drain_while_cutting(&env, &proxy, 20..100);
    assert_exactly_once(&env, &original);
    assert_eq!(
        remote_out_of_order(&env),
        0,
        "remote insertion order follows timestamp order"
    );
    // The head is a batch of the ledger.
    let head_in_ledger = count(
        &mut env.remote(),
        "SELECT count(*) FROM sync_upload_chain c JOIN sync_upload_ledger l USING (source_id) \
         WHERE l.batch_id = c.head",
    );
    assert_eq!(head_in_ledger, 1);
}

#[test]
fn connection_errors_are_never_data_errors() {
    let pair = DbPair::new();
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], pair.remote.port())));
    let env = Env::on(
        pair,
        Some(proxy.port()),
        &[("DB_STATEMENT_TIMEOUT_MS", "1500"), ("BATCH_SIZE", "5")],
    );
    // A statement-level trigger that makes the remote statement take a while.
    env.remote()
        .batch_execute(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.6); RETURN NULL; END $$;
             CREATE TRIGGER slow AFTER INSERT ON meter_readings FOR EACH STATEMENT EXECUTE FUNCTION slow();",
        )
        .expect("slow trigger");
    let readings: Vec<Reading> = (0..15)
        .map(|i| Reading::new("m", &format!("2024-01-01 00:00:{i:02}"), &i.to_string(), None))
        .collect();
    insert(&env, &readings);
    let original = snapshot(&mut env.local());
    let m = env.manager();
    let mut admin = env.remote();

    // 1. The link is cut in the middle of the statement.
    let b1 = m.claim_batch(None).expect("claim").expect("batch");
    let e1 = thread::scope(|s| {
        let t = s.spawn(|| m.upload_batch(&b1));
        thread::sleep(Duration::from_millis(200));
        proxy.cut_all();
        t.join().expect("upload thread")
    })
    .expect_err("a cut link fails the statement");
    // 2. The server ends the session (pg_terminate_backend: SQLSTATE 57P01).
    // Each case claims the next readings (b1 stays pending with an unknown outcome: recovery settles it).
    let b2 = m.claim_batch(b1.cursor().as_ref()).expect("claim").expect("batch");
    let e2 = thread::scope(|s| {
        let t = s.spawn(|| m.upload_batch(&b2));
        thread::sleep(Duration::from_millis(200));
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = 'sync-process'",
                &[],
            )
            .expect("terminate");
        t.join().expect("upload thread")
    })
    .expect_err("a terminated session fails the statement");
    // 3. The statement times out (57014).
    admin.batch_execute("CREATE OR REPLACE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(3); RETURN NULL; END $$").expect("slower");
    let b3 = m.claim_batch(b2.cursor().as_ref()).expect("claim").expect("batch");
    // (A pooled connection that the termination above killed may answer first with "connection closed".)
    let mut e3 = m
        .upload_batch(&b3)
        .expect_err("a statement timeout fails the statement");
    for _ in 0..3 {
        if e3.sqlstate().is_some() {
            break;
        }
        assert!(e3.is_transient() && !e3.is_data_error(), "{e3}");
        e3 = m
            .upload_batch(&b3)
            .expect_err("a statement timeout fails the statement");
    }
    // 4. Nobody listens.
    proxy.set_refuse(true);
    let e4 = m.upload_batch(&b3).expect_err("a refused connection fails");
    proxy.set_refuse(false);
    for (what, e) in [("cut", &e1), ("terminated", &e2), ("timeout", &e3), ("refused", &e4)] {
        assert!(!e.is_data_error(), "{what}: taken for a data error: {e}");
        assert!(e.is_transient(), "{what}: not transient: {e}");
        assert_ne!(e.kind(), "data", "{what}");
    }
    assert_eq!(e3.sqlstate(), Some("57014"), "{e3}");
    admin
        .batch_execute("DROP TRIGGER slow ON meter_readings")
        .expect("drop trigger");
    let r = sync_until_done(&env, 5);
    assert!(r.iter().all(|r| r.records_quarantined == 0), "{r:#?}");
    assert_exactly_once(&env, &original);
}

#[test]
fn outage_of_the_remote_server_and_recovery() {
    let remote_server = PgServer::start();
    let pair = DbPair::on(PgServer::shared(), &remote_server);
    let env = Env::on(
        pair,
        None,
        &[
            ("MAX_CONNECTION_RETRIES", "1"),
            ("RETRY_BASE_DELAY_MS", "10"),
            ("DB_CONNECTION_TIMEOUT_MS", "500"),
        ],
    );
    let mut l = env.local();
    insert_many(&mut l, 3_000);
    let original = snapshot(&mut l);

    // Down before the cycle: it fails, everything stays local.
    remote_server.stop();
    let r = env.sync();
    assert!(!r.success && r.records_uploaded == 0, "{r:?}");
    assert!(
        r.error.as_deref().is_some_and(|e| e.contains("remote database")),
        "{r:?}"
    );
    assert_eq!(count(&mut l, "SELECT count(*) FROM meter_readings"), 3_000);
    remote_server.start_again();

    // Down in the middle of a drain (fast shutdown terminates the sessions), then back.
    insert_many(&mut l, 20_000);
    let original_all = snapshot(&mut l);
    let _ = original;
    thread::scope(|s| {
        let t = s.spawn(|| env.sync());
        thread::sleep(Duration::from_millis(150));
        remote_server.stop();
        let during = t.join().expect("drain thread");
        eprintln!("during the outage: {during:?}");
        thread::sleep(Duration::from_millis(200));
        remote_server.start_again();
    });
    let results = sync_until_done(&env, 10);
    assert!(results.last().is_some_and(|r| r.success));
    assert_exactly_once(&env, &original_all);
}

// ----- Poison -----

#[test]
fn poison_readings_are_quarantined_and_the_others_arrive() {
    let env = Env::new(&[("BATCH_SIZE", "100")]);
    env.remote()
        .batch_execute("ALTER TABLE meter_readings ADD CONSTRAINT no_thirteen CHECK (value <> 13)")
        .expect("constraint");
    let mut g = Gen::new(1000);
    let poison: Vec<usize> = vec![usize::arbitrary(&mut g) % 250, 250 + usize::arbitrary(&mut g) % 50];
    let readings: Vec<Reading> = (0..300)
        .map(|i| {
            let v = if poison.contains(&i) {
                "13".to_string()
            } else {
                format!("{}.5", i)
            };
            Reading::new(
                &format!("meter-{}", i % 7),
                &format!("2024-01-01 00:{:02}:{:02}", i / 60, i % 60),
                &v,
                None,
            )
        })
        .collect();
    let ids = insert(&env, &readings);
    let original = snapshot(&mut env.local());
    let r = env.sync();
    assert!(r.success, "{r:?}");
    assert_eq!(
        (r.records_uploaded, r.records_deleted, r.records_quarantined),
        (298, 298, 2),
        "{r:?}"
    );
    assert_eq!(count(&mut env.remote(), "SELECT count(*) FROM meter_readings"), 298);
    assert_eq!(
        count(
            &mut env.remote(),
            "SELECT count(*) FROM meter_readings WHERE value = 13"
        ),
        0
    );
    let q = quarantine::list(&env.conns.local).expect("list");
    let mut want_ids: Vec<i64> = poison.iter().map(|&i| ids[i]).collect();
    want_ids.sort();
    assert_eq!(q.iter().map(|x| x.id).collect::<Vec<_>>(), want_ids);
    for x in &q {
        assert!(x.error.contains("no_thirteen"), "{x:?}");
        assert_eq!(x.sqlstate.as_deref(), Some("23514"));
        assert_eq!(x.value, "13");
    }
    assert_eq!(env.manager().quarantined_count().expect("count"), 2);
    assert_eq!(env.manager().queue_size().expect("queue"), 0);

    // The operator fixes the remote and retries: the readings go through, with their ids and values.
    env.remote()
        .batch_execute("ALTER TABLE meter_readings DROP CONSTRAINT no_thirteen")
        .expect("drop");
    assert_eq!(quarantine::retry(&env.conns.local, &[]).expect("retry"), 2);
    assert_eq!(count(&mut env.local(), "SELECT count(*) FROM sync_quarantine"), 0);
    let back: Vec<i64> = env
        .local()
        .query("SELECT id::int8 FROM meter_readings ORDER BY id", &[])
        .expect("ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(back, want_ids);
    let r = env.sync();
    assert!(r.success && r.records_uploaded == 2, "{r:?}");
    assert_exactly_once(&env, &original);
}

#[test]
fn a_single_poison_reading_in_a_batch_of_one() {
    let env = Env::new(&[("BATCH_SIZE", "1")]);
    env.remote()
        .batch_execute("ALTER TABLE meter_readings ADD CONSTRAINT short_unit CHECK (length(unit) < 5)")
        .expect("constraint");
    let mut readings: Vec<Reading> = (0..3)
        .map(|i| Reading::new("m", &format!("2024-01-01 00:00:0{i}"), "1", None))
        .collect();
    readings[1].unit = "too-long-unit".into();
    insert(&env, &readings);
    let r = env.sync();
    assert!(
        r.success && r.records_uploaded == 2 && r.records_quarantined == 1,
        "{r:?}"
    );
    assert_eq!(
        quarantine::list(&env.conns.local).expect("list")[0].unit,
        "too-long-unit"
    );
}

#[test]
fn a_remote_that_rejects_every_reading_is_not_a_poison_storm() {
    let env = Env::new(&[("BATCH_SIZE", "4")]);
    // A new NOT NULL column without default: every row is rejected with a data error (23502).
    env.remote()
        .batch_execute("ALTER TABLE meter_readings ADD COLUMN site TEXT NOT NULL")
        .expect("alter");
    let readings: Vec<Reading> = (0..10)
        .map(|i| Reading::new("m", &format!("2024-01-01 00:00:{i:02}"), &i.to_string(), None))
        .collect();
    insert(&env, &readings);
    let original = snapshot(&mut env.local());
    for _ in 0..2 {
        let r = env.sync();
        assert!(!r.success, "{r:?}");
        assert_eq!((r.records_uploaded, r.records_quarantined), (0, 0), "{r:?}");
        let e = r.error.as_deref().unwrap_or("");
        assert!(
            e.contains("rejects every one of the 4 readings") && e.contains("site"),
            "{e}"
        );
        assert_eq!(count(&mut env.local(), "SELECT count(*) FROM sync_quarantine"), 0);
        // The rejected batch, and the one claimed ahead while it was uploading, stay claimed.
        assert_eq!(
            env.manager().pending_batches().expect("pending").len(),
            2,
            "the batches stay claimed"
        );
        assert_eq!(snapshot(&mut env.local()), original);
    }
    let last_error: Option<String> = env
        .local()
        .query_one(
            "SELECT last_error FROM sync_upload_batches WHERE last_error IS NOT NULL",
            &[],
        )
        .expect("batch")
        .get(0);
    assert!(last_error.is_some_and(|e| e.contains("rejects every one")));
    env.remote()
        .batch_execute("ALTER TABLE meter_readings DROP COLUMN site")
        .expect("fix");
    let r = env.sync();
    assert!(r.success, "{r:?}");
    assert_exactly_once(&env, &original);
}

#[test]
fn a_dropped_remote_column_fails_the_part_and_keeps_the_batch_claimed() {
    let env = Env::new(&[("BATCH_SIZE", "4")]);
    env.remote()
        .batch_execute("ALTER TABLE meter_readings DROP COLUMN metadata")
        .expect("alter");
    let readings: Vec<Reading> = (0..6)
        .map(|i| Reading::new("m", &format!("2024-01-01 00:00:{i:02}"), &i.to_string(), Some("{}")))
        .collect();
    insert(&env, &readings);
    let original = snapshot(&mut env.local());
    let r = env.sync();
    assert!(!r.success, "{r:?}");
    let e = r.error.as_deref().unwrap_or("");
    assert!(
        e.contains("metadata") && e.contains("42703") && e.contains("4 readings"),
        "{e}"
    );
    assert_eq!(r.records_quarantined, 0);
    assert_eq!(count(&mut env.local(), "SELECT count(*) FROM sync_quarantine"), 0);
    // The failed batch only: the upload statement cannot even be prepared, so nothing was sent or claimed ahead.
    assert_eq!(env.manager().pending_batches().expect("pending").len(), 1);
    assert_eq!(snapshot(&mut env.local()), original);
    env.remote()
        .batch_execute("ALTER TABLE meter_readings ADD COLUMN metadata JSONB")
        .expect("fix");
    let r = env.sync();
    assert!(r.success, "{r:?}");
    assert_exactly_once(&env, &original);
}

// ----- Drain control, ledger, lock -----

#[test]
fn shutdown_and_an_exhausted_budget_stop_between_batches() {
    let env = Env::new(&[("BATCH_SIZE", "100"), ("UPLOAD_MAX_ROWS_PER_SECOND", "1000")]);
    let mut l = env.local();
    insert_many(&mut l, 1_000);
    let original = snapshot(&mut l);
    let age = env
        .manager()
        .oldest_pending_age()
        .expect("age")
        .expect("a queued reading");
    assert!(age < Duration::from_secs(3600), "{age:?}");
    assert_eq!(env.manager().queue_size().expect("queue"), 1_000);
    // No budget: nothing is done, the backlog is reported.
    let r = env.manager().sync_readings(Duration::ZERO);
    assert!(r.success && r.backlog_remains && r.records_uploaded == 0, "{r:?}");
    // Paced at 1000 rows/s, the 1000 rows take at least 0.9 s: a shutdown after 250 ms stops the drain
    // between batches, with the batch in flight completed.
    let r = thread::scope(|s| {
        let t = s.spawn(|| env.sync());
        thread::sleep(Duration::from_millis(250));
        env.conns.shutdown.request();
        t.join().expect("drain")
    });
    assert!(r.success && r.backlog_remains, "{r:?}");
    assert!(
        r.records_uploaded > 0 && r.records_uploaded < 1_000 && r.records_uploaded % 100 == 0,
        "{r:?}"
    );
    assert_eq!(r.records_deleted, r.records_uploaded);
    assert_eq!(
        count(&mut l, "SELECT count(*) FROM sync_upload_batches"),
        0,
        "no batch left in flight"
    );
    // The next start drains the rest.
    let conns = ConnectionManager::new(&env.cfg, Shutdown::new()).expect("conns");
    let r = UploadSyncManager::new(&conns, &env.cfg).sync_readings(Duration::from_secs(600));
    assert!(r.success && !r.backlog_remains, "{r:?}");
    assert_exactly_once(&env, &original);
    assert_eq!(env.manager().oldest_pending_age().expect("age"), None);
}

#[test]
fn ledger_prune_keeps_recent_rows_pending_batches_and_other_sources() {
    let env = Env::new(&[]);
    let mut l = env.local();
    insert(&env, &[Reading::new("m", "2024-01-01 00:00:00", "1", None)]);
    let pending = env.manager().claim_batch(None).expect("claim").expect("batch");
    let mut r = env.remote();
    r.execute(
        "INSERT INTO sync_upload_ledger (source_id, batch_id, row_count, uploaded_at) VALUES
           ('test-site', gen_random_uuid(), 1, now() - interval '8 days'),
           ('test-site', gen_random_uuid(), 1, now() - interval '30 days'),
           ('test-site', $1::text::uuid, 1, now() - interval '9 days'),
           ('test-site', gen_random_uuid(), 1, now() - interval '6 days'),
           ('other-site', gen_random_uuid(), 1, now() - interval '30 days')",
        &[&pending.batch_id],
    )
    .expect("ledger rows");
    assert_eq!(env.manager().prune_ledger(upload::LEDGER_RETENTION).expect("prune"), 2);
    let left: Vec<String> = r
        .query(
            "SELECT source_id || ':' || (uploaded_at > now() - interval '7 days') FROM sync_upload_ledger ORDER BY 1",
            &[],
        )
        .expect("left")
        .iter()
        .map(|x| x.get(0))
        .collect();
    assert_eq!(left, vec!["other-site:false", "test-site:false", "test-site:true"]);
    assert_eq!(count(&mut l, "SELECT count(*) FROM sync_upload_batches"), 1);
}

#[test]
fn a_second_uploader_on_the_same_database_is_locked_out() {
    let env = Env::new(&[]);
    insert(&env, &[Reading::new("m", "2024-01-01 00:00:00", "1", None)]);
    let mut holder = env.local();
    holder
        .execute("SELECT pg_advisory_lock(x'73796e63'::int, 2)", &[])
        .expect("lock");
    let r = env.sync();
    assert!(
        !r.success && r.error.as_deref().is_some_and(|e| e.contains("another sync-process")),
        "{r:?}"
    );
    assert_eq!(
        count(&mut holder, "SELECT count(*) FROM sync_upload_batches"),
        0,
        "nothing claimed"
    );
    holder
        .execute("SELECT pg_advisory_unlock(x'73796e63'::int, 2)", &[])
        .expect("unlock");
    let r = env.sync();
    assert!(r.success && r.records_uploaded == 1, "{r:?}");
    // The lock went back with the connection: a third cycle takes it again.
    insert(&env, &[Reading::new("m", "2024-01-01 00:00:01", "2", None)]);
    let r = env.sync();
    assert!(r.success && r.records_uploaded == 1, "{r:?}");
}

#[test]
fn the_claim_and_finish_statements_use_their_indexes() {
    let env = Env::new(&[]);
    let mut l = env.local();
    insert_many(&mut l, 20_000);
    l.batch_execute("ANALYZE meter_readings").expect("analyze");
    let plan = |l: &mut Client, prepare: String, execute: &str| -> String {
        l.batch_execute("BEGIN").expect("begin");
        l.batch_execute(&prepare).expect("prepare");
        let text: Vec<String> = l
            .query(&format!("EXPLAIN {execute}"), &[])
            .expect("explain")
            .iter()
            .map(|r| r.get(0))
            .collect();
        l.batch_execute("ROLLBACK").expect("rollback");
        text.join("\n")
    };
    let first = plan(
        &mut l,
        format!("PREPARE c1(int8) AS {}", upload::sql::CLAIM_FIRST),
        "EXECUTE c1(100)",
    );
    assert!(first.contains("idx_meter_readings_claim"), "{first}");
    let next = plan(
        &mut l,
        format!("PREPARE c2(int8, text, int8) AS {}", upload::sql::CLAIM_NEXT),
        "EXECUTE c2(100, '2024-01-01 03:00:00', 10000)",
    );
    assert!(
        next.contains("idx_meter_readings_claim") && next.contains("Index Cond"),
        "{next}"
    );
    let finish = plan(
        &mut l,
        format!("PREPARE f(text) AS {}", upload::sql::FINISH),
        "EXECUTE f('00000000-0000-0000-0000-000000000001')",
    );
    assert!(finish.contains("meter_readings_pkey"), "{finish}");
    // The drain prepares its statements once per connection: the generic plans must use the indexes too.
    l.batch_execute("SET plan_cache_mode = force_generic_plan")
        .expect("generic plans");
    let next = plan(
        &mut l,
        format!("PREPARE c3(int8, text, int8) AS {}", upload::sql::CLAIM_NEXT),
        "EXECUTE c3(100, '2024-01-01 03:00:00', 10000)",
    );
    assert!(
        next.contains("idx_meter_readings_claim") && next.contains("Index Cond"),
        "{next}"
    );
    let merged = plan(
        &mut l,
        format!(
            "PREPARE fc(int8, text, int8, text) AS {}",
            upload::sql::FINISH_AND_CLAIM
        ),
        "EXECUTE fc(100, '2024-01-01 03:00:00', 10000, '00000000-0000-0000-0000-000000000001')",
    );
    assert!(
        merged.contains("idx_meter_readings_claim") && merged.contains("meter_readings_pkey"),
        "{merged}"
    );
}

// ----- The quarantine command -----

#[test]
fn quarantine_command_lists_retries_and_discards() {
    let env = Env::new(&[("BATCH_SIZE", "10")]);
    env.remote()
        .batch_execute("ALTER TABLE meter_readings ADD CONSTRAINT positive CHECK (value > 0)")
        .expect("constraint");
    let readings: Vec<Reading> = (0..6)
        .map(|i| {
            Reading::new(
                if i % 2 == 0 { "o'neg" } else { "pos" },
                &format!("2024-01-01 00:00:0{i}"),
                if i % 2 == 0 { "-1.50" } else { "1" },
                None,
            )
        })
        .collect();
    let ids = insert(&env, &readings);
    let r = env.sync();
    assert!(r.success && r.records_quarantined == 3, "{r:?}");

    let out = run_command(&["quarantine", "list", "--json"], &env.map);
    assert!(out.status.success(), "{}", out.stderr);
    let list: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    let arr = list.as_array().expect("array");
    assert_eq!(arr.len(), 3);
    assert_eq!(arr[0]["id"], ids[0]);
    assert_eq!(arr[0]["meter_id"], "o'neg");
    assert_eq!(arr[0]["value"], "-1.50");
    assert_eq!(arr[0]["sqlstate"], "23514");
    assert!(arr[0]["error"].as_str().is_some_and(|e| e.contains("positive")));

    let out = run_command(&["quarantine", "list"], &env.map);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout.starts_with("ID") && out.stdout.contains("o'neg") && out.stdout.contains("3 quarantined reading(s)"),
        "{}",
        out.stdout
    );

    // An unknown id changes nothing and says so.
    let out = run_command(&["quarantine", "retry", &ids[0].to_string(), "999999"], &env.map);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert!(out.stderr.contains("999999"), "{}", out.stderr);
    assert_eq!(count(&mut env.local(), "SELECT count(*) FROM sync_quarantine"), 3);

    let out = run_command(&["quarantine", "discard", &ids[2].to_string()], &env.map);
    assert!(
        out.status.success() && out.stdout.contains("1 reading(s) discarded"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    env.remote()
        .batch_execute("ALTER TABLE meter_readings DROP CONSTRAINT positive")
        .expect("drop");
    let out = run_command(&["quarantine", "retry", &ids[0].to_string()], &env.map);
    assert!(
        out.status.success() && out.stdout.contains("1 reading(s) moved back"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let r = env.sync();
    assert!(r.success && r.records_uploaded == 1, "{r:?}");
    let out = run_command(&["quarantine", "discard", "--all"], &env.map);
    assert!(
        out.status.success() && out.stdout.contains("1 reading(s) discarded"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(count(&mut env.local(), "SELECT count(*) FROM sync_quarantine"), 0);
    assert_eq!(
        count(&mut env.remote(), "SELECT count(*) FROM meter_readings WHERE value < 0"),
        1
    );
}

// ----- Measurement (not part of the suite) -----

#[test]
fn readings_marked_synchronized_by_another_program_are_not_uploaded_again() {
    let env = Env::new(&[]);
    let queued = vec![
        Reading::new("m-1", "2024-01-01 00:00:01", "1.50", None),
        Reading::new("m-1", "2024-01-01 00:00:03", "3.50", None),
    ];
    insert(&env, &queued);
    // A legacy row that an earlier uploader marked as done (the design's is_synchronized flag).
    let legacy_id = insert(&env, &[Reading::new("m-1", "2024-01-01 00:00:02", "2.50", None)])[0];
    env.local()
        .execute(
            "UPDATE meter_readings SET is_synchronized = true WHERE id = $1::int8",
            &[&legacy_id],
        )
        .expect("mark the legacy row");
    assert_eq!(
        env.manager().queue_size().expect("queue size"),
        2,
        "the marked row is not queued"
    );
    let r = env.sync();
    assert!(r.success && r.records_uploaded == 2, "{r:?}");
    let mut expected = queued.clone();
    expected.sort();
    assert_eq!(
        snapshot(&mut env.remote()),
        expected,
        "only the unmarked readings arrive"
    );
    let left = count(
        &mut env.local(),
        "SELECT count(*) FROM meter_readings WHERE is_synchronized",
    );
    assert_eq!(left, 1, "the marked row is left alone");
}
