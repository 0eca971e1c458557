//! Integration tests: the confirmation window (UPLOAD_CONFIRM_SECONDS) against a central database that fails
//! over to an asynchronous standby which never received the last batches.
//!
//! The failover tests use a real primary and a real streaming standby (support::standby): replication is cut,
//! the daemon uploads more batches to the primary, the primary crashes, the standby is promoted and the
//! daemon's remote address is re-pointed at it. With a window the remote ends with every reading exactly once;
//! without one the test asserts the loss (which is why the option exists). The other tests run in-process on the
//! shared server: a ledger row deleted by hand, readings another program marked, a crash at every step of the
//! confirmation, and a quickcheck over interleavings of upload, confirmation, crash and ledger loss. Time passes
//! in the in-process tests by moving the batches' acknowledgement times back (`pass_time`), never by sleeping.

use std::time::Duration;

use postgres::Client;
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult, Testable};

use sync_process::db::Database;
use sync_process::error::Side;
use sync_process::status::Fresh;
use sync_process::upload::{UploadSyncManager, UploadSyncResult};

use crate::support::daemon::run_command;
use crate::support::env::{count, Env};
use crate::support::pg::{DbPair, PgServer, TestDb};
use crate::support::standby::Replicated;

// ----- Helpers -----

/// Inserts `n` readings locally whose values `from+1 ..= from+n` are unique (so a reading is known by its value
/// on both sides); timestamps one second apart from the value.
fn insert_readings(c: &mut Client, from: i64, n: i64) {
    c.execute(
        "INSERT INTO meter_readings (meter_id, timestamp, value, unit, metadata)
         SELECT 'meter-' || (g % 7), timestamp '2024-01-01' + g * interval '1 second', g::numeric, 'kWh',
                jsonb_build_object('seq', g)
         FROM generate_series($1::int8 + 1, $1::int8 + $2::int8) AS g",
        &[&from, &n],
    )
    .expect("inserting readings");
}

/// The values of a side's readings, sorted (duplicates kept).
fn values(c: &mut Client) -> Vec<i64> {
    c.query("SELECT value::int8 FROM meter_readings ORDER BY value", &[])
        .expect("reading values")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Lets the confirmation window pass for every batch awaiting confirmation: their acknowledgement times move a
/// day back (the window in these tests is 300 s).
fn pass_time(local: &mut Client) {
    local
        .batch_execute(
            "UPDATE sync_upload_batches SET acknowledged_at = acknowledged_at - interval '1 day',
                    uploaded_at = uploaded_at - interval '1 day'
             WHERE acknowledged_at IS NOT NULL",
        )
        .expect("moving acknowledgement times back (sync_upload_batches.acknowledged_at)");
}

/// What a failover does to one batch: its ledger row and its readings vanish from the remote (they were in the
/// tail of WAL the standby never received). Returns the number of readings removed.
fn lose_batch(local: &mut Client, remote: &mut Client, batch_id: &str) -> u64 {
    let vals: Vec<i64> = local
        .query(
            "SELECT r.value::int8 FROM sync_upload_batches b JOIN meter_readings r ON r.id = ANY(b.reading_ids)
             WHERE b.batch_id = $1::text::uuid",
            &[&batch_id],
        )
        .expect("reading a batch's values")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let ledger = remote
        .execute(
            "DELETE FROM sync_upload_ledger WHERE batch_id = $1::text::uuid",
            &[&batch_id],
        )
        .expect("deleting a ledger row");
    if ledger == 0 {
        return 0; // never arrived: nothing to lose
    }
    remote
        .execute("DELETE FROM meter_readings WHERE value::int8 = ANY($1)", &[&vals])
        .expect("deleting a batch's remote readings")
}

/// Local batch rows, oldest claim first.
fn batch_ids(local: &mut Client) -> Vec<String> {
    local
        .query(
            "SELECT batch_id::text FROM sync_upload_batches ORDER BY reading_ids[1], batch_id",
            &[],
        )
        .expect("reading batch ids")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// One cycle's upload part; asserts it succeeded.
fn sync(env: &Env) -> UploadSyncResult {
    let r = manager(env).sync_readings(Duration::from_secs(600));
    assert!(r.success, "{r:?}");
    r
}

fn manager(env: &Env) -> UploadSyncManager<'_> {
    UploadSyncManager::new(&env.conns, &env.cfg)
}

/// Fresh direct clients of the two sides (the quickcheck property shares its Env and cannot borrow its clients
/// mutably).
fn clients(env: &Env) -> (Client, Client) {
    (env.pair.local.client(), env.pair.remote.client())
}

fn truncate(env: &Env) {
    let (mut local, mut remote) = clients(env);
    local
        .batch_execute("TRUNCATE meter_readings, sync_upload_batches, sync_quarantine")
        .expect("truncating local");
    remote
        .batch_execute("TRUNCATE meter_readings, sync_upload_ledger, sync_upload_chain")
        .expect("truncating remote");
}

// ----- Failover of the central database -----

/// What the remote and the local database hold at the end of [`fail_over_during_uploads`].
struct AfterFailover {
    remote: Vec<i64>,
    local_left: i64,
    batches_left: i64,
    stderr: String,
}

/// 300 readings go up and reach the standby; replication is cut; 200 more go up to the primary only; the
/// primary crashes, the standby is promoted, the daemon's remote address now reaches it; then `sync-process
/// once` runs `rounds_after` times, `confirm_secs` + 1 s apart (so the window has passed each time), with
/// `in_flight` batches in flight (UPLOAD_BATCHES_IN_FLIGHT).
fn fail_over_during_uploads(confirm_secs: u64, rounds_after: usize, in_flight: u32) -> AfterFailover {
    let mut central = Replicated::start();
    let pair = DbPair {
        local: TestDb::create(PgServer::shared()),
        remote: TestDb::create(central.primary()),
    };
    let front = central.front.port().to_string();
    if in_flight > 1 {
        // A 2 ms round trip: the drain waits for the central and keeps several batches in flight (on loopback it
        // keeps one).
        central.front.set_latency(Duration::from_millis(1));
    }
    let confirm = confirm_secs.to_string();
    let in_flight = in_flight.to_string();
    let env = Env::builder()
        .on(pair)
        .vars(&[
            ("UPLOAD_CONFIRM_SECONDS", &confirm),
            ("BATCH_SIZE", "50"),
            ("UPLOAD_BATCHES_IN_FLIGHT", &in_flight),
        ])
        .edit(|_, map| {
            map.insert("POSTGRES_CLIENT_PORT".into(), front.clone());
        })
        .build();
    let (mut local, mut primary) = clients(&env);
    let once = |what: &str| {
        let out = run_command(&["once"], &env.map);
        assert!(out.status.success(), "once ({what}): {}\n{}", out.stdout, out.stderr);
        out.stderr
    };

    insert_readings(&mut local, 0, 300);
    once("before the cut");
    central.wait_replayed();
    central.cut_replication();
    insert_readings(&mut local, 300, 200);
    once("after the cut");
    assert_eq!(
        count(&mut primary, "SELECT count(*) FROM meter_readings"),
        500,
        "the primary took all 500 readings"
    );
    assert!(!central.is_streaming(), "replication is cut");
    let standby_db = central
        .standby_client(env.pair.remote.name())
        .query_one("SELECT count(*) FROM meter_readings", &[]);
    assert_eq!(
        standby_db.expect("counting on the standby").get::<_, i64>(0),
        300,
        "the standby never received the last 200 readings"
    );

    central.fail_over();
    let mut stderr = String::new();
    for round in 0..rounds_after {
        std::thread::sleep(Duration::from_secs(confirm_secs) + Duration::from_secs(1));
        stderr.push_str(&once(&format!("round {round} after the failover")));
    }
    let mut remote = central.standby_client(env.pair.remote.name());
    AfterFailover {
        remote: values(&mut remote),
        local_left: count(&mut local, "SELECT count(*) FROM meter_readings"),
        batches_left: count(&mut local, "SELECT count(*) FROM sync_upload_batches"),
        stderr,
    }
}

#[test]
fn with_a_confirmation_window_a_failover_loses_nothing() {
    // Round 1 confirms the first 300 (their ledger rows are on the standby) and sends the last 200 again under
    // their batch ids; round 2 confirms those.
    let after = fail_over_during_uploads(2, 2, 1);
    assert_eq!(
        after.remote,
        (1..=500).collect::<Vec<i64>>(),
        "every reading exactly once on the promoted standby"
    );
    assert_eq!((after.local_left, after.batches_left), (0, 0), "nothing left locally");
    assert!(
        after.stderr.contains("is no longer in the remote ledger"),
        "the re-upload is logged as a warning naming the batch:\n{}",
        after.stderr
    );
}

#[test]
fn with_batches_in_flight_and_a_window_a_failover_loses_nothing() {
    // Four batches in flight on four remote connections: the confirmation still finds each batch by its ledger
    // row, whichever connection committed it, and sends the lost ones again once.
    let after = fail_over_during_uploads(2, 2, 4);
    assert_eq!(
        after.remote,
        (1..=500).collect::<Vec<i64>>(),
        "every reading exactly once on the promoted standby"
    );
    assert_eq!((after.local_left, after.batches_left), (0, 0), "nothing left locally");
}

#[test]
fn without_a_confirmation_window_a_failover_loses_the_last_batches() {
    // Why UPLOAD_CONFIRM_SECONDS exists: with 0 the last 200 readings were deleted locally as soon as the old
    // primary acknowledged them, and the promoted standby never had them. They are gone.
    let after = fail_over_during_uploads(0, 1, 1);
    assert_eq!(
        after.remote,
        (1..=300).collect::<Vec<i64>>(),
        "the promoted standby holds only what was replicated before the cut"
    );
    assert_eq!(
        (after.local_left, after.batches_left),
        (0, 0),
        "and nothing is left to send again"
    );
}

// ----- The ledger decides -----

#[test]
fn a_batch_whose_ledger_row_vanishes_is_sent_again_once_and_only_once() {
    let env = Env::new(&[("UPLOAD_CONFIRM_SECONDS", "300"), ("BATCH_SIZE", "10")]);
    let (mut local, mut remote) = clients(&env);
    insert_readings(&mut local, 0, 30);
    let r = sync(&env);
    assert_eq!(
        (r.records_uploaded, r.records_deleted),
        (30, 0),
        "uploaded, kept until confirmed"
    );
    assert_eq!(
        manager(&env).queue_size().expect("queue size"),
        0,
        "awaiting readings are not queued"
    );
    let (awaiting, age) = manager(&env).awaiting_confirmation().expect("awaiting confirmation");
    assert_eq!(awaiting, 30, "all 30 await confirmation");
    assert!(
        age.is_some_and(|a| a < Duration::from_secs(300)),
        "acknowledged just now: {age:?}"
    );
    // The status measured at request time says the same: out of queueSize, in awaitingConfirmation.
    let db = Database::new(Side::Local, &env.cfg.local, &env.cfg).expect("status pool");
    let fresh = Fresh::with_database(db, Duration::from_secs(60))
        .expect("status measuring thread")
        .ask();
    let m = fresh.now.expect("measured for the request");
    assert_eq!(
        (m.queue_size, m.awaiting_confirmation),
        (0, 30),
        "fresh status: queue without the awaiting readings"
    );
    assert!(
        m.oldest_awaiting_confirmation_age.is_some_and(|a| a < 300),
        "fresh: acknowledged just now: {m:?}"
    );
    let ids = batch_ids(&mut local);
    assert_eq!(ids.len(), 3, "three batches await confirmation");
    // Batch 0 is lost as a failover loses it (ledger row and readings); batch 1 loses only its ledger row (a
    // manual DELETE): the ledger decides, so its readings go up a second time, once.
    assert_eq!(lose_batch(&mut local, &mut remote, &ids[0]), 10);
    remote
        .execute(
            "DELETE FROM sync_upload_ledger WHERE batch_id = $1::text::uuid",
            &[&ids[1]],
        )
        .expect("deleting a ledger row by hand");

    let r = sync(&env);
    assert_eq!(
        (r.records_uploaded, r.records_deleted),
        (0, 0),
        "nothing is due before the window passes"
    );
    pass_time(&mut local);
    let r = sync(&env);
    assert_eq!(
        (r.records_uploaded, r.records_deleted),
        (20, 10),
        "the two vanished batches go up again, the third is confirmed"
    );
    assert_eq!(
        batch_ids(&mut local),
        ids[..2].to_vec(),
        "the re-sent batches await confirmation again"
    );
    pass_time(&mut local);
    let r = sync(&env);
    assert_eq!((r.records_uploaded, r.records_deleted), (0, 20), "both confirmed now");
    for _ in 0..2 {
        pass_time(&mut local);
        sync(&env);
    }
    let mut expected: Vec<i64> = (1..=30).chain(11..=20).collect();
    expected.sort_unstable();
    assert_eq!(
        values(&mut remote),
        expected,
        "batch 1 twice (its ledger row was deleted), the others once"
    );
    assert_eq!(count(&mut remote, "SELECT count(*) FROM sync_upload_ledger"), 3);
    assert_eq!(count(&mut local, "SELECT count(*) FROM meter_readings"), 0);
    assert_eq!(count(&mut local, "SELECT count(*) FROM sync_upload_batches"), 0);
}

#[test]
fn readings_another_program_marked_are_never_sent_nor_deleted_with_a_window() {
    let env = Env::new(&[("UPLOAD_CONFIRM_SECONDS", "300"), ("BATCH_SIZE", "2")]);
    let (mut local, mut remote) = clients(&env);
    insert_readings(&mut local, 0, 5);
    local
        .batch_execute("UPDATE meter_readings SET is_synchronized = true WHERE value IN (2, 4)")
        .expect("marking readings as another program would");
    for _ in 0..3 {
        sync(&env);
        pass_time(&mut local);
    }
    sync(&env);
    assert_eq!(values(&mut remote), vec![1, 3, 5], "only the unmarked readings go up");
    assert_eq!(values(&mut local), vec![2, 4], "the marked readings are left alone");
    assert_eq!(count(&mut local, "SELECT count(*) FROM sync_upload_batches"), 0);
    assert_eq!(manager(&env).queue_size().expect("queue size"), 0);
}

// ----- Interleavings (quickcheck) -----

/// One thing that happens to the edge box or the central database.
#[derive(Clone, Debug)]
enum Op {
    /// New readings arrive locally.
    Insert(u8),
    /// A cycle's upload part: recovery, confirmation, drain.
    Sync,
    /// The daemon dies after this many protocol steps by hand (claim, upload, finish, ...).
    CrashAfter(u8),
    /// The daemon dies after this many steps of the confirmation by hand (lookup, delete, re-send, ...).
    CrashInConfirmation(u8),
    /// The confirmation window passes for every batch awaiting it.
    PassTime,
    /// A failover loses one batch still held locally (the n-th, modulo how many there are): its ledger row and
    /// its readings vanish from the remote.
    LoseLedger(u8),
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Op {
        match u8::arbitrary(g) % 10 {
            0 | 1 => Op::Insert(1 + u8::arbitrary(g) % 12),
            2 | 3 => Op::Sync,
            4 | 5 => Op::CrashAfter(u8::arbitrary(g) % 7),
            6 => Op::CrashInConfirmation(u8::arbitrary(g) % 8),
            7 => Op::PassTime,
            _ => Op::LoseLedger(u8::arbitrary(g)),
        }
    }
}

/// The protocol's steps by hand, as a drain would run them, stopped ("crashed") after `steps`.
fn crash_after(m: &UploadSyncManager<'_>, steps: u8) {
    if !m.pending_batches().expect("pending batches").is_empty() {
        return; // a claim must not overlap a pending batch; the next Sync recovers it
    }
    let mut after = None;
    let mut left = steps;
    while left > 0 {
        let Some(b) = m.claim_batch(after.as_ref()).expect("claim") else {
            return;
        };
        after = b.cursor();
        left -= 1;
        if left == 0 {
            return;
        }
        m.upload_batch(&b).expect("upload");
        left -= 1;
        if left == 0 {
            return;
        }
        m.finish_batch(&b.batch_id).expect("finish");
        left -= 1;
    }
}

/// The confirmation step by hand, through the public step functions, stopped ("crashed") after `steps`: the
/// due batches, ONE ledger lookup, the local delete of those found, then per vanished batch its re-send and its
/// new acknowledgement. Returns the name of the last step done.
fn crash_in_confirmation(m: &UploadSyncManager<'_>, steps: u8) -> &'static str {
    let mut done = 0u8;
    let mut step = |name: &'static str| {
        done += 1;
        (done <= steps).then_some(name)
    };
    let mut last = "nothing";
    let Some(name) = step("due") else { return last };
    last = name;
    let due = m.due_for_confirmation().expect("due for confirmation");
    if due.is_empty() {
        return last;
    }
    let Some(name) = step("ledger lookup") else { return last };
    last = name;
    let present = m.batches_in_ledger(&due).expect("ledger lookup");
    let (found, vanished): (Vec<String>, Vec<String>) = due.into_iter().partition(|id| present.contains(id));
    let Some(name) = step("delete the confirmed") else {
        return last;
    };
    last = name;
    m.confirm_batches(&found).expect("deleting the confirmed batches");
    for id in vanished {
        let Some(name) = step("re-send") else { return last };
        last = name;
        m.resend_batch(&id).expect("re-send");
        let Some(name) = step("acknowledge again") else {
            return last;
        };
        last = name;
        m.finish_batch(&id).expect("acknowledge again");
    }
    last
}

/// Cycles with the window passing each time, until nothing is left locally (at most `rounds`).
fn settle(m: &UploadSyncManager<'_>, local: &mut Client, rounds: usize) -> Result<(), String> {
    for _ in 0..rounds {
        pass_time(local);
        let r = m.sync_readings(Duration::from_secs(600));
        if !r.success {
            return Err(format!("sync failed: {r:?}"));
        }
    }
    Ok(())
}

/// Every reading inserted so far is held locally or remotely (Property 4), and none twice remotely
/// (Property 2: the remote copy and the local delete go together, the ledger decides every re-send).
fn check_invariant(local: &mut Client, remote: &mut Client, inserted: i64, after: &Op) -> Result<(), String> {
    let remote = values(remote);
    let local = values(local);
    let mut distinct = remote.clone();
    distinct.dedup();
    if distinct.len() != remote.len() {
        return Err(format!("after {after:?}: a reading is twice on the remote: {remote:?}"));
    }
    let missing: Vec<i64> = (1..=inserted)
        .filter(|v| remote.binary_search(v).is_err() && local.binary_search(v).is_err())
        .collect();
    if !missing.is_empty() {
        return Err(format!("after {after:?}: readings lost: {missing:?}"));
    }
    Ok(())
}

fn prop_interleavings_are_exactly_once(ops: Vec<Op>, batch: u8) -> TestResult {
    with_env(|env| run_interleaving(env, &ops, batch))
}

fn run_interleaving(env: &Env, ops: &[Op], batch: u8) -> TestResult {
    truncate(env);
    let mut cfg = env.cfg.clone();
    cfg.batch_size = 1 + u32::from(batch % 6);
    let m = UploadSyncManager::new(&env.conns, &cfg);
    let (mut local, mut remote) = clients(env);
    let mut inserted = 0i64;
    for op in ops.iter().take(14) {
        match op {
            Op::Insert(n) => {
                insert_readings(&mut local, inserted, i64::from(*n));
                inserted += i64::from(*n);
            }
            Op::Sync => {
                let r = m.sync_readings(Duration::from_secs(600));
                if !r.success {
                    return TestResult::error(format!("sync failed: {r:?}"));
                }
            }
            Op::CrashAfter(steps) => crash_after(&m, *steps),
            Op::CrashInConfirmation(steps) => {
                crash_in_confirmation(&m, *steps);
            }
            Op::PassTime => pass_time(&mut local),
            Op::LoseLedger(n) => {
                let ids = batch_ids(&mut local);
                if !ids.is_empty() {
                    lose_batch(&mut local, &mut remote, &ids[usize::from(*n) % ids.len()]);
                }
            }
        }
        if let Err(e) = check_invariant(&mut local, &mut remote, inserted, op) {
            return TestResult::error(e);
        }
    }
    // The end: cycles with the window passing until everything is confirmed.
    if let Err(e) = settle(&m, &mut local, 6) {
        return TestResult::error(format!("at the end: {e}"));
    }
    let left = count(&mut local, "SELECT count(*) FROM meter_readings")
        + count(&mut local, "SELECT count(*) FROM sync_upload_batches");
    let remote_values = values(&mut remote);
    if remote_values != (1..=inserted).collect::<Vec<i64>>() || left != 0 {
        return TestResult::error(format!(
            "after {ops:?}: remote {remote_values:?}, {left} rows left locally, {inserted} inserted"
        ));
    }
    TestResult::passed()
}

thread_local! {
    static ENV: std::cell::RefCell<Option<Env>> = const { std::cell::RefCell::new(None) };
}

fn with_env<T>(f: impl FnOnce(&Env) -> T) -> T {
    ENV.with(|e| f(e.borrow().as_ref().expect("the property's Env")))
}

/// Runs `prop` 100 times (generator size `size`) on one Env with a 300 s window, shared through [`with_env`].
fn check<A: Testable>(size: usize, prop: A) {
    /// Drops the Env while the thread's runtime is still there, also when the property fails (a panic).
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            ENV.with(|e| e.borrow_mut().take());
        }
    }
    ENV.with(|e| *e.borrow_mut() = Some(Env::new(&[("UPLOAD_CONFIRM_SECONDS", "300")])));
    let _clear = Clear;
    QuickCheck::new()
        .tests(100)
        .max_tests(1000)
        .rng(Gen::new(size))
        .quickcheck(prop);
}

// **Feature: database-sync-process, Property 2: Upload-delete atomicity**
// **Feature: database-sync-process, Property 4: Data preservation on failure**
// With a confirmation window, any interleaving of new readings, cycles, crashes between the protocol's steps,
// the window passing, and failovers that lose batches still held locally ends with every reading on the remote
// exactly once; at every point in between each reading is on one side or both, never twice on the remote.
#[test]
fn interleavings_of_upload_confirmation_crash_and_ledger_loss_are_exactly_once() {
    check(12, prop_interleavings_are_exactly_once as fn(Vec<Op>, u8) -> TestResult);
}

/// Where a crash inside the confirmation step happens, and what the failover lost before it.
#[derive(Clone, Debug)]
struct ConfirmCrash {
    readings: u8,
    batch: u8,
    /// Bit i: batch i lost its ledger row and readings on the remote.
    lost: u8,
    steps: u8,
}

impl Arbitrary for ConfirmCrash {
    fn arbitrary(g: &mut Gen) -> ConfirmCrash {
        ConfirmCrash {
            readings: 1 + u8::arbitrary(g) % 30,
            batch: 1 + u8::arbitrary(g) % 8,
            lost: u8::arbitrary(g),
            steps: u8::arbitrary(g) % 12,
        }
    }
}

fn prop_crash_in_confirmation_is_exactly_once(plan: ConfirmCrash) -> TestResult {
    with_env(|env| {
        truncate(env);
        let mut cfg = env.cfg.clone();
        cfg.batch_size = u32::from(plan.batch);
        let m = UploadSyncManager::new(&env.conns, &cfg);
        let (mut local, mut remote) = clients(env);
        insert_readings(&mut local, 0, i64::from(plan.readings));
        if !m.sync_readings(Duration::from_secs(600)).success {
            return TestResult::error("the first upload failed");
        }
        for (i, id) in batch_ids(&mut local).iter().enumerate() {
            if plan.lost.rotate_right(i as u32) & 1 == 1 {
                lose_batch(&mut local, &mut remote, id);
            }
        }
        pass_time(&mut local);
        let crashed_after = crash_in_confirmation(&m, plan.steps);
        // The restart: nothing in memory survives; the next cycles settle the rest.
        if let Err(e) = settle(&m, &mut local, 3) {
            return TestResult::error(format!("after a crash after {crashed_after}: {e}"));
        }
        let left = count(&mut local, "SELECT count(*) FROM meter_readings")
            + count(&mut local, "SELECT count(*) FROM sync_upload_batches");
        let got = values(&mut remote);
        if got != (1..=i64::from(plan.readings)).collect::<Vec<i64>>() || left != 0 {
            return TestResult::error(format!(
                "after a crash after {crashed_after}: remote {got:?}, {left} rows left locally"
            ));
        }
        TestResult::passed()
    })
}

// **Feature: database-sync-process, Property 2: Upload-delete atomicity**
// **Feature: database-sync-process, Property 4: Data preservation on failure**
// A crash (kill -9) after any step of the confirmation (after the due list, after the ledger lookup, after the
// delete of the confirmed batches, after a re-send, after its new acknowledgement), with any set of batches lost
// by a failover before it, ends with every reading on the remote exactly once after the restart.
#[test]
fn a_crash_at_any_point_of_the_confirmation_step_is_exactly_once() {
    check(
        30,
        prop_crash_in_confirmation_is_exactly_once as fn(ConfirmCrash) -> TestResult,
    );
}
