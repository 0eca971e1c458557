//! Integration tests: the service — the main loop, graceful shutdown, run/once, sync_logs, logging, the status
//! API and alerts (Properties 6, 7, 12; Property 11, the cycle's log lines, is a unit test in src/report.rs).
//! Pure properties run without a server; the rest drive the binary against real PostgreSQL through the harness.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use postgres::Client;
use quickcheck::{Arbitrary, Gen, QuickCheck};
use serde_json::Value;

use sync_process::logging::RotatingFile;
use sync_process::scheduler::{self, CycleSlot};
use sync_process::status::{self, PartStats, Snapshot, SyncStatus, DURATION_BUCKETS_MS};

use crate::support::contract::{METER_KEYS, RESULT_KEYS, TENANT_KEYS, UPLOAD_KEYS};
use crate::support::daemon::{run_command, Daemon};
use crate::support::env::{closed_port, count, migrate, Env, Migrate};
use crate::support::pg::{self, env_map, DbPair};
use crate::support::proxy::FaultProxy;
use crate::support::{unique_temp_dir, wait_until};

/// Generous limit for things that should happen within a cycle or two (a liveness bound, not a timing claim).
const PATIENCE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------------------
// Helpers.

fn qc(tests: u64) -> QuickCheck {
    QuickCheck::new().tests(tests).max_tests(tests * 10)
}

/// `n` readings with distinct (meter_id, timestamp) and metadata {"seq": i}, i in 0..n.
fn seed_readings(c: &mut Client, n: i64) {
    c.execute(
        "INSERT INTO meter_readings (meter_id, timestamp, value, unit, metadata)
         SELECT 'm' || (i % 10), TIMESTAMP '2024-01-01' + i * INTERVAL '1 second', (i::numeric / 100), 'kWh',
                jsonb_build_object('seq', i)
         FROM generate_series(0, $1::bigint - 1) AS i",
        &[&n],
    )
    .expect("seeding readings");
}

fn seed_meters_and_tenants(remote: &mut Client, meters: i64, tenants: i64) {
    remote
        .execute(
            "INSERT INTO meters (meter_id, name, meter_type, unit)
             SELECT 'meter-' || i, 'Meter ' || i, 'electricity', 'kWh' FROM generate_series(1, $1::bigint) AS i",
            &[&meters],
        )
        .expect("seeding meters");
    remote
        .execute(
            "INSERT INTO tenant (tenant_id, name) SELECT 'tenant-' || i, 'Tenant ' || i FROM generate_series(1, $1::bigint) AS i",
            &[&tenants],
        )
        .expect("seeding tenants");
}

/// (rows, distinct seq values) of meter_readings.
fn readings(c: &mut Client) -> (i64, i64) {
    let row = c
        .query_one(
            "SELECT count(*), count(DISTINCT metadata->>'seq') FROM meter_readings",
            &[],
        )
        .expect("counting readings");
    (row.get(0), row.get(1))
}

/// Every seq of meter_readings, sorted.
fn seqs(c: &mut Client) -> Vec<i64> {
    c.query("SELECT (metadata->>'seq')::bigint FROM meter_readings ORDER BY 1", &[])
        .expect("reading seqs")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A bare HTTP/1.0 GET: (status code, body).
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

fn get_json(addr: SocketAddr, path: &str) -> Option<Value> {
    let (code, body) = http_get(addr, path)?;
    (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
}

/// `name{labels} value` lines of a Prometheus exposition, as a map from `name{labels}` to the value text.
fn parse_metrics(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

/// Lines of `text` containing `needle`.
fn occurrences(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

/// Number of `sync cycle N finished` lines.
fn finished_cycles(text: &str) -> usize {
    text.lines()
        .filter(|l| l.contains("sync cycle ") && l.contains(" finished in "))
        .count()
}

/// The env_logger timestamp of a log line (`[2024-01-01T00:00:00.123Z INFO ...`); RFC 3339 with millis sorts
/// as text.
fn stamp(line: &str) -> Option<&str> {
    line.strip_prefix('[')?.split_whitespace().next()
}

/// (start, end) timestamps of each cycle that ran its parts (held the lock) in a daemon's stderr.
fn cycle_intervals(text: &str) -> Vec<(String, String)> {
    let mut open: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.split("sync cycle ").nth(1) else {
            continue;
        };
        let n = rest.split_whitespace().next().unwrap_or("").to_string();
        let Some(t) = stamp(line) else { continue };
        if rest.contains(" starting: ") {
            open.insert(n, t.to_string());
        } else if rest.contains(" finished in ") {
            if let Some(start) = open.remove(&n) {
                out.push((start, t.to_string()));
            }
        }
    }
    out
}

/// A tiny HTTP server for webhooks: records each request body; answers 200 unless `hang`, in which case it
/// accepts and never answers (and notes when the client gives up).
struct WebhookSink {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<String>>>,
    accepted: Arc<AtomicUsize>,
    closed_by_client: Arc<AtomicUsize>,
}

impl WebhookSink {
    fn start(hang: bool) -> WebhookSink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("webhook listener");
        let addr = listener.local_addr().expect("webhook addr");
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed_by_client = Arc::new(AtomicUsize::new(0));
        let (b, a, c) = (bodies.clone(), accepted.clone(), closed_by_client.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                a.fetch_add(1, Ordering::SeqCst);
                let (b, c) = (b.clone(), c.clone());
                thread::spawn(move || {
                    if hang {
                        // Never answer; read until the client closes.
                        let mut buf = [0u8; 4096];
                        while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
                        c.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut raw = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => raw.extend_from_slice(&buf[..n]),
                        }
                        let text = String::from_utf8_lossy(&raw).to_string();
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let len = head
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("content-length")
                                        .then(|| v.trim().parse::<usize>().ok())?
                                })
                                .unwrap_or(0);
                            if body.len() >= len {
                                b.lock().expect("bodies").push(body.to_string());
                                break;
                            }
                        }
                    }
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                });
            }
        });
        WebhookSink {
            addr,
            bodies,
            accepted,
            closed_by_client,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook?token=not-for-logs", self.addr)
    }

    fn payloads(&self) -> Vec<Value> {
        self.bodies
            .lock()
            .expect("bodies")
            .iter()
            .filter_map(|b| serde_json::from_str(b).ok())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Property 6: mutual exclusion.

// **Feature: database-sync-process, Property 6: Sync cycle mutual exclusion**
// For any number of threads each trying any number of times to start a cycle, at most one holds the cycle
// guard at any moment, and the slot is free again once every guard is dropped.
fn prop_cycle_guard_is_exclusive(threads: u8, attempts: u8) -> bool {
    let threads = usize::from(threads % 6) + 2;
    let attempts = usize::from(attempts % 40) + 1;
    let slot = CycleSlot::new();
    let inside = Arc::new(AtomicUsize::new(0));
    let violated = Arc::new(AtomicBool::new(false));
    let entered = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (slot, inside, violated, entered) = (slot.clone(), inside.clone(), violated.clone(), entered.clone());
            thread::spawn(move || {
                for _ in 0..attempts {
                    if let Some(guard) = slot.try_enter() {
                        entered.fetch_add(1, Ordering::SeqCst);
                        if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                            violated.store(true, Ordering::SeqCst);
                        }
                        thread::yield_now();
                        inside.fetch_sub(1, Ordering::SeqCst);
                        drop(guard);
                    }
                    thread::yield_now();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("worker");
    }
    !violated.load(Ordering::SeqCst) && entered.load(Ordering::SeqCst) > 0 && !slot.is_busy()
}

#[test]
fn property_6_cycle_guard() {
    qc(100).quickcheck(prop_cycle_guard_is_exclusive as fn(u8, u8) -> bool);
}

// **Feature: database-sync-process, Property 6: Sync cycle mutual exclusion**
// For any sequence of enter/leave operations on one thread, `try_enter` succeeds exactly when no guard is
// alive (a model with one boolean).
fn prop_cycle_guard_model(ops: Vec<bool>) -> bool {
    let slot = CycleSlot::new();
    let mut held = None;
    for enter in ops {
        if enter {
            let got = slot.try_enter();
            if got.is_some() == held.is_some() {
                return false;
            }
            if got.is_some() {
                held = got;
            }
        } else {
            held = None;
        }
        if slot.is_busy() != held.is_some() {
            return false;
        }
    }
    true
}

#[test]
fn property_6_cycle_guard_model() {
    qc(200).quickcheck(prop_cycle_guard_model as fn(Vec<bool>) -> bool);
}

// **Feature: database-sync-process, Property 6: Sync cycle mutual exclusion**
// Two daemons on one local database: their cycles never overlap (the advisory lock), one of them skips and
// says so, and every reading reaches the remote exactly once.
#[test]
fn two_daemons_on_one_local_database_take_turns() {
    let fixture = Env::builder().remote_via_proxy().build();
    let pair = &fixture.pair;
    let n = 3000;
    seed_readings(&mut pair.local.client(), n);
    // Latency makes each cycle's drain take a while, so the other daemon's ticks fall inside it.
    fixture.proxy().set_latency(Duration::from_millis(5));
    let mut a = Daemon::spawn(&["run"], &fixture.map);
    let mut b = Daemon::spawn(&["run"], &fixture.map);
    let mut remote = pair.remote.client();
    assert!(
        wait_until(PATIENCE, || readings(&mut remote).0 >= n),
        "the queue drains"
    );
    // A few more cycles each, so that both have had turns.
    let (fa, fb) = (finished_cycles(&a.stderr_text()), finished_cycles(&b.stderr_text()));
    assert!(wait_until(PATIENCE, || finished_cycles(&a.stderr_text())
        + finished_cycles(&b.stderr_text())
        >= fa + fb + 4));
    a.signal("TERM");
    b.signal("TERM");
    assert_eq!(a.wait_timeout(PATIENCE).and_then(|s| s.code()), Some(0));
    assert_eq!(b.wait_timeout(PATIENCE).and_then(|s| s.code()), Some(0));

    let (ea, eb) = (a.stderr_text(), b.stderr_text());
    let skips = occurrences(&ea, "holds the cycle lock") + occurrences(&eb, "holds the cycle lock");
    assert!(skips >= 1, "one daemon skipped while the other ran a cycle");
    let (ia, ib) = (cycle_intervals(&ea), cycle_intervals(&eb));
    assert!(!ia.is_empty() || !ib.is_empty());
    for (s1, e1) in &ia {
        for (s2, e2) in &ib {
            assert!(
                e1 <= s2 || e2 <= s1,
                "cycles overlap: a [{s1}, {e1}] and b [{s2}, {e2}]"
            );
        }
    }
    assert_eq!(
        readings(&mut remote),
        (n, n),
        "every reading exactly once on the remote"
    );
    assert_eq!(readings(&mut pair.local.client()).0, 0);
}

// ---------------------------------------------------------------------------------------------------------
// Property 7: graceful shutdown.

/// A migrated pair with the remote behind a proxy, batches of 100, and `extra` variables.
fn drain_env(extra: &[(&str, &str)]) -> Env {
    Env::builder()
        .remote_via_proxy()
        .vars(&[("BATCH_SIZE", "100")])
        .vars(extra)
        .build()
}

// **Feature: database-sync-process, Property 7: Graceful shutdown completion**
// SIGTERM during a long drain: the batch in flight completes, the drain stops there, the process exits 0, and
// nothing is lost or duplicated (remote + local == original, each reading once).
#[test]
fn sigterm_during_a_long_drain_exits_0_and_loses_nothing() {
    sigterm_during_a_long_drain(&[]);
}

// **Feature: database-sync-process, Property 7: Graceful shutdown completion**
// The same with four batches in flight on four connections.
#[test]
fn sigterm_during_a_long_drain_with_batches_in_flight_exits_0_and_loses_nothing() {
    sigterm_during_a_long_drain(&[("UPLOAD_BATCHES_IN_FLIGHT", "4")]);
}

fn sigterm_during_a_long_drain(extra: &[(&str, &str)]) {
    let fixture = drain_env(extra);
    if !extra.is_empty() {
        // A 2 ms round trip: the drain waits for the central and keeps several batches in flight (on loopback it
        // keeps one).
        fixture.proxy().set_latency(Duration::from_millis(1));
    }
    let pair = &fixture.pair;
    let n = 20_000;
    seed_readings(&mut pair.local.client(), n);
    fixture.proxy().set_latency(Duration::from_millis(10));
    let mut d = Daemon::spawn(&["run"], &fixture.map);
    let mut remote = pair.remote.client();
    assert!(wait_until(PATIENCE, || readings(&mut remote).0 > 0), "the drain starts");
    d.signal("TERM");
    let status = d.wait_timeout(PATIENCE).expect("the daemon exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "exit 0 after SIGTERM");
    let err = d.stderr_text();
    assert!(err.contains("SIGTERM received"), "the signal is logged");

    let (remote_rows, remote_distinct) = readings(&mut remote);
    let mut local = pair.local.client();
    let (local_rows, _) = readings(&mut local);
    assert_eq!(remote_rows, remote_distinct, "no reading twice on the remote");
    assert!(local_rows > 0, "the drain stopped before the queue was empty");
    assert_eq!(remote_rows + local_rows, n, "remote + local == original");
    let mut all = seqs(&mut remote);
    all.extend(seqs(&mut local));
    all.sort_unstable();
    assert_eq!(all, (0..n).collect::<Vec<_>>(), "every reading is in exactly one place");
}

// **Feature: database-sync-process, Property 7: Graceful shutdown completion**
// A second SIGTERM exits at once (143); the next run finishes the job exactly once.
#[test]
fn a_second_sigterm_exits_at_once() {
    let mut fixture = drain_env(&[]);
    let n = 20_000;
    seed_readings(&mut fixture.pair.local.client(), n);
    fixture.proxy().set_latency(Duration::from_millis(20));
    let mut d = Daemon::spawn(&["run"], &fixture.map);
    let mut remote = fixture.pair.remote.client();
    assert!(wait_until(PATIENCE, || readings(&mut remote).0 > 0), "the drain starts");
    d.signal("TERM");
    assert!(d.wait_for_stderr("SIGTERM received", PATIENCE));
    if d.is_running() {
        d.signal("TERM");
        let status = d.wait_timeout(PATIENCE).expect("exits after the second SIGTERM");
        // 143 when the second signal won; 0 if the first one's batch had already finished.
        eprintln!("after the second SIGTERM: {status:?}");
        assert!(matches!(status.code(), Some(143) | Some(0)), "{status:?}");
        if status.code() == Some(143) {
            assert!(d.stderr_text().contains("second SIGTERM received: exiting now"));
        }
    }
    drop(fixture.proxy.take());
    let pair = &fixture.pair;
    // Whatever was in flight is recovered: one `once` finishes the queue, each reading exactly once.
    let out = run_command(&["once"], &env_map(pair));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    assert_eq!(readings(&mut remote), (n, n));
    assert_eq!(readings(&mut pair.local.client()).0, 0);
}

// ---------------------------------------------------------------------------------------------------------
// once, sync_logs, the log file.

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    k.sort();
    k
}

fn sorted(k: &[&str]) -> Vec<String> {
    let mut k: Vec<String> = k.iter().map(|s| s.to_string()).collect();
    k.sort();
    k
}

// **Feature: database-sync-process, Property 11: Comprehensive logging**
// `once` prints the contract's JSON with every field name, exits 0, logs the cycle's lines to stderr and to a
// LOG_FILE in a directory it creates (mode 0640), writes a sync_logs row per part and prunes old ones.
#[test]
fn once_prints_the_contract_json_and_keeps_sync_logs() {
    let Env {
        pair,
        mut local,
        mut remote,
        ..
    } = Env::new(&[]);
    seed_readings(&mut local, 120);
    seed_meters_and_tenants(&mut remote, 3, 2);
    local
        .batch_execute(
            "INSERT INTO sync_logs (sync_type, success, timestamp) VALUES
               ('upload', true, LOCALTIMESTAMP - INTERVAL '100 days'),
               ('upload', true, LOCALTIMESTAMP - INTERVAL '10 days')",
        )
        .expect("old sync_logs rows");
    let dir = unique_temp_dir("sync-process-once-log");
    let log_file = dir.join("new-subdir").join("sync.log");
    let mut env = env_map(&pair);
    env.insert("LOG_FILE".into(), log_file.display().to_string());
    env.insert("LOG_LEVEL".into(), "info".into());

    let out = run_command(&["once"], &env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    let v: Value = serde_json::from_str(out.stdout.trim()).expect("one JSON object on stdout");
    assert_eq!(keys(&v), sorted(RESULT_KEYS));
    assert_eq!(keys(&v["uploadResult"]), sorted(UPLOAD_KEYS));
    assert_eq!(keys(&v["meterDownloadResult"]), sorted(METER_KEYS));
    assert_eq!(keys(&v["tenantDownloadResult"]), sorted(TENANT_KEYS));
    assert_eq!(v["success"], true);
    assert_eq!(v["uploadResult"]["recordsUploaded"], 120);
    assert_eq!(v["uploadResult"]["recordsDeleted"], 120);
    assert_eq!(v["meterDownloadResult"]["newMeters"], 3);
    assert_eq!(v["tenantDownloadResult"]["newTenants"], 2);
    let ts = v["timestamp"].as_str().expect("timestamp is a string");
    assert!(
        ts.ends_with('Z') && humantime::parse_rfc3339(ts).is_ok(),
        "RFC 3339 UTC: {ts}"
    );

    for needle in [
        "sync cycle 1 starting: 120 readings queued",
        "upload succeeded: 120 readings uploaded in",
        "delete succeeded: 120 uploaded readings deleted locally",
        "meter download succeeded in",
        "tenant download succeeded in",
        "sync cycle 1 finished in",
        "sync_logs: pruned 1 rows older than 90 days",
    ] {
        assert!(out.stderr.contains(needle), "stderr lacks {needle:?}:\n{}", out.stderr);
    }
    assert!(!out.stderr.contains(pg::PASSWORD), "no password in the log");

    let file_text = std::fs::read_to_string(&log_file).expect("the log file exists");
    assert!(
        file_text.contains("sync cycle 1 starting: 120 readings queued"),
        "{file_text}"
    );
    assert!(!file_text.contains(pg::PASSWORD));
    let mode = std::fs::metadata(&log_file).expect("metadata").permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "log file mode");

    let rows = local
        .query(
            "SELECT sync_type::text, success, records_processed, duration_ms IS NOT NULL FROM sync_logs
             WHERE timestamp > LOCALTIMESTAMP - INTERVAL '1 day' ORDER BY id",
            &[],
        )
        .expect("sync_logs");
    let rows: Vec<(String, bool, Option<i32>, bool)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    assert_eq!(
        rows,
        vec![
            ("upload".to_string(), true, Some(120), true),
            ("download_meters".to_string(), true, Some(3), true),
            ("download_tenants".to_string(), true, Some(2), true),
        ]
    );
    assert_eq!(
        count(
            &mut local,
            "SELECT count(*) FROM sync_logs WHERE timestamp < LOCALTIMESTAMP - INTERVAL '1 day'"
        ),
        1,
        "the 100-day-old row is pruned, the 10-day-old one kept"
    );

    // Another process holding the cycle lock: `once` says so and fails without running.
    let mut holder = pair.local.client();
    let (k1, k2) = scheduler::CYCLE_LOCK_KEY;
    holder
        .execute("SELECT pg_advisory_lock($1, $2)", &[&k1, &k2])
        .expect("taking the cycle lock");
    let out = run_command(&["once"], &env_map(&pair));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("another sync-process holds the cycle lock"),
        "{}",
        out.stderr
    );
    drop(holder);
    let _ = std::fs::remove_dir_all(&dir);
}

// A part that fails makes `once` exit 1, still printing the whole JSON with the error.
#[test]
fn once_exits_1_when_a_part_fails() {
    let pair = DbPair::new();
    migrate(&pair, Migrate::Local); // the remote has no tables: every part fails, each on its own
    seed_readings(&mut pair.local.client(), 5);
    let out = run_command(&["once"], &env_map(&pair));
    assert_eq!(out.status.code(), Some(1), "stderr: {}", out.stderr);
    let v: Value = serde_json::from_str(out.stdout.trim()).expect("JSON on stdout");
    assert_eq!(v["success"], false);
    assert_eq!(v["uploadResult"]["success"], false);
    assert!(v["uploadResult"]["error"].is_string());
    assert!(v["meterDownloadResult"]["error"].is_string());
    assert!(v["tenantDownloadResult"]["error"].is_string());
    assert_eq!(readings(&mut pair.local.client()).0, 5, "nothing lost");
    let rows = count(
        &mut pair.local.client(),
        "SELECT count(*) FROM sync_logs WHERE NOT success",
    );
    assert_eq!(rows, 3, "a failed row per part");
}

// Rotation on a (tiny) size and at the day change, 0640 files, the oldest compressed, only `keep` kept, whole
// lines only, and the kept lines are the newest ones.
#[test]
fn log_file_rotates_on_size_and_day_and_compresses() {
    let dir = unique_temp_dir("sync-process-rotate");
    let path = dir.join("missing").join("dir").join("app.log");
    let mut f = RotatingFile::with_limits(&path, 300, 3).expect("log file");
    for i in 0..100 {
        f.write_on_day(format!("line {i:03} {}\n", "x".repeat(40)).as_bytes(), 1)
            .expect("write");
    }
    let rotated = f.rotated_paths();
    assert_eq!(rotated.len(), 3, "{rotated:?}");
    let gz: Vec<bool> = rotated.iter().map(|p| p.to_string_lossy().ends_with(".gz")).collect();
    assert_eq!(
        gz,
        vec![true, true, false],
        "all but the newest rotated file compressed: {rotated:?}"
    );
    for p in rotated.iter().chain(std::iter::once(&path)) {
        let mode = std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "{}", p.display());
    }
    let read = |p: &Path| -> String {
        if p.to_string_lossy().ends_with(".gz") {
            let bytes = std::fs::read(p).expect("gz");
            assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip magic");
            let out = Command::new("gzip").arg("-dc").arg(p).output().expect("gzip -dc");
            String::from_utf8(out.stdout).expect("utf8")
        } else {
            std::fs::read_to_string(p).expect("read")
        }
    };
    let mut all = String::new();
    for p in rotated.iter().chain(std::iter::once(&path)) {
        let text = read(p);
        assert!(
            text.ends_with('\n') && text.lines().all(|l| l.starts_with("line ")),
            "whole lines: {text:?}"
        );
        all.push_str(&text);
    }
    let numbers: Vec<u32> = all.lines().map(|l| l[5..8].parse().expect("number")).collect();
    assert_eq!(numbers.last(), Some(&99));
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "kept lines are contiguous and in order"
    );

    // The day changes: the live file is rotated before the first line of the new day.
    let live_before = std::fs::read_to_string(&path).expect("live");
    f.write_on_day(b"line 100 new day\n", 2).expect("write");
    assert_eq!(std::fs::read_to_string(&path).expect("live"), "line 100 new day\n");
    let newest = f.rotated_paths().last().cloned().expect("a rotated file");
    assert_eq!(read(&newest), live_before);
    assert_eq!(f.rotated_paths().len(), 3);
    drop(f);

    // Reopened on a later day (the file was last written "yesterday"): the first write rotates.
    let yesterday = Command::new("touch")
        .arg("-d")
        .arg("yesterday")
        .arg(&path)
        .status()
        .expect("touch");
    assert!(yesterday.success());
    let mut f = RotatingFile::with_limits(&path, 300, 3).expect("reopen");
    f.write_all(b"line 101 reopened\n").expect("write");
    assert_eq!(std::fs::read_to_string(&path).expect("live"), "line 101 reopened\n");
    assert_eq!(f.rotated_paths().len(), 3);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------------------
// Property 12: status.

#[derive(Clone, Debug)]
struct ArbSnapshot(Snapshot, u64);

impl Arbitrary for ArbSnapshot {
    fn arbitrary(g: &mut Gen) -> ArbSnapshot {
        let n = |g: &mut Gen| u64::from(u32::arbitrary(g));
        let opt = |g: &mut Gen, v: u64| bool::arbitrary(g).then_some(v);
        let cycles = n(g) % 1000;
        let status = SyncStatus {
            is_running: bool::arbitrary(g),
            cycle_in_progress: bool::arbitrary(g),
            last_sync_time: (cycles > 0).then(|| "2024-05-01T10:00:00.123Z".to_string()),
            last_sync_success: cycles > 0 && bool::arbitrary(g),
            last_sync_error: opt(g, 1).map(|_| "upload: remote database r:5432/x: boom \"quoted\"".to_string()),
            queue_size: n(g),
            total_records_synced: n(g),
            local_meter_count: n(g),
            remote_meter_count: n(g),
            local_tenant_count: n(g),
            remote_tenant_count: n(g),
            local_db_connected: bool::arbitrary(g),
            remote_db_connected: bool::arbitrary(g),
            oldest_pending_age: {
                let v = n(g);
                opt(g, v)
            },
            quarantined_count: n(g),
            awaiting_confirmation: n(g),
            oldest_awaiting_confirmation_age: {
                let v = n(g);
                opt(g, v)
            },
            consecutive_failures: u32::arbitrary(g) % 100,
            active_alerts: if bool::arbitrary(g) {
                vec!["sync_failures".into()]
            } else {
                Vec::new()
            },
            stale: bool::arbitrary(g),
            last_cycle_result: None,
            warnings: Vec::new(),
            client_certificates: Vec::new(),
        };
        let started = 1_700_000_000 + n(g) % 1000;
        let interval = n(g) % 300 + 1;
        let snap = Snapshot {
            status,
            cycles_total: cycles,
            cycle_failures_total: cycles / 2,
            records_quarantined_total: n(g),
            batches_resent_total: n(g),
            download_conflicts_total: [n(g), n(g)],
            upload_batches_total: n(g),
            upload_chain_breaks_total: n(g),
            readings_invalid_total: std::array::from_fn(|_| n(g)),
            last_cycle_duration_ms: {
                let v = n(g);
                opt(g, v)
            },
            last_success_unix: {
                let v = started + n(g) % 2000;
                opt(g, v)
            },
            started_unix: started,
            interval_secs: interval,
            source_id: ["site-1", "a \"quoted\" \\ site\nid", ""][usize::from(u8::arbitrary(g) % 3)].to_string(),
            parts: std::array::from_fn(|_| {
                let mut p = PartStats {
                    failures_total: n(g),
                    ..Default::default()
                };
                for _ in 0..u8::arbitrary(g) % 8 {
                    p.observe_run(n(g) % 400_000);
                }
                p
            }),
            ..Default::default()
        };
        let now = started + n(g) % 5000;
        ArbSnapshot(snap, now)
    }
}

// **Feature: database-sync-process, Property 12: Status accuracy**
// For any snapshot: GET /status carries every field with exactly the snapshot's values; GET /metrics has HELP
// and TYPE for every metric and values equal to the snapshot's; GET /healthz is 200 exactly when the last cycle
// succeeded or the last success (or the start) is younger than three intervals; any other path is 404.
fn prop_status_rendering(s: ArbSnapshot) -> bool {
    let ArbSnapshot(s, now) = s;
    let st = &s.status;
    let json: Value = match serde_json::from_str(&status::route("GET", "/status", &s, now).body) {
        Ok(v) => v,
        Err(_) => return false,
    };
    let expected = serde_json::json!({
        "isRunning": st.is_running, "cycleInProgress": st.cycle_in_progress, "lastSyncTime": st.last_sync_time,
        "lastSyncSuccess": st.last_sync_success, "lastSyncError": st.last_sync_error, "queueSize": st.queue_size,
        "totalRecordsSynced": st.total_records_synced, "localMeterCount": st.local_meter_count,
        "remoteMeterCount": st.remote_meter_count, "localTenantCount": st.local_tenant_count,
        "remoteTenantCount": st.remote_tenant_count, "localDbConnected": st.local_db_connected,
        "remoteDbConnected": st.remote_db_connected, "oldestPendingAge": st.oldest_pending_age,
        "quarantinedCount": st.quarantined_count, "awaitingConfirmation": st.awaiting_confirmation,
        "oldestAwaitingConfirmationAge": st.oldest_awaiting_confirmation_age,
        "consecutiveFailures": st.consecutive_failures,
        "activeAlerts": st.active_alerts, "stale": st.stale, "lastCycleResult": null,
    });
    let metrics_reply = status::route("GET", "/metrics", &s, now);
    let text = metrics_reply.body;
    let m = parse_metrics(&text);
    let names = [
        ("sync_process_cycles_total", "counter"),
        ("sync_process_cycle_failures_total", "counter"),
        ("sync_process_readings_uploaded_total", "counter"),
        ("sync_process_readings_quarantined_total", "counter"),
        ("sync_process_last_cycle_duration_seconds", "gauge"),
        ("sync_process_queued_readings", "gauge"),
        ("sync_process_oldest_pending_reading_age_seconds", "gauge"),
        ("sync_process_quarantined_readings", "gauge"),
        ("sync_process_readings_awaiting_confirmation", "gauge"),
        ("sync_process_oldest_awaiting_confirmation_age_seconds", "gauge"),
        ("sync_process_batches_resent_total", "counter"),
        ("sync_process_download_conflicts_total", "counter"),
        ("sync_process_upload_batches_total", "counter"),
        ("sync_process_upload_chain_breaks_total", "counter"),
        ("sync_process_readings_invalid_total", "counter"),
        ("sync_process_last_success_timestamp_seconds", "gauge"),
        ("sync_process_database_up", "gauge"),
        ("sync_process_build_info", "gauge"),
        ("sync_process_part_failures_total", "counter"),
        ("sync_process_consecutive_failures", "gauge"),
        ("sync_process_cycle_duration_seconds", "histogram"),
        ("sync_process_meters", "gauge"),
        ("sync_process_tenants", "gauge"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_start_time_seconds", "gauge"),
    ];
    let described = names.iter().all(|(name, kind)| {
        text.contains(&format!("# HELP {name} ")) && text.contains(&format!("# TYPE {name} {kind}\n"))
    });
    let dur = s.last_cycle_duration_ms.unwrap_or(0);
    let values = [
        ("sync_process_cycles_total", s.cycles_total.to_string()),
        ("sync_process_cycle_failures_total", s.cycle_failures_total.to_string()),
        (
            "sync_process_readings_uploaded_total",
            st.total_records_synced.to_string(),
        ),
        (
            "sync_process_readings_quarantined_total",
            s.records_quarantined_total.to_string(),
        ),
        (
            "sync_process_last_cycle_duration_seconds",
            format!("{}.{:03}", dur / 1000, dur % 1000),
        ),
        ("sync_process_queued_readings", st.queue_size.to_string()),
        (
            "sync_process_oldest_pending_reading_age_seconds",
            st.oldest_pending_age.unwrap_or(0).to_string(),
        ),
        ("sync_process_quarantined_readings", st.quarantined_count.to_string()),
        (
            "sync_process_readings_awaiting_confirmation",
            st.awaiting_confirmation.to_string(),
        ),
        (
            "sync_process_oldest_awaiting_confirmation_age_seconds",
            st.oldest_awaiting_confirmation_age.unwrap_or(0).to_string(),
        ),
        ("sync_process_batches_resent_total", s.batches_resent_total.to_string()),
        ("sync_process_upload_batches_total", s.upload_batches_total.to_string()),
        (
            "sync_process_upload_chain_breaks_total",
            s.upload_chain_breaks_total.to_string(),
        ),
        (
            "sync_process_last_success_timestamp_seconds",
            s.last_success_unix.unwrap_or(0).to_string(),
        ),
        (
            "sync_process_download_conflicts_total{table=\"meters\"}",
            s.download_conflicts_total[0].to_string(),
        ),
        (
            "sync_process_download_conflicts_total{table=\"tenant\"}",
            s.download_conflicts_total[1].to_string(),
        ),
        (
            "sync_process_database_up{database=\"local\"}",
            u8::from(st.local_db_connected).to_string(),
        ),
        (
            "sync_process_database_up{database=\"remote\"}",
            u8::from(st.remote_db_connected).to_string(),
        ),
    ];
    let escaped = s
        .source_id
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    let mut values: Vec<(String, String)> = values.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    values.push((
        format!(
            "sync_process_build_info{{version=\"{}\",source_id=\"{escaped}\"}}",
            env!("CARGO_PKG_VERSION")
        ),
        "1".into(),
    ));
    values.push((
        "sync_process_consecutive_failures".into(),
        st.consecutive_failures.to_string(),
    ));
    for (check, n) in ["known-meter", "meter-unit", "finite-value", "timestamp-window"]
        .iter()
        .zip(s.readings_invalid_total)
    {
        values.push((
            format!("sync_process_readings_invalid_total{{check=\"{check}\"}}"),
            n.to_string(),
        ));
    }
    for (side, meters, tenants) in [
        ("local", st.local_meter_count, st.local_tenant_count),
        ("remote", st.remote_meter_count, st.remote_tenant_count),
    ] {
        values.push((
            format!("sync_process_meters{{database=\"{side}\"}}"),
            meters.to_string(),
        ));
        values.push((
            format!("sync_process_tenants{{database=\"{side}\"}}"),
            tenants.to_string(),
        ));
    }
    for (part, p) in ["upload", "download_meters", "download_tenants"].iter().zip(&s.parts) {
        let h = "sync_process_cycle_duration_seconds";
        values.push((
            format!("sync_process_part_failures_total{{part=\"{part}\"}}"),
            p.failures_total.to_string(),
        ));
        for (count, ms) in p.buckets.iter().zip(DURATION_BUCKETS_MS) {
            let le = format!("{}", ms as f64 / 1000.0);
            values.push((format!("{h}_bucket{{part=\"{part}\",le=\"{le}\"}}"), count.to_string()));
        }
        values.push((format!("{h}_bucket{{part=\"{part}\",le=\"+Inf\"}}"), p.runs.to_string()));
        values.push((format!("{h}_count{{part=\"{part}\"}}"), p.runs.to_string()));
        let sum = p.duration_sum_ms;
        values.push((
            format!("{h}_sum{{part=\"{part}\"}}"),
            format!("{}.{:03}", sum / 1000, sum % 1000),
        ));
    }
    // Ours are exactly these; the three process_* ones come from /proc and are only checked to be numbers.
    let ours = m.iter().filter(|(k, _)| !k.starts_with("process_")).count();
    let process_ok = [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_start_time_seconds",
    ]
    .iter()
    .all(|k| {
        m.get(*k).is_some_and(|v| {
            v.parse::<f64>()
                .is_ok_and(|x| x > 0.0 || *k == "process_cpu_seconds_total")
        })
    });
    let values_ok = values.iter().all(|(k, v)| m.get(k.as_str()) == Some(v)) && ours == values.len() && process_ok;
    let healthy = (s.cycles_total > 0 && st.last_sync_success)
        || now.saturating_sub(s.last_success_unix.unwrap_or(s.started_unix)) < 3 * s.interval_secs;
    let health_code = status::route("GET", "/healthz", &s, now).code;
    let other = status::route("GET", "/nope", &s, now).code;
    json == expected
        && metrics_reply.content_type.starts_with("text/plain; version=0.0.4")
        && described
        && values_ok
        && health_code == if healthy { 200 } else { 503 }
        && other == 404
}

#[test]
fn property_12_status_rendering() {
    qc(200).quickcheck(prop_status_rendering as fn(ArbSnapshot) -> bool);
}

fn status_env(pair: &DbPair, port: u16) -> BTreeMap<String, String> {
    let mut env = env_map(pair);
    env.insert("STATUS_BIND".into(), format!("127.0.0.1:{port}"));
    // One cycle, then the loop sits still while the test compares.
    env.insert("SYNC_INTERVAL_SECONDS".into(), "3600".into());
    env
}

fn wait_for_first_cycle(addr: SocketAddr) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(PATIENCE, || match get_json(addr, "/status") {
        Some(v) if v["lastSyncTime"].is_string() && v["cycleInProgress"] == false => {
            last = v;
            true
        }
        _ => false,
    });
    assert!(ok, "the daemon reports a finished cycle on /status");
    last
}

// **Feature: database-sync-process, Property 12: Status accuracy**
// /status, /metrics and `sync-process status` against counts taken from the databases with the loop idle:
// first with everything up, then with the remote down and readings waiting.
#[test]
fn status_and_metrics_match_the_databases() {
    let Env {
        pair,
        mut local,
        mut remote,
        ..
    } = Env::new(&[]);
    seed_readings(&mut local, 250);
    seed_meters_and_tenants(&mut remote, 7, 4);
    let port = closed_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let env = status_env(&pair, port);
    let mut d = Daemon::spawn(&["run"], &env);
    let v = wait_for_first_cycle(addr);

    let db = |c: &mut Client, sql: &str| serde_json::json!(count(c, sql));
    assert_eq!(v["queueSize"], db(&mut local, "SELECT count(*) FROM meter_readings"));
    assert_eq!(
        v["quarantinedCount"],
        db(&mut local, "SELECT count(*) FROM sync_quarantine")
    );
    assert_eq!(v["localMeterCount"], db(&mut local, "SELECT count(*) FROM meters"));
    assert_eq!(v["remoteMeterCount"], db(&mut remote, "SELECT count(*) FROM meters"));
    assert_eq!(v["localTenantCount"], db(&mut local, "SELECT count(*) FROM tenant"));
    assert_eq!(v["remoteTenantCount"], db(&mut remote, "SELECT count(*) FROM tenant"));
    assert_eq!(v["remoteMeterCount"], 7);
    assert_eq!(
        v["totalRecordsSynced"],
        db(&mut remote, "SELECT count(*) FROM meter_readings")
    );
    assert_eq!(v["totalRecordsSynced"], 250);
    assert_eq!(v["oldestPendingAge"], Value::Null, "empty queue");
    assert_eq!(v["isRunning"], true);
    assert_eq!(v["lastSyncSuccess"], true);
    assert_eq!(v["lastSyncError"], Value::Null);
    assert_eq!(v["localDbConnected"], true);
    assert_eq!(v["remoteDbConnected"], true);
    assert_eq!(v["consecutiveFailures"], 0);
    assert_eq!(v["lastCycleResult"]["uploadResult"]["recordsUploaded"], 250);
    assert_eq!(v["lastSyncTime"], v["lastCycleResult"]["timestamp"]);

    let (code, text) = http_get(addr, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200);
    let m = parse_metrics(&text);
    assert_eq!(m["sync_process_cycles_total"], "1");
    assert_eq!(m["sync_process_cycle_failures_total"], "0");
    assert_eq!(m["sync_process_readings_uploaded_total"], "250");
    assert_eq!(m["sync_process_queued_readings"], v["queueSize"].to_string());
    assert_eq!(m["sync_process_database_up{database=\"local\"}"], "1");
    assert_eq!(m["sync_process_database_up{database=\"remote\"}"], "1");
    assert!(
        m["sync_process_last_success_timestamp_seconds"]
            .parse::<u64>()
            .expect("number")
            > 1_600_000_000
    );
    assert_eq!(http_get(addr, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(http_get(addr, "/nothing-here").map(|r| r.0), Some(404));

    // The CLI: for a person, and raw JSON equal to /status.
    let out = run_command(&["status"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    for needle in [
        "running:",
        "last cycle:",
        "succeeded",
        "queue:",
        "0 readings",
        "meters:",
        "7 local, 7 remote",
        "connected",
    ] {
        assert!(
            out.stdout.contains(needle),
            "status output lacks {needle:?}:\n{}",
            out.stdout
        );
    }
    let out = run_command(&["status", "--json"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let cli: Value = serde_json::from_str(out.stdout.trim()).expect("status --json is JSON");
    assert_eq!(cli, get_json(addr, "/status").expect("status"));
    d.signal("TERM");
    assert_eq!(d.wait_timeout(PATIENCE).and_then(|s| s.code()), Some(0));

    // Remote down, readings waiting: measured, not guessed.
    seed_readings(&mut local, 40);
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], pair.remote.port())));
    proxy.set_refuse(true);
    let mut env = status_env(&pair, port);
    env.insert("POSTGRES_CLIENT_PORT".into(), proxy.port().to_string());
    env.insert("DB_CONNECTION_TIMEOUT_MS".into(), "300".into());
    env.insert("MAX_CONNECTION_RETRIES".into(), "0".into());
    env.insert("MAX_QUERY_RETRIES".into(), "0".into());
    let mut d = Daemon::spawn(&["run"], &env);
    let v = wait_for_first_cycle(addr);
    assert_eq!(v["queueSize"], 40);
    assert_eq!(v["queueSize"], db(&mut local, "SELECT count(*) FROM meter_readings"));
    assert_eq!(v["localMeterCount"], db(&mut local, "SELECT count(*) FROM meters"));
    assert_eq!(v["localDbConnected"], true);
    assert_eq!(v["remoteDbConnected"], false);
    assert_eq!(v["lastSyncSuccess"], false);
    assert!(
        v["lastSyncError"].as_str().is_some_and(|e| e.starts_with("upload: ")),
        "{v}"
    );
    assert!(v["oldestPendingAge"].is_u64(), "a queued reading has an age: {v}");
    assert_eq!(v["consecutiveFailures"], 1);
    let m = parse_metrics(&http_get(addr, "/metrics").expect("metrics").1);
    assert_eq!(m["sync_process_database_up{database=\"remote\"}"], "0");
    assert_eq!(m["sync_process_cycle_failures_total"], "1");
    assert_eq!(m["sync_process_queued_readings"], "40");
    d.signal("TERM");
    assert_eq!(d.wait_timeout(PATIENCE).and_then(|s| s.code()), Some(0));
}

#[test]
fn status_command_without_a_daemon() {
    let pair = DbPair::new();
    let mut env = env_map(&pair);
    let port = closed_port();
    env.insert("STATUS_BIND".into(), format!("127.0.0.1:{port}"));
    let out = run_command(&["status"], &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr
            .contains(&format!("no sync-process daemon answers on 127.0.0.1:{port}")),
        "{}",
        out.stderr
    );
    env.insert("STATUS_BIND".into(), String::new());
    let out = run_command(&["status", "--json"], &env);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stderr.contains("STATUS_BIND is empty"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------------------------------------
// A database down at start; alerts and webhooks.

// Started with the remote refusing connections (and its schema missing, MIGRATE_ON_START=true): the daemon
// keeps running, alerts once per incident (log line and webhook), and when the remote comes up it migrates
// it, syncs every reading without a restart, and clears each alert once.
#[test]
fn remote_down_at_start_then_up_syncs_and_alerts_once() {
    let sink = WebhookSink::start(false);
    let url = sink.url();
    let fixture = Env::builder()
        .remote_via_proxy()
        .migrate(Migrate::Local)
        .vars(&[
            ("MIGRATE_ON_START", "true"),
            ("ALERT_AFTER_FAILURES", "2"),
            ("QUEUE_ALERT_THRESHOLD", "10"),
            ("ALERT_WEBHOOK_URL", &url),
            ("DB_CONNECTION_TIMEOUT_MS", "300"),
            ("MAX_CONNECTION_RETRIES", "0"),
            ("MAX_QUERY_RETRIES", "0"),
        ])
        .build();
    let (pair, proxy) = (&fixture.pair, fixture.proxy());
    let n = 50;
    seed_readings(&mut pair.local.client(), n);
    proxy.set_refuse(true);
    let mut d = Daemon::spawn(&["run"], &fixture.map);
    for alert in ["remote_db_unreachable", "sync_failures", "queue_above_threshold"] {
        assert!(
            d.wait_for_stderr(&format!("ALERT raised: {alert}: "), PATIENCE),
            "{alert} raised"
        );
    }
    assert!(d.is_running(), "a down remote never stops the daemon");

    proxy.set_refuse(false);
    let mut remote_ok = false;
    assert!(
        wait_until(PATIENCE, || {
            remote_ok = remote_ok
                || pair
                    .remote
                    .client()
                    .query_one("SELECT to_regclass('meter_readings') IS NOT NULL", &[])
                    .map(|r| r.get(0))
                    .unwrap_or(false);
            remote_ok && readings(&mut pair.remote.client()) == (n, n)
        }),
        "the remote is migrated and every reading arrives without a restart"
    );
    for alert in ["remote_db_unreachable", "sync_failures", "queue_above_threshold"] {
        assert!(
            d.wait_for_stderr(&format!("ALERT cleared: {alert}: "), PATIENCE),
            "{alert} cleared"
        );
    }
    // Two more cycles: nothing is raised or cleared again.
    let done = finished_cycles(&d.stderr_text());
    assert!(wait_until(PATIENCE, || finished_cycles(&d.stderr_text()) >= done + 2));
    d.signal("TERM");
    assert_eq!(d.wait_timeout(PATIENCE).and_then(|s| s.code()), Some(0));
    let err = d.stderr_text();
    for alert in ["remote_db_unreachable", "sync_failures", "queue_above_threshold"] {
        assert_eq!(
            occurrences(&err, &format!("ALERT raised: {alert}: ")),
            1,
            "{alert} raised once"
        );
        assert_eq!(
            occurrences(&err, &format!("ALERT cleared: {alert}: ")),
            1,
            "{alert} cleared once"
        );
    }
    assert_eq!(occurrences(&err, "ALERT raised: local_db_unreachable"), 0);
    assert!(!err.contains("not-for-logs"), "the webhook URL's query is never logged");

    assert!(wait_until(PATIENCE, || sink.payloads().len() >= 6), "six webhook calls");
    let payloads = sink.payloads();
    for p in &payloads {
        let mut k: Vec<&String> = p.as_object().expect("object").keys().collect();
        k.sort();
        assert_eq!(k, vec!["alert", "message", "source_id", "state", "timestamp"], "{p}");
        assert_eq!(p["source_id"], "test-site");
        assert!(humantime::parse_rfc3339(p["timestamp"].as_str().expect("ts")).is_ok());
    }
    for (alert, state) in [
        ("remote_db_unreachable", "raised"),
        ("remote_db_unreachable", "cleared"),
        ("sync_failures", "raised"),
    ] {
        let hits = payloads
            .iter()
            .filter(|p| p["alert"] == alert && p["state"] == state)
            .count();
        assert_eq!(hits, 1, "{alert} {state}: {payloads:?}");
    }
}

// A webhook that accepts and never answers does not hold up the loop: cycles keep finishing while its
// request hangs (ureq gives up after 5 s; the loop does not wait for it at all).
#[test]
fn a_hanging_webhook_does_not_delay_cycles() {
    let pair = DbPair::new(); // no schema on either side: every cycle fails fast, which raises the alert
    let sink = WebhookSink::start(true);
    let mut env = env_map(&pair);
    env.insert("ALERT_AFTER_FAILURES".into(), "1".into());
    env.insert("ALERT_WEBHOOK_URL".into(), sink.url());
    let mut d = Daemon::spawn(&["run"], &env);
    assert!(
        wait_until(PATIENCE, || sink.accepted.load(Ordering::SeqCst) >= 1),
        "the webhook is called"
    );
    let at_hang = finished_cycles(&d.stderr_text());
    assert!(wait_until(PATIENCE, || finished_cycles(&d.stderr_text()) >= at_hang + 2));
    assert_eq!(
        sink.closed_by_client.load(Ordering::SeqCst),
        0,
        "two more cycles finished while the webhook request was still hanging"
    );
    assert!(d.is_running());
    d.signal("TERM");
    assert_eq!(
        d.wait_timeout(PATIENCE).and_then(|s| s.code()),
        Some(0),
        "a hanging webhook does not block the exit"
    );
}
