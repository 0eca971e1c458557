//! Integration tests: the central database's own faults, on plain PostgreSQL — a time-partitioned
//! meter_readings with a gap (23514 with no constraint name), an int4 sequence at its maximum (2200H), a
//! dropped INSERT grant (42501, through the least-privilege role of sql/least-privilege-remote-role.sql), a
//! feature the central does not support (0A000) and a missing column (42703). In each case nothing is
//! quarantined, the upload part fails naming the cause in an operator's words, the `central_fault` alert is
//! raised once, and after the fix the readings go up exactly once on the first cycle. A quickcheck property
//! over random sequences of central faults and fixes (and link cuts through a FaultProxy); and the warning of
//! `check-config` and /status when the remote id is int4 and its sequence is past half.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use postgres::Client;
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};

use sync_process::config::Config;
use sync_process::db::ConnectionManager;
use sync_process::shutdown::Shutdown;
use sync_process::upload::UploadSyncManager;

use crate::support::daemon::{run_command, Daemon};
use crate::support::env::{self, count, Env, Migrate};
use crate::support::pg::{bin_dir, TestDb, HOST, USER};
use crate::support::readings::{assert_exactly_once, insert_readings, snapshot, snapshot_of};
use crate::support::wait_until;

const PATIENCE: Duration = Duration::from_secs(60);
const LEAST_PRIVILEGE_SQL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/sql/least-privilege-remote-role.sql");

/// The central's meter_readings partitioned by month (primary key with the partition column), December 2024
/// only: January's readings have no partition.
const PARTITIONED: &str = "
CREATE TABLE meter_readings (
  id SERIAL, meter_id VARCHAR(255) NOT NULL, timestamp TIMESTAMP NOT NULL, value NUMERIC NOT NULL,
  unit VARCHAR(50) NOT NULL, metadata JSONB, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
  PRIMARY KEY (id, timestamp)
) PARTITION BY RANGE (timestamp);
CREATE TABLE meter_readings_2024_12 PARTITION OF meter_readings FOR VALUES FROM ('2024-12-01') TO ('2025-01-01');";

/// `<prefix>_<pid>_<n>`: roles are global to the shared server.
fn unique_role() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "sync_cf_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs sql/least-privilege-remote-role.sql against `db` as the superuser, creating `role`.
fn least_privilege_role(db: &TestDb, role: &str) {
    let out = Command::new(bin_dir().join("psql"))
        .args([
            "-X",
            "-q",
            "-h",
            HOST,
            "-U",
            USER,
            "-p",
            &db.port().to_string(),
            "-d",
            db.name(),
        ])
        .args(["-v", &format!("role={role}"), "-v", "password=not-checked-here"])
        .args(["-f", LEAST_PRIVILEGE_SQL])
        .output()
        .unwrap_or_else(|e| panic!("running psql: {e}"));
    assert!(
        out.status.success(),
        "least-privilege script: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An [`Env`] whose remote was prepared by `before_migrate` (e.g. a partitioned table, which the seed's IF NOT
/// EXISTS then keeps), then migrated; its variables log the daemon in as a fresh least-privilege role
/// (returned), with batches of 100. `conns` and `cfg` stay the superuser's.
fn setup(before_migrate: &str, proxy: bool) -> (Env, String) {
    let before = before_migrate.to_string();
    let mut builder = Env::builder().migrate(Migrate::Nothing).edit(move |pair, _| {
        pair.remote
            .client()
            .batch_execute(&before)
            .expect("preparing the central");
    });
    if proxy {
        builder = builder.remote_via_proxy();
    }
    let mut env = builder.build();
    env::migrate(&env.pair, Migrate::Both);
    let role = unique_role();
    least_privilege_role(&env.pair.remote, &role);
    for (k, v) in [
        ("POSTGRES_CLIENT_USER", role.as_str()),
        ("BATCH_SIZE", "100"),
        // Only the central-fault alert is looked at here.
        ("ALERT_AFTER_FAILURES", "1000"),
        ("LOG_LEVEL", "info"),
    ] {
        env.map.insert(k.into(), v.into());
    }
    (env, role)
}

/// Lines of `text` containing `needle`.
fn lines_with<'t>(text: &'t str, needle: &str) -> Vec<&'t str> {
    text.lines().filter(|l| l.contains(needle)).collect()
}

fn finished_cycles(text: &str) -> usize {
    text.lines()
        .filter(|l| l.contains("sync cycle ") && l.contains(" finished in "))
        .count()
}

/// One central fault, end to end.
struct Fault {
    /// SQL run on the remote before migrate.
    before_migrate: &'static str,
    /// SQL (as the superuser, on the remote) that breaks the central; `{role}` is the daemon's role.
    breaks: &'static str,
    /// SQL that fixes it.
    fix: &'static str,
    /// Readings queued locally: (how many, first timestamp, step).
    readings: (i64, &'static str, &'static str),
    /// Readings that go up before the faulty batch.
    before_fault: i64,
    /// Words the upload error and the alert must hold (`{role}` as above).
    words: &'static [&'static str],
}

fn held_alerted_and_up_after_the_fix(f: Fault) {
    let (env, role) = setup(f.before_migrate, false);
    let (pair, map) = (&env.pair, &env.map);
    let sub = |s: &str| s.replace("{role}", &role);
    pair.remote
        .client()
        .batch_execute(&sub(f.breaks))
        .expect("breaking the central");
    let mut l = pair.local.client();
    let (n, start, step) = f.readings;
    insert_readings(&mut l, n, start, step);
    let original = snapshot(&mut l);
    let words: Vec<String> = f.words.iter().map(|w| sub(w)).collect();

    // The first cycle: the part fails naming the cause; nothing is quarantined.
    let out = run_command(&["once"], map);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", out.stdout, out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("once JSON");
    let u = &v["uploadResult"];
    assert_eq!(u["success"], false, "{v}");
    assert_eq!(u["recordsQuarantined"], 0, "{v}");
    assert_eq!(u["recordsUploaded"], f.before_fault, "{v}");
    let error = u["error"].as_str().unwrap_or("");
    for w in &words {
        assert!(error.contains(w.as_str()), "the upload error names {w:?}: {error}");
    }
    // The daemon: the alert is raised once, naming the cause, over several failing cycles.
    let mut d = Daemon::spawn(&["run"], map);
    assert!(
        d.wait_for_stderr("ALERT raised: central_fault: ", PATIENCE),
        "the central_fault alert is raised"
    );
    let at_raise = finished_cycles(&d.stderr_text());
    assert!(
        wait_until(PATIENCE, || finished_cycles(&d.stderr_text()) >= at_raise + 2),
        "two more cycles"
    );
    d.signal("TERM");
    assert_eq!(d.wait_timeout(PATIENCE).and_then(|s| s.code()), Some(0));
    let err = d.stderr_text();
    let raised = lines_with(&err, "ALERT raised: central_fault: ");
    assert_eq!(raised.len(), 1, "raised once: {raised:#?}");
    for w in &words {
        assert!(raised[0].contains(w.as_str()), "the alert names {w:?}: {}", raised[0]);
    }
    assert_eq!(
        count(&mut l, "SELECT count(*) FROM sync_quarantine"),
        0,
        "nothing quarantined"
    );
    assert_eq!(
        count(&mut l, "SELECT count(*) FROM meter_readings"),
        n - f.before_fault,
        "the rest stays queued"
    );

    // Fixed: the first cycle after the fix takes every reading up, once.
    pair.remote
        .client()
        .batch_execute(&sub(f.fix))
        .expect("fixing the central");
    let out = run_command(&["once"], map);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("once JSON");
    assert_eq!(v["uploadResult"]["recordsUploaded"], n - f.before_fault, "{v}");
    assert_exactly_once(&mut l, &mut pair.remote.client(), &original);
}

#[test]
fn a_missing_partition_is_held_alerted_and_goes_up_after_the_fix() {
    // 150 readings on the last day of December, then 150 in January: the second batch straddles the month.
    held_alerted_and_up_after_the_fix(Fault {
        before_migrate: PARTITIONED,
        breaks: "",
        fix: "CREATE TABLE meter_readings_2025_01 PARTITION OF meter_readings
              FOR VALUES FROM ('2025-01-01') TO ('2025-02-01')",
        readings: (300, "2024-12-31 21:30:00", "1 minute"),
        before_fault: 100,
        words: &["meter_readings", "no partition", "2025-01-01 00:00:00"],
    });
}

#[test]
fn an_int4_sequence_at_its_maximum_is_held_alerted_and_goes_up_after_the_fix() {
    held_alerted_and_up_after_the_fix(Fault {
        before_migrate: "",
        breaks: "SELECT setval('meter_readings_id_seq', 2147483647)",
        fix: "ALTER TABLE meter_readings ALTER COLUMN id TYPE bigint; ALTER SEQUENCE meter_readings_id_seq AS bigint",
        readings: (120, "2024-02-01 00:00:00", "1 minute"),
        before_fault: 0,
        words: &["meter_readings_id_seq", "maximum", "bigint"],
    });
}

#[test]
fn a_dropped_insert_grant_is_held_alerted_and_goes_up_after_the_fix() {
    held_alerted_and_up_after_the_fix(Fault {
        before_migrate: "",
        breaks: "REVOKE INSERT ON meter_readings FROM {role}",
        fix: "GRANT INSERT ON meter_readings TO {role}",
        readings: (120, "2024-02-01 00:00:00", "1 minute"),
        before_fault: 0,
        words: &["{role}", "INSERT", "meter_readings"],
    });
}

#[test]
fn an_unsupported_feature_is_held_alerted_and_goes_up_after_the_fix() {
    // A stand-in for TimescaleDB < 2.11, whose compressed chunks refuse late rows with exactly this SQLSTATE
    // and message: readings before June are "compressed".
    held_alerted_and_up_after_the_fix(Fault {
        before_migrate: "",
        breaks: "CREATE FUNCTION compressed() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN
                   IF NEW.timestamp < '2024-06-01' THEN
                     RAISE EXCEPTION 'insert into a compressed chunk that has primary or unique constraint is not supported'
                       USING ERRCODE = 'feature_not_supported';
                   END IF;
                   RETURN NEW;
                 END $$;
                 CREATE TRIGGER compressed BEFORE INSERT ON meter_readings FOR EACH ROW EXECUTE FUNCTION compressed();",
        fix: "DROP TRIGGER compressed ON meter_readings",
        readings: (120, "2024-05-31 23:00:00", "1 minute"),
        before_fault: 0,
        words: &["not supported", "0A000", "2024-05-31 23:00:00"],
    });
}

#[test]
fn a_missing_column_is_held_alerted_and_goes_up_after_the_fix() {
    held_alerted_and_up_after_the_fix(Fault {
        before_migrate: "",
        breaks: "ALTER TABLE meter_readings DROP COLUMN metadata",
        fix: "ALTER TABLE meter_readings ADD COLUMN metadata JSONB",
        readings: (120, "2024-02-01 00:00:00", "1 minute"),
        before_fault: 0,
        words: &["meter_readings", "column", "metadata"],
    });
}

// ----- The int4 warning -----

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    raw.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

#[test]
fn check_config_and_status_warn_when_the_int4_id_sequence_is_past_half() {
    let (env, _) = setup("", false);
    let (pair, mut map) = (&env.pair, env.map.clone());
    let warning = "meter_readings_id_seq";
    // At 40 %: no warning.
    pair.remote
        .client()
        .batch_execute("SELECT setval('meter_readings_id_seq', 858993459)")
        .expect("setval");
    let out = run_command(&["check-config"], &map);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert!(
        !format!("{}{}", out.stdout, out.stderr).contains(warning),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    // At 70 %: check-config warns, naming the sequence, how full it is and what to do.
    pair.remote
        .client()
        .batch_execute("SELECT setval('meter_readings_id_seq', 1503238553)")
        .expect("setval");
    let out = run_command(&["check-config"], &map);
    assert!(
        out.status.success(),
        "a warning is not a failure: {}\n{}",
        out.stdout,
        out.stderr
    );
    let text = format!("{}{}", out.stdout, out.stderr);
    let line = text
        .lines()
        .find(|l| l.contains(warning))
        .unwrap_or_else(|| panic!("no warning: {text}"));
    for w in ["integer", "70 %", "bigint"] {
        assert!(line.contains(w), "the warning names {w:?}: {line}");
    }
    // /status carries the same warning.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    map.insert("STATUS_BIND".into(), format!("127.0.0.1:{port}"));
    map.insert("SYNC_INTERVAL_SECONDS".into(), "3600".into());
    let mut d = Daemon::spawn(&["run"], &map);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut last = serde_json::Value::Null;
    let found = wait_until(PATIENCE, || {
        if let Some(v) = http_get(addr, "/status").and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok()) {
            last = v;
        }
        last["warnings"].as_array().is_some_and(|w| {
            w.iter()
                .any(|x| x.as_str().is_some_and(|s| s.contains(warning) && s.contains("70 %")))
        })
    });
    assert!(found, "/status warns: {last}");
    d.signal("TERM");
    assert_eq!(d.wait_timeout(PATIENCE).and_then(|s| s.code()), Some(0));
}

// ----- The property -----

/// A fault of the central (or of the link to it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CentralFault {
    /// The partition of month 1..=4 of 2024 is detached (its readings have nowhere to go; the ones already
    /// in it stay in the detached table and come back with it).
    Gap(u8),
    /// The id sequence is capped at its current value.
    Sequence,
    /// INSERT on meter_readings is revoked from the daemon's role.
    Grant,
    /// The link is cut and refuses new connections.
    Cut,
}

#[derive(Clone, Debug)]
enum Op {
    /// Queue readings at the end of month 1..=3 (some spill into the next month).
    Insert(u8, u8),
    Break(CentralFault),
    Fix(CentralFault),
    Sync,
}

impl Arbitrary for CentralFault {
    fn arbitrary(g: &mut Gen) -> CentralFault {
        match u8::arbitrary(g) % 4 {
            0 => CentralFault::Gap(1 + u8::arbitrary(g) % 4),
            1 => CentralFault::Sequence,
            2 => CentralFault::Grant,
            _ => CentralFault::Cut,
        }
    }
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Op {
        match u8::arbitrary(g) % 8 {
            0 | 1 => Op::Insert(1 + u8::arbitrary(g) % 3, 1 + u8::arbitrary(g) % 12),
            2 | 3 => Op::Break(CentralFault::arbitrary(g)),
            4 => Op::Fix(CentralFault::arbitrary(g)),
            _ => Op::Sync,
        }
    }
}

/// The property's world: one [`Env`], reused for every case (truncated between cases), the remote partitioned
/// by month (January to April 2024) and reached through its proxy as a least-privilege role. Field order: the
/// role's pools close before the Env.
struct World {
    conns: ConnectionManager,
    cfg: Config,
    role: String,
    env: Env,
}

const MONTHS_PARTITIONED: &str = "
CREATE TABLE meter_readings (
  id SERIAL, meter_id VARCHAR(255) NOT NULL, timestamp TIMESTAMP NOT NULL, value NUMERIC NOT NULL,
  unit VARCHAR(50) NOT NULL, metadata JSONB, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
  PRIMARY KEY (id, timestamp)
) PARTITION BY RANGE (timestamp);
CREATE TABLE mr_1 PARTITION OF meter_readings FOR VALUES FROM ('2024-01-01') TO ('2024-02-01');
CREATE TABLE mr_2 PARTITION OF meter_readings FOR VALUES FROM ('2024-02-01') TO ('2024-03-01');
CREATE TABLE mr_3 PARTITION OF meter_readings FOR VALUES FROM ('2024-03-01') TO ('2024-04-01');
CREATE TABLE mr_4 PARTITION OF meter_readings FOR VALUES FROM ('2024-04-01') TO ('2024-05-01');";

impl World {
    fn new() -> World {
        let (env, role) = setup(MONTHS_PARTITIONED, true);
        let mut map = env.map.clone();
        for (k, v) in [
            ("BATCH_SIZE", "5"),
            ("MAX_CONNECTION_RETRIES", "0"),
            ("MAX_QUERY_RETRIES", "0"),
            ("RETRY_BASE_DELAY_MS", "1"),
            ("DB_CONNECTION_TIMEOUT_MS", "1000"),
        ] {
            map.insert(k.into(), v.into());
        }
        let cfg = Config::from_map(&map).expect("test configuration");
        let conns = ConnectionManager::new(&cfg, Shutdown::new()).expect("connection manager");
        World { conns, cfg, role, env }
    }

    fn remote(&self) -> Client {
        self.env.pair.remote.client()
    }

    fn apply(&self, op: &Op, on: bool) {
        let (Op::Break(f) | Op::Fix(f)) = op else { return };
        let sql = match (f, on) {
            (CentralFault::Gap(m), true) => format!(
                "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = 'mr_{m}'::regclass) THEN
                   ALTER TABLE meter_readings DETACH PARTITION mr_{m}; END IF; END $$"
            ),
            (CentralFault::Gap(m), false) => format!(
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = 'mr_{m}'::regclass) THEN
                   ALTER TABLE meter_readings ATTACH PARTITION mr_{m}
                   FOR VALUES FROM ('2024-0{m}-01') TO ('2024-0{}-01'); END IF; END $$",
                m + 1
            ),
            (CentralFault::Sequence, true) => {
                "DO $$ BEGIN EXECUTE format('ALTER SEQUENCE meter_readings_id_seq MAXVALUE %s',
                   (SELECT greatest(last_value, 2) FROM meter_readings_id_seq)); END $$"
                    .to_string()
            }
            (CentralFault::Sequence, false) => "ALTER SEQUENCE meter_readings_id_seq NO MAXVALUE".to_string(),
            (CentralFault::Grant, true) => format!("REVOKE INSERT ON meter_readings FROM {}", self.role),
            (CentralFault::Grant, false) => format!("GRANT INSERT ON meter_readings TO {}", self.role),
            (CentralFault::Cut, true) => {
                self.env.proxy().set_refuse(true);
                self.env.proxy().cut_all();
                return;
            }
            (CentralFault::Cut, false) => {
                self.env.proxy().set_refuse(false);
                return;
            }
        };
        self.remote()
            .batch_execute(&sql)
            .unwrap_or_else(|e| panic!("{op:?}: {}", sync_process::error::describe_pg_error(&e)));
    }

    fn fix_all(&self) {
        for f in [
            CentralFault::Gap(1),
            CentralFault::Gap(2),
            CentralFault::Gap(3),
            CentralFault::Gap(4),
            CentralFault::Sequence,
            CentralFault::Grant,
            CentralFault::Cut,
        ] {
            self.apply(&Op::Fix(f), false);
        }
    }

    /// Empties both sides between cases (with every fault fixed).
    fn reset(&self) {
        self.fix_all();
        self.env
            .pair
            .local
            .client()
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS qc_expected AS SELECT meter_id, timestamp, value, unit, metadata
                   FROM meter_readings WITH NO DATA;
                 TRUNCATE meter_readings, sync_upload_batches, sync_quarantine, qc_expected",
            )
            .expect("truncating local");
        self.remote()
            .batch_execute("TRUNCATE meter_readings, sync_upload_ledger")
            .expect("truncating remote");
    }

    fn sync(&self) -> sync_process::upload::UploadSyncResult {
        UploadSyncManager::new(&self.conns, &self.cfg).sync_readings(Duration::from_secs(60))
    }
}

thread_local! {
    static WORLD: RefCell<Option<World>> = const { RefCell::new(None) };
}

// **Feature: database-sync-process, Property 16: Central faults are never poison**
// For any sequence of central faults (a missing partition, a sequence at its maximum, a dropped grant, a cut
// link) and fixes interleaved with queued readings and sync cycles, no reading is ever quarantined, and once
// everything is fixed every reading is on the central exactly once.
fn prop_central_faults_are_never_poison(ops: Vec<Op>) -> TestResult {
    if ops.len() > 12 {
        return TestResult::discard();
    }
    WORLD.with(|w| {
        let w = w.borrow();
        let w = w.as_ref().expect("the property's world");
        w.reset();
        let mut l = w.env.pair.local.client();
        let mut inserted = 0i64;
        for op in &ops {
            match op {
                Op::Insert(month, n) => {
                    // Just before the end of the month, five seconds apart: a batch often straddles two partitions.
                    let last_day = [31, 29, 31][usize::from(*month) - 1];
                    let start = format!("2024-0{month}-{last_day} 23:59:{:02}", 10 + inserted % 40);
                    insert_readings(&mut l, i64::from(*n), &start, "5 seconds");
                    inserted += i64::from(*n);
                    // What must arrive: a copy of every reading queued, kept aside locally.
                    l.batch_execute(&format!(
                        "INSERT INTO qc_expected SELECT meter_id, timestamp, value, unit, metadata FROM meter_readings
                         ORDER BY id DESC LIMIT {n}"
                    ))
                    .expect("keeping the expected readings");
                }
                Op::Break(_) => w.apply(op, true),
                Op::Fix(_) => w.apply(op, false),
                Op::Sync => {
                    let r = w.sync();
                    if r.records_quarantined != 0 {
                        return TestResult::error(format!("{ops:?}: quarantined during {op:?}: {r:?}"));
                    }
                }
            }
        }
        let original = snapshot_of(&mut l, "qc_expected");
        w.fix_all();
        for _ in 0..20 {
            let r = w.sync();
            if r.records_quarantined != 0 {
                return TestResult::error(format!("{ops:?}: quarantined after the fixes: {r:?}"));
            }
            if r.success && !r.backlog_remains {
                break;
            }
        }
        let quarantined = count(&mut l, "SELECT count(*) FROM sync_quarantine");
        let got = snapshot(&mut w.remote());
        let queued = count(&mut l, "SELECT count(*) FROM meter_readings");
        if quarantined != 0 || queued != 0 || got != original {
            return TestResult::error(format!(
                "{ops:?}: {quarantined} quarantined, {queued} still queued, remote holds {} of {}",
                got.len(),
                original.len()
            ));
        }
        TestResult::passed()
    })
}

/// Drops the property's world when the test ends, also when it fails: a client dropped later, with the
/// thread's other locals, would abort the whole test binary.
struct ReleaseWorld;

impl Drop for ReleaseWorld {
    fn drop(&mut self) {
        WORLD.with(|w| drop(w.borrow_mut().take()));
    }
}

#[test]
fn property_16_central_faults_are_never_poison() {
    WORLD.with(|w| *w.borrow_mut() = Some(World::new()));
    let _release = ReleaseWorld;
    QuickCheck::new()
        .tests(100)
        .max_tests(1000)
        .rng(Gen::new(10))
        .quickcheck(prop_central_faults_are_never_poison as fn(Vec<Op>) -> TestResult);
}
