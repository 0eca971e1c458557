//! Integration tests: upload (exactly-once store-and-forward), against real PostgreSQL. This module holds the
//! set-up shared by its rooms, which mirror src/upload:
//! - `properties` — Properties 1-4 of the design (quickcheck, one database pair per property, truncated
//!   between cases) and exact value round trips (the claim, upload and finish statements);
//! - `recovery` — crash safety at every step boundary (by stopping between the protocol's steps and by
//!   SIGKILL of a child process) and link cuts during a drain;
//! - `pipeline` — several batches in flight, the chain statements, connection errors and a real outage;
//! - `poison` — poison readings and the quarantine, a remote that rejects everything, the quarantine command;
//! - `drain` — shutdown and budget, the ledger prune, the upload lock, the statements' indexes;
//! - `validate` — UPLOAD_VALIDATE: each check, a clock far off, the quarantine round trip, /metrics, Property 2.

use std::cell::RefCell;
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
use crate::support::env::{closed_port, count, Env};
use crate::support::pg::{DbPair, PgServer};
use crate::support::readings::{
    assert_exactly_once, insert, insert_many, insert_readings, pick, query_readings, remote_order_inversions, snapshot,
    Reading,
};

mod drain;
mod pipeline;
mod poison;
mod properties;
mod recovery;
mod validate;

// ----- Set-up -----

/// What the upload rooms add to the shared [`Env`]: the daemon's upload manager on its pools, one full drain,
/// and emptying both sides between quickcheck cases. (An extension trait: [`Env`] is the whole binary's.)
trait UploadEnv {
    fn manager(&self) -> UploadSyncManager<'_>;
    fn sync(&self) -> UploadSyncResult;
    fn truncate(&self);
}

impl UploadEnv for Env {
    fn manager(&self) -> UploadSyncManager<'_> {
        UploadSyncManager::new(&self.conns, &self.cfg)
    }

    fn sync(&self) -> UploadSyncResult {
        sync_with(&self.conns, &self.cfg)
    }

    fn truncate(&self) {
        self.pair
            .local
            .client()
            .batch_execute("TRUNCATE meter_readings, sync_upload_batches, sync_quarantine")
            .expect("truncating local");
        self.pair
            .remote
            .client()
            .batch_execute("TRUNCATE meter_readings, sync_upload_ledger")
            .expect("truncating remote");
    }
}

/// One drain (an hour's budget) on these pools. For a thread: [`Env`] holds clients, so `&Env` cannot cross
/// threads, but `&env.conns` and `&env.cfg` can.
fn sync_with(conns: &ConnectionManager, cfg: &Config) -> UploadSyncResult {
    UploadSyncManager::new(conns, cfg).sync_readings(Duration::from_secs(3600))
}

/// `n` (< 60) readings of meter `m`, one a second from 2024-01-01 00:00:00, the i-th with value `i`.
fn numbered(n: usize, md: Option<&str>) -> Vec<Reading> {
    (0..n)
        .map(|i| Reading::new("m", &format!("2024-01-01 00:00:{i:02}"), &i.to_string(), md))
        .collect()
}

/// The lines of `EXPLAIN <options> <statement>`, run after `setup` (e.g. a PREPARE; may be empty) in a
/// transaction that is rolled back (EXPLAIN ANALYZE runs the statement).
fn explain(l: &mut Client, setup: &str, options: &str, statement: &str) -> Vec<String> {
    l.batch_execute("BEGIN").expect("begin");
    l.batch_execute(setup).expect("setup");
    let lines = l
        .query(&format!("EXPLAIN {options} {statement}"), &[])
        .expect("explain")
        .iter()
        .map(|r| r.get(0))
        .collect();
    l.batch_execute("ROLLBACK").expect("rollback");
    lines
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

/// Drains the queue cycle after cycle (at most 200) while every connection through the Env's proxy is cut again
/// and again, after a random pause in `pause_ms`. Asserts the last cycle succeeded; returns the number of cycles.
fn drain_while_cutting(env: &Env, pause_ms: std::ops::Range<u64>) -> usize {
    let (proxy, conns, cfg) = (env.proxy(), &env.conns, &env.cfg);
    let mut g = Gen::new(1000);
    thread::scope(|s| {
        let drain = s.spawn(|| {
            let mut results = Vec::new();
            loop {
                let r = sync_with(conns, cfg);
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
