//! Integration tests: a Citus central (coordinator + 2 workers, support::citus) in the two layouts the README
//! documents — (a) readings distributed by meter_id with the ledger and chain as reference tables, (b)
//! co-located by site with UPLOAD_SOURCE_COLUMN — for each: a drain killed (-9) mid-drain then recovered,
//! batches in flight, the download of reference-table meters and tenants, a poison reading rejected by a
//! worker (XX000) quarantined by probing, and a duplicate ledger key reported against a shard's constraint
//! recognised as "already in". Exactly-once is checked as multisets of the text of every uploaded column.

use std::thread;
use std::time::Duration;

use postgres::Client;
use quickcheck::{Arbitrary, Gen};

use sync_process::quarantine;
use sync_process::upload::{UploadOutcome, UploadSyncManager};

use crate::support::citus::{apply_layout, citus_pair, table_kinds, CitusWorkers, Layout, SITE_COLUMN};
use crate::support::daemon::{run_command, Daemon};
use crate::support::env::{count, Env};
use crate::support::readings::{assert_exactly_once, insert_readings, remote_order_inversions, snapshot};

/// The harness's [`Env`] on a Citus central, migrated (on the coordinator) and distributed as `layout`.
/// Field order: the Env (pools, clients, databases) goes before the workers' copies.
struct CitusEnv {
    env: Env,
    layout: Layout,
    _workers: CitusWorkers,
}

impl CitusEnv {
    fn new(layout: Layout, vars: &[(&str, &str)]) -> CitusEnv {
        let (pair, workers) = citus_pair();
        let mut all = vec![("BATCH_SIZE", "50")];
        if layout == Layout::BySite {
            all.push(("UPLOAD_SOURCE_COLUMN", SITE_COLUMN));
        }
        all.extend_from_slice(vars);
        // With several batches in flight the central sits behind a 2 ms round trip: the drain then waits for it
        // and widens (on loopback it would keep one batch in flight, and no chained statement would run).
        let wide = vars.iter().any(|(k, v)| *k == "UPLOAD_BATCHES_IN_FLIGHT" && *v != "1");
        let builder = Env::builder().on(pair).vars(&all);
        let mut env = if wide { builder.remote_via_proxy() } else { builder }.build();
        if wide {
            env.proxy().set_latency(Duration::from_millis(1));
        }
        apply_layout(&mut env.remote, layout);
        CitusEnv {
            env,
            layout,
            _workers: workers,
        }
    }

    fn manager(&self) -> UploadSyncManager<'_> {
        UploadSyncManager::new(&self.env.conns, &self.env.cfg)
    }

    fn local(&self) -> Client {
        self.env.pair.local.client()
    }

    fn remote(&self) -> Client {
        self.env.pair.remote.client()
    }

    /// With layout (b): every remote reading carries this site's id in the site column.
    fn assert_site_column(&self) {
        if self.layout == Layout::BySite {
            let wrong = count(
                &mut self.remote(),
                &format!("SELECT count(*) FROM meter_readings WHERE {SITE_COLUMN} IS DISTINCT FROM 'test-site'"),
            );
            assert_eq!(wrong, 0, "readings without this site's id in {SITE_COLUMN}");
        }
    }
}

/// Runs `once` to completion and asserts it exited 0.
fn once_ok(env: &CitusEnv) -> serde_json::Value {
    let out = run_command(&["once"], &env.env.map);
    assert!(out.status.success(), "once: {}\n{}", out.stdout, out.stderr);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("once printed no JSON ({e}): {}", out.stdout))
}

// ----- Drain, kill -9, recovery, batches in flight -----

/// 3,000 readings in batches of 50; `once` killed (-9) three times at random moments mid-drain, then one
/// `once` recovers and finishes: exactly once, in claim order.
fn killed_mid_drain_then_recovered(layout: Layout, in_flight: &str) {
    let env = CitusEnv::new(layout, &[("UPLOAD_BATCHES_IN_FLIGHT", in_flight)]);
    let kinds = table_kinds(&mut env.remote());
    assert!(
        kinds.contains(&("meter_readings".into(), "distributed".into())),
        "{kinds:?}"
    );
    let mut l = env.local();
    insert_readings(&mut l, 3_000, "2024-01-01 00:00:00.000001", "1 second");
    let original = snapshot(&mut l);
    let mut g = Gen::new(1000);
    for round in 0..3 {
        let before = count(&mut l, "SELECT count(*) FROM meter_readings");
        let mut daemon = Daemon::spawn(&["once"], &env.env.map);
        crate::support::wait_until(Duration::from_secs(60), || {
            count(&mut l, "SELECT count(*) FROM meter_readings") < before || !daemon.is_running()
        });
        thread::sleep(Duration::from_millis(u64::arbitrary(&mut g) % 200));
        daemon.kill();
        let left = count(&mut l, "SELECT count(*) FROM meter_readings");
        eprintln!("{layout:?}, {in_flight} in flight, round {round}: killed with {left} readings left");
    }
    let v = once_ok(&env);
    assert_eq!(v["uploadResult"]["recordsQuarantined"], 0, "{v}");
    assert_exactly_once(&mut l, &mut env.remote(), &original);
    assert_eq!(
        remote_order_inversions(&mut env.remote()),
        0,
        "readings out of claim order"
    );
    env.assert_site_column();
    let prepared = count(&mut env.remote(), "SELECT count(*) FROM pg_prepared_xacts");
    assert_eq!(prepared, 0, "prepared transactions left on the coordinator");
    if in_flight != "1" {
        // Batches went up chained (UPLOAD_LEAD / UPLOAD_AFTER ran on Citus), not only the plain statement.
        assert!(
            count(&mut env.remote(), "SELECT count(*) FROM sync_upload_chain") > 0,
            "no batch went up chained"
        );
    }
}

#[test]
fn by_meter_killed_mid_drain_then_recovered() {
    killed_mid_drain_then_recovered(Layout::ByMeter, "1");
}

#[test]
fn by_site_killed_mid_drain_then_recovered() {
    killed_mid_drain_then_recovered(Layout::BySite, "1");
}

#[test]
fn by_meter_batches_in_flight_killed_mid_drain_then_recovered() {
    killed_mid_drain_then_recovered(Layout::ByMeter, "3");
}

#[test]
fn by_site_batches_in_flight_killed_mid_drain_then_recovered() {
    killed_mid_drain_then_recovered(Layout::BySite, "3");
}

// ----- Download of reference tables -----

fn rows(c: &mut Client, sql: &str) -> Vec<String> {
    let mut v: Vec<String> = c
        .query(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect();
    v.sort();
    v
}

const METERS: &str = "SELECT ROW(meter_id, name, location_id, meter_type, unit, configuration)::text FROM meters";
const TENANTS: &str = "SELECT ROW(tenant_id, name, configuration, metadata)::text FROM tenant";

fn download_of_reference_tables(layout: Layout) {
    let env = CitusEnv::new(layout, &[]);
    let mut r = env.remote();
    r.batch_execute(
        "INSERT INTO meters (meter_id, name, location_id, meter_type, unit, configuration)
         SELECT 'meter-' || g, 'Meter ' || g, CASE WHEN g % 3 = 0 THEN NULL ELSE 'loc-' || (g % 7) END,
                'electric', 'kWh', CASE WHEN g % 2 = 0 THEN jsonb_build_object('scale', 1.50, 'g', g) END
         FROM generate_series(1, 100) g;
         INSERT INTO tenant (tenant_id, name, configuration, metadata)
         SELECT 'tenant-' || g, 'Tenant ' || g, jsonb_build_object('plan', 'basic'), 'null'::jsonb
         FROM generate_series(1, 10) g;",
    )
    .expect("seeding meters and tenants");
    let kinds = table_kinds(&mut r);
    for t in ["meters", "tenant"] {
        assert!(kinds.contains(&(t.into(), "reference".into())), "{kinds:?}");
    }
    let v = once_ok(&env);
    assert_eq!(v["meterDownloadResult"]["newMeters"], 100, "{v}");
    assert_eq!(v["tenantDownloadResult"]["newTenants"], 10, "{v}");
    let mut l = env.local();
    assert_eq!(rows(&mut l, METERS), rows(&mut r, METERS));
    assert_eq!(rows(&mut l, TENANTS), rows(&mut r, TENANTS));

    r.batch_execute(
        "INSERT INTO meters (meter_id, name, meter_type, unit) VALUES ('meter-new-1', 'n1', 'gas', 'm³'),
                                                                      ('meter-new-2', 'n2', 'gas', 'm³');
         UPDATE meters SET name = name || ' (moved)' WHERE meter_id IN ('meter-1','meter-2','meter-3','meter-4','meter-5');
         DELETE FROM meters WHERE meter_id IN ('meter-10', 'meter-11', 'meter-12');
         UPDATE tenant SET metadata = '{\"tier\": 2}' WHERE tenant_id = 'tenant-1';",
    )
    .expect("changing meters and tenants");
    let v = once_ok(&env);
    let m = &v["meterDownloadResult"];
    assert_eq!(
        (
            m["newMeters"].as_u64(),
            m["updatedMeters"].as_u64(),
            m["deletedMeters"].as_u64()
        ),
        (Some(2), Some(5), Some(3)),
        "{v}"
    );
    assert_eq!(v["tenantDownloadResult"]["updatedTenants"], 1, "{v}");
    assert_eq!(rows(&mut l, METERS), rows(&mut r, METERS));
    assert_eq!(rows(&mut l, TENANTS), rows(&mut r, TENANTS));
    let v = once_ok(&env);
    assert_eq!(v["meterDownloadResult"]["updatedMeters"], 0, "a no-op download: {v}");
}

#[test]
fn by_meter_download_of_reference_meters_and_tenants() {
    download_of_reference_tables(Layout::ByMeter);
}

#[test]
fn by_site_download_of_reference_meters_and_tenants() {
    download_of_reference_tables(Layout::BySite);
}

// ----- Poison rejected by a worker (XX000) -----

/// A CHECK constraint on the distributed table is checked on the workers; Citus reports the violation as
/// XX000 (its COPY path drops the SQLSTATE). Probing proves the two readings at fault: they are quarantined
/// with the worker's message, the other 298 arrive.
fn poison_rejected_by_a_worker(layout: Layout) {
    let env = CitusEnv::new(layout, &[("BATCH_SIZE", "100")]);
    env.remote()
        .batch_execute("ALTER TABLE meter_readings ADD CONSTRAINT no_thirteen CHECK (value <> 13)")
        .expect("constraint");
    let mut l = env.local();
    insert_readings(&mut l, 300, "2024-03-01 00:00:00", "1 minute");
    l.batch_execute(
        "UPDATE meter_readings SET value = 13 WHERE id IN (SELECT id FROM meter_readings ORDER BY id OFFSET 37 LIMIT 1)
                                                 OR id IN (SELECT id FROM meter_readings ORDER BY id OFFSET 260 LIMIT 1)",
    )
    .expect("poisoning two readings");
    let mut poison_ids: Vec<i64> = l
        .query("SELECT id::int8 FROM meter_readings WHERE value = 13", &[])
        .expect("poison ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    poison_ids.sort();
    assert_eq!(poison_ids.len(), 2);
    let original = snapshot(&mut l);
    let r = env.manager().sync_readings(Duration::from_secs(3600));
    assert!(r.success, "{r:?}");
    assert_eq!((r.records_uploaded, r.records_quarantined), (298, 2), "{r:?}");
    let q = quarantine::list(&env.env.conns.local).expect("list");
    assert_eq!(q.iter().map(|x| x.id).collect::<Vec<_>>(), poison_ids);
    for x in &q {
        assert!(x.error.contains("no_thirteen"), "{x:?}");
        assert_eq!(x.sqlstate.as_deref(), Some("XX000"), "{x:?}");
    }
    assert_eq!(count(&mut env.remote(), "SELECT count(*) FROM meter_readings"), 298);
    // Fixed on the central, retried: every reading arrives once.
    env.remote()
        .batch_execute("ALTER TABLE meter_readings DROP CONSTRAINT no_thirteen")
        .expect("drop");
    assert_eq!(quarantine::retry(&env.env.conns.local, &[]).expect("retry"), 2);
    let r = env.manager().sync_readings(Duration::from_secs(3600));
    assert!(r.success && r.records_uploaded == 2, "{r:?}");
    assert_exactly_once(&mut l, &mut env.remote(), &original);
    env.assert_site_column();
}

#[test]
fn by_meter_poison_rejected_by_a_worker_is_quarantined() {
    poison_rejected_by_a_worker(Layout::ByMeter);
}

#[test]
fn by_site_poison_rejected_by_a_worker_is_quarantined() {
    poison_rejected_by_a_worker(Layout::BySite);
}

/// A lone reading rejected with XX000 proves nothing on its own (a fault of the central's own reads the same):
/// it is held, not quarantined, until a queued reading from outside its batch passes the same probe.
#[test]
fn a_lone_reading_rejected_by_a_worker_waits_for_a_control_before_quarantine() {
    let env = CitusEnv::new(Layout::ByMeter, &[("BATCH_SIZE", "100")]);
    env.remote()
        .batch_execute("ALTER TABLE meter_readings ADD CONSTRAINT no_thirteen CHECK (value <> 13)")
        .expect("constraint");
    let mut l = env.local();
    insert_readings(&mut l, 1, "2024-03-01 00:00:00", "1 minute");
    l.batch_execute("UPDATE meter_readings SET value = 13")
        .expect("poisoning the reading");
    let r = env.manager().sync_readings(Duration::from_secs(3600));
    assert!(!r.success, "{r:?}");
    assert_eq!(r.records_quarantined, 0, "{r:?}");
    let error = r.error.clone().unwrap_or_default();
    assert!(
        error.contains("no other reading is queued") && error.contains("no_thirteen"),
        "the error says why nothing was quarantined, and the worker's message: {error}"
    );
    assert!(quarantine::list(&env.env.conns.local).expect("list").is_empty());
    assert_eq!(
        count(&mut l, "SELECT count(*) FROM meter_readings"),
        1,
        "the reading is kept queued"
    );

    insert_readings(&mut l, 5, "2024-03-02 00:00:00", "1 minute");
    let r = env.manager().sync_readings(Duration::from_secs(3600));
    assert!(r.success, "{r:?}");
    assert_eq!((r.records_uploaded, r.records_quarantined), (5, 1), "{r:?}");
    let q = quarantine::list(&env.env.conns.local).expect("list");
    assert_eq!(q.len(), 1, "{q:?}");
    assert!(q[0].error.contains("no_thirteen"), "{q:?}");
    assert_eq!(count(&mut env.remote(), "SELECT count(*) FROM meter_readings"), 5);
}

/// Layout (b) without UPLOAD_SOURCE_COLUMN: the central's table is distributed by a column the upload leaves
/// empty. That is the central's setup, not the readings: the part fails naming the variable to set, nothing is
/// quarantined, and with the variable set every reading goes up once.
#[test]
fn by_site_without_the_source_column_is_a_central_fault_naming_the_variable() {
    let (pair, workers) = citus_pair();
    let mut env = Env::builder().on(pair).vars(&[("BATCH_SIZE", "50")]).build();
    apply_layout(&mut env.remote, Layout::BySite);
    let env = CitusEnv {
        env,
        layout: Layout::BySite,
        _workers: workers,
    };
    let mut l = env.local();
    insert_readings(&mut l, 120, "2024-03-01 00:00:00", "1 minute");
    let original = snapshot(&mut l);
    let r = env.manager().sync_readings(Duration::from_secs(3600));
    assert!(!r.success, "{r:?}");
    assert_eq!(r.records_quarantined, 0, "{r:?}");
    let error = r.error.clone().unwrap_or_default();
    assert!(
        error.contains("UPLOAD_SOURCE_COLUMN") && error.contains("22004"),
        "the error names the variable to set: {error}"
    );
    assert!(quarantine::list(&env.env.conns.local).expect("list").is_empty());
    assert_eq!(count(&mut l, "SELECT count(*) FROM meter_readings"), 120);

    let mut map = env.env.map.clone();
    map.insert("UPLOAD_SOURCE_COLUMN".into(), SITE_COLUMN.into());
    let out = run_command(&["once"], &map);
    assert!(out.status.success(), "once: {}\n{}", out.stdout, out.stderr);
    assert_exactly_once(&mut l, &mut env.remote(), &original);
    env.assert_site_column();
}

// ----- The ledger key reported against a shard -----

/// A batch uploaded twice: the second time Citus reports the duplicate ledger key against the shard's
/// constraint (`sync_upload_ledger_pkey_<shardid>`, no table field). It is "already in": nothing inserted
/// twice. Then the ledger prune works on the distributed or reference ledger.
fn shard_named_ledger_conflict(layout: Layout) {
    let env = CitusEnv::new(layout, &[]);
    let mut l = env.local();
    insert_readings(&mut l, 120, "2024-05-01 00:00:00", "1 second");
    let original = snapshot(&mut l);
    let m = env.manager();
    let batch = m.claim_batch(None).expect("claim").expect("a batch");
    assert_eq!(
        m.upload_batch(&batch).expect("first upload"),
        UploadOutcome::Uploaded(50)
    );
    let again = m.upload_batch(&batch);
    assert!(
        matches!(again, Ok(UploadOutcome::AlreadyPresent)),
        "a duplicate ledger key on a shard is 'already in': {again:?}"
    );
    assert_eq!(count(&mut env.remote(), "SELECT count(*) FROM meter_readings"), 50);
    m.finish_batch(&batch.batch_id).expect("finish");
    let r = m.sync_readings(Duration::from_secs(3600));
    assert!(r.success && r.records_uploaded == 70, "{r:?}");
    assert_exactly_once(&mut l, &mut env.remote(), &original);
    assert_eq!(count(&mut env.remote(), "SELECT count(*) FROM sync_upload_ledger"), 3);
    assert_eq!(m.prune_ledger(Duration::ZERO).expect("prune"), 3);
    assert_eq!(count(&mut env.remote(), "SELECT count(*) FROM sync_upload_ledger"), 0);
}

#[test]
fn by_meter_duplicate_ledger_key_on_a_shard_is_already_in() {
    shard_named_ledger_conflict(Layout::ByMeter);
}

#[test]
fn by_site_duplicate_ledger_key_on_a_shard_is_already_in() {
    shard_named_ledger_conflict(Layout::BySite);
}
