//! Integration tests: migrations (fresh, twice, over a populated seed database, concurrently, dry run) and
//! the connection manager's retry against a server that comes up late.

use std::thread;
use std::time::Duration;

use sync_process::config::Config;
use sync_process::db::{ConnectionManager, LockKey};
use sync_process::error::Side;
use sync_process::migrate::{self, migrate};
use sync_process::shutdown::Shutdown;

use crate::support::pg::{env_map, DbPair, PgServer};

fn conns(pair: &DbPair) -> (Config, ConnectionManager) {
    let cfg = Config::from_map(&env_map(pair)).expect("test config is valid");
    let conns = ConnectionManager::new(&cfg, Shutdown::new()).expect("pools");
    (cfg, conns)
}

fn tables(client: &mut postgres::Client) -> Vec<String> {
    client
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .expect("list tables")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[test]
fn migrate_twice_on_fresh_databases() {
    let pair = DbPair::new();
    let (_cfg, conns) = conns(&pair);
    for side in [Side::Local, Side::Remote] {
        let first = migrate(conns.db(side), false).expect("first migrate");
        assert_eq!(
            first.len(),
            migrate::migrations(side).len(),
            "{side}: every file applied"
        );
        let second = migrate(conns.db(side), false).expect("second migrate");
        assert!(second.is_empty(), "{side}: nothing left to apply, got {second:?}");
    }
    let local = tables(&mut pair.local.client());
    for t in [
        "meter_readings",
        "meters",
        "tenant",
        "sync_logs",
        "sync_upload_batches",
        "sync_quarantine",
    ] {
        assert!(local.contains(&t.to_string()), "local lacks {t}: {local:?}");
    }
    let remote = tables(&mut pair.remote.client());
    for t in [
        "meter_readings",
        "meters",
        "tenant",
        "sync_upload_ledger",
        "sync_schema_migrations",
    ] {
        assert!(remote.contains(&t.to_string()), "remote lacks {t}: {remote:?}");
    }
    assert!(!remote.contains(&"sync_logs".to_string()), "sync_logs is local only");
    let indexes: Vec<String> = pair
        .local
        .client()
        .query(
            "SELECT indexname::text FROM pg_indexes WHERE tablename = 'meter_readings'",
            &[],
        )
        .expect("indexes")
        .iter()
        .map(|r| r.get(0))
        .collect();
    for i in [
        "idx_meter_readings_sync",
        "idx_meter_readings_meter_time",
        "idx_meter_readings_claim",
    ] {
        assert!(indexes.contains(&i.to_string()), "missing {i}: {indexes:?}");
    }
}

#[test]
fn migrate_keeps_every_row_of_a_populated_seed_database() {
    let pair = DbPair::new();
    let mut local = pair.local.client();
    // An older collector's schema: no is_synchronized/created_at/metadata columns, no indexes, no synced_at.
    local
        .batch_execute(
            "CREATE TABLE meter_readings (id SERIAL PRIMARY KEY, meter_id VARCHAR(255) NOT NULL,
                 timestamp TIMESTAMP NOT NULL, value NUMERIC NOT NULL, unit VARCHAR(50) NOT NULL);
             CREATE TABLE meters (meter_id VARCHAR(255) PRIMARY KEY, name VARCHAR(255) NOT NULL,
                 location_id VARCHAR(255), meter_type VARCHAR(100) NOT NULL, unit VARCHAR(50) NOT NULL,
                 configuration JSONB, updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
             INSERT INTO meter_readings (meter_id, timestamp, value, unit)
                 SELECT 'm-' || (g % 7), '2024-01-01'::timestamp + g * interval '1 second', (g || '.50')::numeric, 'kWh'
                 FROM generate_series(1, 5000) g;
             INSERT INTO meters (meter_id, name, meter_type, unit, configuration)
                 SELECT 'm-' || g, 'Meter ' || g, 'electric', 'kWh', '{\"a\": 1}' FROM generate_series(1, 50) g;",
        )
        .expect("seed an old schema with rows");
    let digest = |c: &mut postgres::Client, q: &str| -> String { c.query_one(q, &[]).expect("digest").get(0) };
    let readings_q = "SELECT md5(string_agg(id || '|' || meter_id || '|' || timestamp || '|' || value || '|' || unit, \
                      ',' ORDER BY id)) FROM meter_readings";
    let meters_q = "SELECT md5(string_agg(m::text, ',' ORDER BY meter_id)) FROM (SELECT meter_id, name, location_id, \
                    meter_type, unit, configuration, updated_at FROM meters) m";
    let before = (digest(&mut local, readings_q), digest(&mut local, meters_q));

    let (_cfg, conns) = conns(&pair);
    migrate(&conns.local, false).expect("migrate over the seed database");
    migrate(&conns.local, false).expect("and again");

    let after = (digest(&mut local, readings_q), digest(&mut local, meters_q));
    assert_eq!(before, after, "every row kept, unchanged");
    let row = local
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE is_synchronized = false) FROM meter_readings",
            &[],
        )
        .expect("count");
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (5000, 5000),
        "new column added with its default"
    );
    let synced_at: i64 = local
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'meters' AND column_name = 'synced_at'",
            &[],
        )
        .expect("columns")
        .get(0);
    assert_eq!(synced_at, 1);
}

#[test]
fn concurrent_migrations_serialize_on_the_advisory_lock() {
    let pair = DbPair::new();
    let (cfg, _) = conns(&pair);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let cfg = cfg.clone();
            thread::spawn(move || {
                let conns = ConnectionManager::new(&cfg, Shutdown::new()).expect("pools");
                migrate(&conns.local, false).map(|applied| applied.len())
            })
        })
        .collect();
    let applied: Vec<usize> = handles
        .into_iter()
        .map(|h| h.join().expect("thread").expect("migrate"))
        .collect();
    assert_eq!(
        applied.iter().sum::<usize>(),
        migrate::LOCAL.len(),
        "each file applied exactly once: {applied:?}"
    );
}

// A panic while the migration lock is held (here: right after the first file) must not leave the lock with
// the pooled connection: another process can migrate at once, and the pool's connection holds no lock.
#[test]
fn a_panic_while_migrating_releases_the_migration_lock() {
    let pair = DbPair::new();
    let single = crate::db::one_connection_pool(&pair);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        migrate::migrate_with(&single, false, &mut |m| panic!("injected panic after {}", m.name))
    }));
    assert!(r.is_err(), "the migration panicked");

    let (class, id) = LockKey::Migrate.pair();
    let mut other = pair.local.client();
    let free: bool = other
        .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&class, &id])
        .expect("try lock")
        .get(0);
    assert!(free, "another session can take the migration lock");
    other
        .execute("SELECT pg_advisory_unlock($1, $2)", &[&class, &id])
        .expect("unlock");
    let mut back = single.try_get().expect("the pool's one connection");
    let held: i64 = back
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
            &[],
        )
        .expect("pg_locks")
        .get(0);
    assert_eq!(held, 0, "the pooled connection came back without the lock");
    drop(back);

    // Another process finishes the job: the first file was committed before the panic.
    let (_, second) = conns(&pair);
    let applied = migrate(&second.local, false).expect("migrate after the panic");
    assert_eq!(applied.len(), migrate::LOCAL.len() - 1, "{applied:?}");
}

#[test]
fn dry_run_lists_and_changes_nothing() {
    let pair = DbPair::new();
    let (_cfg, conns) = conns(&pair);
    let listed = migrate(&conns.remote, true).expect("dry run");
    assert_eq!(listed.len(), migrate::REMOTE.len());
    assert!(
        tables(&mut pair.remote.client()).is_empty(),
        "a dry run creates nothing"
    );
}

#[test]
fn connection_retry_reaches_a_server_that_comes_up_late() {
    let server = PgServer::start();
    let pair = DbPair::on(&server, &server);
    let mut vars = env_map(&pair);
    vars.insert("RETRY_BASE_DELAY_MS".into(), "100".into());
    vars.insert("MAX_CONNECTION_RETRIES".into(), "8".into());
    vars.insert("DB_CONNECTION_TIMEOUT_MS".into(), "500".into());
    let cfg = Config::from_map(&vars).expect("config");
    server.stop();
    let conns = ConnectionManager::new(&cfg, Shutdown::new()).expect("pools are built while the server is down");
    assert!(conns.test(Side::Local).is_err(), "down means unreachable");
    let starter = thread::spawn(move || {
        thread::sleep(Duration::from_millis(700));
        server.start_again();
        server
    });
    let got = conns.get(Side::Local);
    let server = starter.join().expect("starter");
    assert!(got.is_ok(), "connected after retries: {:?}", got.err());
    drop(got);
    drop(conns);
    drop(pair);
    drop(server);
}

#[test]
fn shutdown_ends_connection_retries_early() {
    let server = PgServer::start();
    let pair = DbPair::on(&server, &server);
    let mut vars = env_map(&pair);
    vars.insert("RETRY_BASE_DELAY_MS".into(), "600000".into());
    let cfg = Config::from_map(&vars).expect("config");
    server.stop();
    let shutdown = Shutdown::new();
    let conns = ConnectionManager::new(&cfg, shutdown.clone()).expect("pools");
    let stopper = {
        let s = shutdown.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(300));
            s.request();
        })
    };
    // With a 10-minute backoff, only the shutdown request can end this wait.
    let got = conns.get(Side::Local);
    stopper.join().expect("stopper");
    assert!(
        matches!(got, Err(sync_process::error::Error::Shutdown)),
        "{:?}",
        got.err()
    );
    server.start_again();
}
