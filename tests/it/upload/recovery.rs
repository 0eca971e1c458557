//! Upload tests: crash safety at every step boundary and link cuts during a drain (src/upload/drain.rs:
//! recovery).

use super::*;

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
        insert(&mut env.pair.local.client(), &plan.readings);
        let original = snapshot(&mut env.pair.local.client());
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
        let remote = snapshot(&mut env.pair.remote.client());
        let mut l = env.pair.local.client();
        let left = count(&mut l, "SELECT count(*) FROM meter_readings")
            + count(&mut l, "SELECT count(*) FROM sync_upload_batches");
        let out_of_order = count(
            &mut env.pair.remote.client(),
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
    let mut env = Env::new(&[("BATCH_SIZE", "10")]);
    // A remote unique constraint on the readings themselves: a second insert of the same rows would fail on it
    // (a data error) if the ledger were not checked first.
    env.remote
        .batch_execute("ALTER TABLE meter_readings ADD CONSTRAINT one_per_instant UNIQUE (meter_id, timestamp)")
        .expect("unique constraint");
    let readings = numbered(10, None);
    insert(&mut env.local, &readings);
    let original = snapshot(&mut env.local);
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
    assert_exactly_once(&mut env.pair.local.client(), &mut env.pair.remote.client(), &original);
}

#[test]
fn killed_child_process_then_once_again_is_exactly_once() {
    let env = Env::new(&[]);
    let mut l = env.pair.local.client();
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
    assert_exactly_once(&mut env.pair.local.client(), &mut env.pair.remote.client(), &original);
}

// ----- Faults -----

#[test]
fn link_cuts_during_a_long_drain_are_exactly_once() {
    let env = Env::builder()
        .remote_via_proxy()
        .vars(&[("MAX_QUERY_RETRIES", "3"), ("RETRY_BASE_DELAY_MS", "5")])
        .build();
    let mut l = env.pair.local.client();
    insert_many(&mut l, 20_000);
    let original = snapshot(&mut l);
    let cycles = drain_while_cutting(&env, 5..65);
    eprintln!(
        "drained through {cycles} cycle(s) and {} connections",
        env.proxy().connections_opened()
    );
    assert_exactly_once(&mut env.pair.local.client(), &mut env.pair.remote.client(), &original);
}
