//! The central database reached through PgBouncer (Debian 12's 1.18), as fleets run it: transaction pooling
//! with real server rotation (`server_round_robin = 1`, two server connections kept open) and session pooling,
//! no `ignore_startup_parameters`, no setting on the daemon's side. Migrate, a full drain with `kill -9` in the
//! middle, recovery and the download all work, exactly once; several sites through one PgBouncer into one
//! central never use more server connections than the pool has. Also fleet hygiene: no remote connection held
//! between cycles, jittered ticks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::thread;
use std::time::Duration;

use postgres::Client;

use crate::support::daemon::{run_command, Daemon};
use crate::support::env::count;
use crate::support::pg::{env_map_for, DbPair, PgServer, TestDb, HOST};
use crate::support::pgbouncer::{BouncerOptions, PgBouncer, PoolMode};
use crate::support::SetOnDrop;

/// `n` readings of site `site`: meter ids `<site>-<k>`, distinct `seq` in the metadata.
fn insert_readings(c: &mut Client, site: &str, n: i64) {
    c.execute(
        "INSERT INTO meter_readings (meter_id, timestamp, value, unit, metadata)
         SELECT $1 || '-' || (g % 20), timestamp '2024-01-01' + g * interval '1 second',
                (g % 1000)::numeric / 100, 'kWh', jsonb_build_object('seq', g)
         FROM generate_series(1, $2::int8) AS g",
        &[&site, &n],
    )
    .unwrap_or_else(|e| panic!("inserting readings of {site}: {e}"));
}

/// Asserts that the central holds each of site `site`'s `n` readings exactly once and its local queue is empty.
fn assert_site_exactly_once(central: &mut Client, local: &mut Client, site: &str, n: i64) {
    let row = central
        .query_one(
            "SELECT count(*), count(DISTINCT metadata->>'seq') FROM meter_readings WHERE meter_id LIKE $1 || '-%'",
            &[&site],
        )
        .unwrap_or_else(|e| panic!("counting {site}'s readings on the central: {e}"));
    let (total, distinct): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(
        (total, distinct),
        (n, n),
        "{site}: central holds {total} readings, {distinct} distinct"
    );
    assert_eq!(
        count(local, "SELECT count(*) FROM meter_readings"),
        0,
        "{site}: local queue not empty"
    );
    assert_eq!(
        count(local, "SELECT count(*) FROM sync_upload_batches"),
        0,
        "{site}: batches still claimed"
    );
}

/// The daemon's variables for local database `local`, the central `central` reached through `bouncer`.
fn site_env(
    local: &TestDb,
    central: &TestDb,
    bouncer: &PgBouncer,
    site: &str,
    extra: &[(&str, &str)],
) -> BTreeMap<String, String> {
    let mut env = env_map_for(local, central.name(), HOST, bouncer.port());
    env.insert("SYNC_SOURCE_ID".into(), site.into());
    for (k, v) in extra {
        env.insert((*k).into(), (*v).into());
    }
    env
}

fn assert_ok(what: &str, out: &crate::support::daemon::RunOutput) {
    assert!(
        out.status.success(),
        "{what} through PgBouncer failed ({}):\n{}\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
}

/// Server connections PgBouncer holds to the central (SHOW POOLS: active + idle + used + tested + login).
fn server_connections(bouncer: &PgBouncer, db: &str) -> i64 {
    let mut admin = bouncer.admin();
    let mut total = 0;
    for msg in admin
        .simple_query("SHOW POOLS")
        .unwrap_or_else(|e| panic!("SHOW POOLS: {e}"))
    {
        if let postgres::SimpleQueryMessage::Row(r) = msg {
            if r.get("database") == Some(db) {
                for col in ["sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login"] {
                    total += r.get(col).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
                }
            }
        }
    }
    total
}

fn seed_central_config(central: &mut Client) {
    central
        .batch_execute(
            "INSERT INTO meters (meter_id, name, meter_type, unit, configuration)
             SELECT 'm' || g, 'Meter ' || g, 'electric', 'kWh', jsonb_build_object('g', g) FROM generate_series(1, 30) g;
             INSERT INTO tenant (tenant_id, name, metadata) SELECT 't' || g, 'Tenant ' || g, '{\"a\": null}'
             FROM generate_series(1, 7) g;",
        )
        .expect("seeding the central's meters and tenants");
}

/// Migrate, a drain killed (-9) three times at random moments, recovery, and the download, all through
/// PgBouncer in `mode`: every reading exactly once, meters and tenants mirrored.
fn full_cycle_through(mode: PoolMode) {
    let pair = DbPair::new();
    let bouncer = PgBouncer::start(
        PgServer::shared(),
        BouncerOptions {
            mode,
            ..BouncerOptions::default()
        },
    );
    let env = site_env(&pair.local, &pair.remote, &bouncer, "site-a", &[("BATCH_SIZE", "50")]);
    // A neighbour through the same pool (another site, in the field) keeps a second server connection busy
    // now and then, so PgBouncer opens at least two and hands the daemon's transactions to either.
    let quiet = AtomicBool::new(false);
    thread::scope(|s| {
        s.spawn(|| {
            let mut c = sync_process::pgtemp::client_config(HOST, bouncer.port(), pair.remote.name())
                .connect(postgres::NoTls)
                .expect("the neighbour's connection through PgBouncer");
            while !quiet.load(Ordering::Relaxed) {
                let _ = c.simple_query("SELECT pg_sleep(0.003)");
            }
        });
        let _quiet = SetOnDrop(&quiet);
        full_cycle_body(mode, &pair, &bouncer, &env);
    });
}

fn full_cycle_body(mode: PoolMode, pair: &DbPair, bouncer: &PgBouncer, env: &BTreeMap<String, String>) {
    let env = env.clone();
    assert_ok("migrate", &run_command(&["migrate"], &env));
    let (mut local, mut central) = (pair.local.client(), pair.remote.client());
    seed_central_config(&mut central);
    insert_readings(&mut local, "site-a", 6000);
    for round in 0..3u64 {
        let before = count(&mut local, "SELECT count(*) FROM meter_readings");
        let mut daemon = Daemon::spawn(&["once"], &env);
        crate::support::wait_until(Duration::from_secs(20), || {
            count(&mut local, "SELECT count(*) FROM meter_readings") < before || !daemon.is_running()
        });
        thread::sleep(Duration::from_millis(37 * round));
        daemon.kill();
    }
    // The last drain runs while PgBouncer's server connections are sampled: with two or more of them open
    // while the daemon sends, transaction pooling really hands its statements to different ones.
    let stop = AtomicBool::new(false);
    let most = AtomicI64::new(0);
    let out = thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                most.fetch_max(server_connections(bouncer, pair.remote.name()), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(20));
            }
        });
        let _stop = SetOnDrop(&stop);
        run_command(&["once"], &env)
    });
    assert_ok("once after the kills", &out);
    assert_site_exactly_once(&mut central, &mut local, "site-a", 6000);
    assert_eq!(count(&mut local, "SELECT count(*) FROM meters"), 30, "meters mirrored");
    assert_eq!(count(&mut local, "SELECT count(*) FROM tenant"), 7, "tenants mirrored");
    if mode == PoolMode::Transaction {
        assert!(
            most.load(Ordering::Relaxed) >= 2,
            "PgBouncer kept fewer than two server connections: the test would not see rotation\n{}",
            bouncer.log_tail()
        );
    }
    // A second migrate is a no-op, and check-config connects.
    assert_ok("migrate again", &run_command(&["migrate"], &env));
    assert_ok("check-config", &run_command(&["check-config"], &env));
}

#[test]
fn transaction_pooling_with_rotation_migrate_drain_kill_recover_download() {
    full_cycle_through(PoolMode::Transaction);
}

#[test]
fn session_pooling_migrate_drain_kill_recover_download() {
    full_cycle_through(PoolMode::Session);
}

/// Five sites (own local databases) through one PgBouncer (pool of 4) into one central at once, each killed
/// mid-drain and run again: every site's readings exactly once, and the central never serves more than the
/// pool's server connections.
#[test]
fn five_sites_through_one_pgbouncer_into_one_central() {
    const SITES: usize = 5;
    const N: i64 = 3000;
    let server = PgServer::shared();
    let central_db = TestDb::create(server);
    let bouncer = PgBouncer::start(server, BouncerOptions::default());
    let locals: Vec<TestDb> = (0..SITES).map(|_| TestDb::create(server)).collect();
    let names: Vec<String> = (0..SITES).map(|i| format!("site-{i}")).collect();
    let envs: Vec<_> = locals
        .iter()
        .zip(&names)
        .map(|(l, s)| site_env(l, &central_db, &bouncer, s, &[("BATCH_SIZE", "100")]))
        .collect();
    // All five migrate the same central at once: the migration lock must hold through the pooler.
    thread::scope(|s| {
        let runs: Vec<_> = envs
            .iter()
            .map(|e| s.spawn(move || run_command(&["migrate"], e)))
            .collect();
        for r in runs {
            assert_ok("concurrent migrate", &r.join().expect("migrate thread"));
        }
    });
    for (l, s) in locals.iter().zip(&names) {
        insert_readings(&mut l.client(), s, N);
    }
    // Watch the central's connections from PgBouncer while the sites run.
    let stop = AtomicBool::new(false);
    let peak = AtomicI64::new(0);
    thread::scope(|s| {
        s.spawn(|| {
            let mut c = central_db.client();
            while !stop.load(Ordering::Relaxed) {
                let n = count(
                    &mut c,
                    &format!(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
                        central_db.name()
                    ),
                );
                peak.fetch_max(n, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(10));
            }
        });
        let _stop = SetOnDrop(&stop);
        let sites: Vec<_> = envs
            .iter()
            .enumerate()
            .map(|(i, e)| {
                s.spawn(move || {
                    let mut d = Daemon::spawn(&["once"], e);
                    thread::sleep(Duration::from_millis(150 + 90 * i as u64));
                    d.kill();
                    run_command(&["once"], e)
                })
            })
            .collect();
        for (r, name) in sites.into_iter().zip(&names) {
            assert_ok(&format!("{name}: once after a kill"), &r.join().expect("site thread"));
        }
    });
    let mut central = central_db.client();
    for (l, s) in locals.iter().zip(&names) {
        assert_site_exactly_once(&mut central, &mut l.client(), s, N);
    }
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "peak server connections on the central: {peak} (pool {})",
        bouncer.options.pool_size
    );
    assert!(
        peak <= i64::from(bouncer.options.pool_size),
        "the central served {peak} connections, more than PgBouncer's pool of {}",
        bouncer.options.pool_size
    );
}

/// Fleet hygiene: a daemon holds no connection to the central between cycles, and at most one plus its
/// batches in flight during one (the upload connections, and one for the ledger lookups, the downloads and
/// the checks). Ticks are jittered here (SYNC_JITTER_PERCENT=50), which must not stop the cycles.
#[test]
fn no_remote_connection_is_held_between_cycles() {
    const IN_FLIGHT: i64 = 3;
    let pair = DbPair::new();
    let env = site_env_direct(
        &pair,
        &[
            ("BATCH_SIZE", "50"),
            ("UPLOAD_BATCHES_IN_FLIGHT", "3"),
            ("SYNC_INTERVAL_SECONDS", "2"),
            ("SYNC_JITTER_PERCENT", "50"),
            ("LOG_LEVEL", "info"),
        ],
    );
    assert_ok("migrate", &run_command(&["migrate"], &env));
    let (mut local, mut central) = (pair.local.client(), pair.remote.client());
    insert_readings(&mut local, "site-a", 8000);
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND application_name = 'sync-process'",
        pair.remote.name()
    );
    let daemon = Daemon::spawn(&["run"], &env);
    let mut peak = 0;
    let drained = crate::support::wait_until(Duration::from_secs(90), || {
        peak = peak.max(count(&mut central, &sql));
        count(&mut local, "SELECT count(*) FROM meter_readings") == 0
    });
    assert!(drained, "the daemon did not drain 8000 readings within 90 s");
    // Two more cycles, then sample the connections for one interval.
    let cycles = |c: &mut Client| count(c, "SELECT count(*) FROM sync_logs WHERE sync_type = 'upload'");
    let after = cycles(&mut local);
    assert!(
        crate::support::wait_until(Duration::from_secs(30), || cycles(&mut local) >= after + 2),
        "jittered ticks stopped the cycles"
    );
    let samples: Vec<i64> = (0..40)
        .map(|_| {
            thread::sleep(Duration::from_millis(50));
            count(&mut central, &sql)
        })
        .collect();
    let idle = samples.iter().filter(|n| **n == 0).count();
    eprintln!("peak remote connections {peak}; between cycles {idle}/40 samples with none: {samples:?}");
    assert!(
        peak <= 1 + IN_FLIGHT,
        "peak of {peak} remote connections, more than 1 + {IN_FLIGHT} in flight"
    );
    assert!(idle >= 30, "remote connections held between cycles: {samples:?}");
    drop(daemon);
    assert_site_exactly_once(&mut central, &mut local, "site-a", 8000);
}

/// The daemon's variables for `pair`, the remote reached directly.
fn site_env_direct(pair: &DbPair, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut env = crate::support::pg::env_map(pair);
    for (k, v) in extra {
        env.insert((*k).into(), (*v).into());
    }
    env
}
