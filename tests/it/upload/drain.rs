//! Upload tests: drain control (shutdown, budget), the ledger prune, the upload lock, the statements'
//! indexes, readings another program marked synchronized (src/upload/mod.rs, session.rs).

use super::*;

// ----- Drain control, ledger, lock -----

#[test]
fn shutdown_and_an_exhausted_budget_stop_between_batches() {
    let env = Env::new(&[("BATCH_SIZE", "100"), ("UPLOAD_MAX_ROWS_PER_SECOND", "1000")]);
    let mut l = env.pair.local.client();
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
        let t = s.spawn(|| sync_with(&env.conns, &env.cfg));
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
    assert_exactly_once(&mut env.pair.local.client(), &mut env.pair.remote.client(), &original);
    assert_eq!(env.manager().oldest_pending_age().expect("age"), None);
}

#[test]
fn ledger_prune_keeps_recent_rows_pending_batches_and_other_sources() {
    let mut env = Env::new(&[]);
    let mut l = env.pair.local.client();
    insert(&mut env.local, &[Reading::new("m", "2024-01-01 00:00:00", "1", None)]);
    let pending = env.manager().claim_batch(None).expect("claim").expect("batch");
    let mut r = env.pair.remote.client();
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
    let mut env = Env::new(&[]);
    insert(&mut env.local, &[Reading::new("m", "2024-01-01 00:00:00", "1", None)]);
    let mut holder = env.pair.local.client();
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
    insert(&mut env.local, &[Reading::new("m", "2024-01-01 00:00:01", "2", None)]);
    let r = env.sync();
    assert!(r.success && r.records_uploaded == 1, "{r:?}");
}

#[test]
fn the_claim_and_finish_statements_use_their_indexes() {
    let env = Env::new(&[]);
    let mut l = env.pair.local.client();
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

// ----- The is_synchronized flag -----

#[test]
fn readings_marked_synchronized_by_another_program_are_not_uploaded_again() {
    let mut env = Env::new(&[]);
    let queued = vec![
        Reading::new("m-1", "2024-01-01 00:00:01", "1.50", None),
        Reading::new("m-1", "2024-01-01 00:00:03", "3.50", None),
    ];
    insert(&mut env.local, &queued);
    // A legacy row that an earlier uploader marked as done (the design's is_synchronized flag).
    let legacy_id = insert(
        &mut env.local,
        &[Reading::new("m-1", "2024-01-01 00:00:02", "2.50", None)],
    )[0];
    env.local
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
    assert_eq!(snapshot(&mut env.remote), expected, "only the unmarked readings arrive");
    let left = count(
        &mut env.local,
        "SELECT count(*) FROM meter_readings WHERE is_synchronized",
    );
    assert_eq!(left, 1, "the marked row is left alone");
}
