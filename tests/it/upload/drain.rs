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
    let plan =
        |l: &mut Client, prepare: String, execute: &str| -> String { explain(l, &prepare, "", execute).join("\n") };
    let first = plan(
        &mut l,
        format!("PREPARE c1(int8) AS {}", upload::sql::CLAIM_FIRST),
        "EXECUTE c1(100)",
    );
    assert!(first.contains("idx_meter_readings_claim"), "{first}");
    // The byte bound's running sum streams over the index scan (no sort of the whole queue before the limit).
    let under_window = first
        .lines()
        .skip_while(|l| !l.contains("WindowAgg"))
        .nth(1)
        .unwrap_or("");
    assert!(
        under_window.contains("Index Scan using idx_meter_readings_claim"),
        "{first}"
    );
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
    let under_window = next
        .lines()
        .skip_while(|l| !l.contains("WindowAgg"))
        .nth(1)
        .unwrap_or("");
    assert!(
        under_window.contains("Index Scan using idx_meter_readings_claim"),
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

/// Shared buffers (hit + read) of `statement` as EXPLAIN (ANALYZE, BUFFERS) counts them for its top node, run
/// in a transaction that is rolled back.
fn buffers_of(l: &mut Client, statement: &str) -> u64 {
    let plan = explain(l, "", "(ANALYZE, BUFFERS)", statement);
    let line = plan
        .iter()
        .find(|l| l.trim_start().starts_with("Buffers: shared"))
        .cloned();
    line.unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("hit=").or_else(|| w.strip_prefix("read=")))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

// After a drain, the claim index still holds an entry for every reading it deleted (until vacuum). A claim from
// the start visits each of their rows to find it dead; the drain's later claims from the start (CLAIM_LATE:
// only ids above where its pass began) skip those entries inside the index and find just the readings that
// arrived since.
#[test]
fn a_late_claim_does_not_visit_the_rows_a_drain_deleted() {
    let env = Env::new(&[]);
    let mut l = env.pair.local.client();
    insert_many(&mut l, 20_000);
    l.batch_execute("ANALYZE meter_readings").expect("analyze");
    let began = count(&mut l, "SELECT max(id)::int8 FROM meter_readings");
    l.batch_execute("DELETE FROM meter_readings").expect("drained");
    insert_readings(&mut l, 5, "2023-06-01 00:00:00", "1 second");
    let late = upload::sql::CLAIM_LATE
        .replace("$1", "100")
        .replace("$2", &began.to_string());
    l.batch_execute("BEGIN").expect("begin");
    let rows = l.query(&late, &[]).expect("late claim");
    l.batch_execute("ROLLBACK").expect("rollback");
    assert_eq!(
        rows.len(),
        5,
        "the late claim takes exactly the readings that arrived since"
    );
    // The same with UPLOAD_VALIDATE's checks (every reading here passes finite-value).
    l.batch_execute("BEGIN").expect("begin");
    l.batch_execute(&format!(
        "PREPARE lc(int8, int8, text[], int8, int8, text) AS {}",
        upload::sql::CLAIM_LATE_CHECKED
    ))
    .expect("prepare the validated late claim");
    let checked = l
        .query(
            &format!("EXECUTE lc(100, {began}, '{{finite-value}}', -86400, 86400, '1 day')"),
            &[],
        )
        .expect("validated late claim");
    l.batch_execute("ROLLBACK").expect("rollback");
    assert_eq!(checked.len(), 5, "the validated late claim takes the same readings");
    let late_buffers = buffers_of(&mut l, &late);
    let first_buffers = buffers_of(&mut l, &upload::sql::CLAIM_FIRST.replace("$1", "100"));
    assert!(
        late_buffers * 20 < first_buffers,
        "late claim {late_buffers} buffers, claim from the start {first_buffers}"
    );
}

// A reading that arrives during a drain with a timestamp older than the drain's cursor (a meter that was offline
// reporting its backlog) goes up in that same drain: the drain's claim from the start after its pass takes the
// ids above where the pass began.
#[test]
fn a_reading_that_arrives_behind_the_cursor_goes_up_in_the_same_drain() {
    let env = Env::builder().remote_via_proxy().vars(&[("BATCH_SIZE", "20")]).build();
    env.proxy().set_latency(Duration::from_millis(3));
    let mut l = env.pair.local.client();
    insert_readings(&mut l, 2_000, "2024-01-01 00:00:00", "1 second");
    let r = thread::scope(|s| {
        s.spawn(|| {
            let mut r = env.pair.remote.client();
            for _ in 0..2_000 {
                if count(&mut r, "SELECT count(*) FROM meter_readings") >= 500 {
                    break;
                }
                thread::sleep(Duration::from_millis(5));
            }
            insert(
                &mut env.pair.local.client(),
                &[Reading::new("offline", "2023-06-01 00:00:00", "7.25", None)],
            );
        });
        env.sync()
    });
    assert!(r.success && r.records_uploaded == 2_001, "{r:?}");
    assert_eq!(count(&mut l, "SELECT count(*) FROM meter_readings"), 0);
    assert_eq!(
        count(
            &mut env.pair.remote.client(),
            "SELECT count(*) FROM meter_readings WHERE meter_id = 'offline' AND value = 7.25"
        ),
        1
    );
    assert_eq!(
        count(&mut env.pair.remote.client(), "SELECT count(*) FROM meter_readings"),
        2_001
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

// ----- Batch sizes: growing batches (BATCH_SIZE_MAX) and the claim's byte bound -----

/// The ledger's batch sizes of this drain, in upload order (serial uploads: one transaction after the other).
fn ledger_sizes(remote: &mut Client) -> Vec<i32> {
    remote
        .query(
            "SELECT row_count FROM sync_upload_ledger ORDER BY uploaded_at, batch_id",
            &[],
        )
        .expect("ledger")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

// With BATCH_SIZE_MAX above BATCH_SIZE, batches double while a backlog remains (a full batch came back), up to
// the maximum; the last one is short; each is its own ledger row; everything arrives once, in order. Then, with
// the queue short, the next drain starts again at BATCH_SIZE.
#[test]
fn batches_grow_up_to_batch_size_max_while_a_backlog_remains() {
    let env = Env::new(&[("BATCH_SIZE", "10"), ("BATCH_SIZE_MAX", "160")]);
    let mut l = env.pair.local.client();
    insert_readings(&mut l, 1_000, "2024-01-01 00:00:00", "1 second");
    let original = snapshot(&mut l);
    let r = env.sync();
    assert!(r.success && r.records_uploaded == 1_000, "{r:?}");
    assert_exactly_once(&mut l, &mut env.pair.remote.client(), &original);
    assert_eq!(remote_order_inversions(&mut env.pair.remote.client()), 0);
    assert_eq!(
        ledger_sizes(&mut env.pair.remote.client()),
        [10, 20, 40, 80, 160, 160, 160, 160, 160, 50]
    );
    // A short queue: batches of BATCH_SIZE again (15 readings: 10, then 5).
    env.pair
        .remote
        .client()
        .batch_execute("TRUNCATE sync_upload_ledger")
        .expect("truncate");
    insert_readings(&mut l, 15, "2024-02-01 00:00:00", "1 second");
    assert!(env.sync().success);
    assert_eq!(ledger_sizes(&mut env.pair.remote.client()), [10, 5]);
}

/// Metadata of about `bytes` bytes that compression cannot shrink (so it is stored at its size).
fn incompressible_metadata(bytes: usize, seed: u64) -> String {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let s: String = (0..bytes)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            alphabet[(x >> 33) as usize % alphabet.len()] as char
        })
        .collect();
    format!("{{\"blob\": \"{s}\"}}")
}

// A claim is bounded by bytes as well: with 1 MB metadata rows among small ones, a claim of up to 50 readings
// stops before its row data passes 1 MiB (a 3 MB row is a batch of its own), claims still walk the queue in
// order without gap or overlap, and the drain (here: recovery of those claimed batches) delivers everything
// exactly once, in order.
#[test]
fn a_claim_is_bounded_by_bytes_and_large_readings_still_arrive_once_in_order() {
    let env = Env::new(&[("BATCH_SIZE", "50"), ("BATCH_SIZE_MAX", "50")]);
    let mut l = env.pair.local.client();
    let big = incompressible_metadata(1_000_000, 1);
    let huge = incompressible_metadata(3_000_000, 2);
    let readings: Vec<Reading> = (0..60)
        .map(|i| {
            let md = match i {
                30 => Some(huge.clone()),
                i if i % 5 == 0 => Some(big.clone()),
                _ => Some(format!("{{\"seq\": {i}}}")),
            };
            Reading::new(
                "m",
                &format!("2024-01-01 00:{:02}:{:02}", i / 60, i % 60),
                &i.to_string(),
                md.as_deref(),
            )
        })
        .collect();
    insert(&mut l, &readings);
    let original = snapshot(&mut l);
    let order = local_ids_in_order(&mut l);
    let size_of = |ids: &[i64], l: &mut Client| -> i64 {
        count(
            l,
            &format!(
                "SELECT sum(pg_column_size(metadata))::int8 FROM meter_readings WHERE id = ANY('{{{}}}'::int8[])",
                ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
            ),
        )
    };
    let m = env.manager();
    let (mut cursor, mut taken, mut batches) = (None, Vec::new(), 0);
    while let Some(b) = m.claim_batch(cursor.as_ref()).expect("claim") {
        let ids = ids_of(&b);
        let bytes = size_of(&ids, &mut l);
        assert!(
            ids.len() == 1 || bytes <= upload::sql::CLAIM_MAX_BYTES as i64,
            "a batch of {} readings with {bytes} bytes of metadata",
            ids.len()
        );
        assert!(ids.len() <= 50);
        taken.extend(ids);
        cursor = b.cursor();
        batches += 1;
    }
    assert_eq!(
        taken, order,
        "the claims walk the queue in order, without gap or overlap"
    );
    // 12 readings of 1 MB and one of 3 MB, each a batch of its own under the 1 MiB bound: at least 7 batches, not 2.
    assert!(batches >= 7, "{batches} batches");
    let r = env.sync();
    assert!(r.success && r.records_uploaded == 60, "{r:?}");
    assert_eq!(
        count(&mut env.pair.remote.client(), "SELECT count(*) FROM sync_upload_ledger"),
        batches
    );
    assert_exactly_once(&mut l, &mut env.pair.remote.client(), &original);
    assert_eq!(remote_order_inversions(&mut env.pair.remote.client()), 0);
}
