//! Upload tests: Properties 1-4 of the design and exact value round trips (src/upload/batch.rs, session.rs,
//! sql.rs).

use super::*;

// ----- Properties 1-4 -----

// **Feature: database-sync-process, Property 1: Batch size limit enforcement**
// Each claimed batch holds at most BATCH_SIZE readings, in (timestamp, id) order, and they are the oldest
// unclaimed ones; successive claims (with or without finishing in between) walk the queue without gap or
// overlap. The batch's bookkeeping row names exactly its readings, in order.
fn prop_claims_are_bounded_ordered_and_oldest_first(readings: Vec<Reading>, batch: u8, finish_mask: u32) -> TestResult {
    with_env(|env| {
        env.truncate();
        insert(&mut env.pair.local.client(), &readings);
        let mut cfg = env.cfg.clone();
        cfg.batch_size = 1 + u32::from(batch % 25);
        let m = UploadSyncManager::new(&env.conns, &cfg);
        let mut l = env.pair.local.client();
        let order = local_ids_in_order(&mut l);
        let mut cursor = None;
        let mut taken = Vec::new();
        for k in 0.. {
            let Some(b) = m.claim_batch(cursor.as_ref()).expect("claim") else {
                break;
            };
            let ids = ids_of(&b);
            if ids.is_empty() || ids.len() > cfg.batch_size as usize {
                return TestResult::error(format!(
                    "batch of {} readings with BATCH_SIZE {}",
                    ids.len(),
                    cfg.batch_size
                ));
            }
            let expected = &order[taken.len()..(taken.len() + ids.len()).min(order.len())];
            if ids != expected {
                return TestResult::error(format!(
                    "batch {k} is {ids:?}, expected the oldest unclaimed {expected:?}"
                ));
            }
            let row = l
                .query_one(
                    "SELECT reading_ids FROM sync_upload_batches WHERE batch_id = $1::text::uuid",
                    &[&b.batch_id],
                )
                .expect("batch row");
            if row.get::<_, Vec<i64>>(0) != ids {
                return TestResult::error("the bookkeeping row does not name the batch's readings in order");
            }
            // A full batch unless it is the last one.
            if ids.len() < cfg.batch_size as usize && taken.len() + ids.len() != order.len() {
                return TestResult::error("a short batch before the end of the queue");
            }
            taken.extend(ids);
            cursor = b.cursor();
            if finish_mask >> (k % 32) & 1 == 1 {
                m.finish_batch(&b.batch_id).expect("finish");
            }
        }
        TestResult::from_bool(taken == order)
    })
}

#[test]
fn prop_1_batch_size_limit() {
    check(
        Env::new(&[]),
        100,
        prop_claims_are_bounded_ordered_and_oldest_first as fn(Vec<Reading>, u8, u32) -> TestResult,
    );
}

// **Feature: database-sync-process, Property 2: Upload-delete atomicity**
// After a successful upload and finish, exactly the claimed ids are gone locally (every other reading is
// still there) and exactly the claimed readings are present remotely, with the batch in the ledger; a full
// drain then leaves the remote equal to the original queue as a multiset.
fn prop_upload_then_finish_moves_exactly_the_batch(readings: Vec<Reading>, batch: u8) -> TestResult {
    if readings.is_empty() {
        return TestResult::discard();
    }
    with_env(|env| {
        env.truncate();
        insert(&mut env.pair.local.client(), &readings);
        let mut cfg = env.cfg.clone();
        cfg.batch_size = 1 + u32::from(batch % 40);
        let m = UploadSyncManager::new(&env.conns, &cfg);
        let (mut l, mut r) = (env.pair.local.client(), env.pair.remote.client());
        let before_ids = local_ids_in_order(&mut l);
        let before = snapshot(&mut l);
        let b = m.claim_batch(None).expect("claim").expect("a batch");
        let claimed: Vec<i64> = ids_of(&b);
        let claimed_rows = query_readings(&mut l, "FROM meter_readings WHERE id = ANY($1::int8[])", &[&claimed]);
        assert_eq!(
            m.upload_batch(&b).expect("upload"),
            UploadOutcome::Uploaded(claimed.len() as u64)
        );
        assert_eq!(m.finish_batch(&b.batch_id).expect("finish"), claimed.len() as u64);
        let after_ids = local_ids_in_order(&mut l);
        let expected_left: Vec<i64> = before_ids.iter().copied().filter(|i| !claimed.contains(i)).collect();
        if after_ids != expected_left {
            return TestResult::error("local readings other than exactly the claimed ones changed");
        }
        let mut want = claimed_rows;
        want.sort();
        if snapshot(&mut r) != want {
            return TestResult::error("the remote does not hold exactly the claimed readings");
        }
        let ledger: i32 = r
            .query_one(
                "SELECT row_count FROM sync_upload_ledger WHERE source_id = 'test-site' AND batch_id = $1::text::uuid",
                &[&b.batch_id],
            )
            .expect("ledger row")
            .get(0);
        if ledger as usize != claimed.len() {
            return TestResult::error("ledger row_count");
        }
        // The rest of the queue, by the drain.
        let res = m.sync_readings(Duration::from_secs(600));
        if !res.success || res.records_uploaded as usize != before.len() - claimed.len() {
            return TestResult::error(format!("drain: {res:?}"));
        }
        TestResult::from_bool(snapshot(&mut r) == before && snapshot(&mut l).is_empty())
    })
}

#[test]
fn prop_2_upload_delete_atomicity() {
    check(
        Env::new(&[]),
        100,
        prop_upload_then_finish_moves_exactly_the_batch as fn(Vec<Reading>, u8) -> TestResult,
    );
}

/// How the remote statement of Property 3 fails.
#[derive(Clone, Copy, Debug)]
enum Failure {
    /// A CHECK constraint rejects a value (SQLSTATE 23514, a data error).
    Check,
    /// A trigger raises an exception (P0001, not a data error).
    Trigger,
    /// A trigger raises numeric_value_out_of_range (22003) from the k-th row on.
    TriggerData,
}

impl Arbitrary for Failure {
    fn arbitrary(g: &mut Gen) -> Failure {
        pick(g, &[Failure::Check, Failure::Trigger, Failure::TriggerData])
    }
}

fn local_full_state(c: &mut Client) -> Vec<String> {
    let mut v: Vec<String> = c
        .query(
            "SELECT id || '|' || meter_id || '|' || timestamp::text || '|' || value::text || '|' || unit || '|' ||
                    coalesce(metadata::text, '<NULL>') || '|' || coalesce(created_at::text, '') FROM meter_readings",
            &[],
        )
        .expect("local state")
        .iter()
        .map(|r| r.get(0))
        .collect();
    v.sort();
    v
}

// **Feature: database-sync-process, Property 3: Transaction atomicity**
// When the remote statement fails at any row (a constraint, a trigger raising, a data error in the middle of
// the batch), no reading of the batch and no ledger row persist remotely, and nothing changes locally except
// the batch bookkeeping (the readings are still there, unchanged, and still claimed).
fn prop_failed_upload_leaves_nothing_behind(readings: Vec<Reading>, poison_at: usize, failure: Failure) -> TestResult {
    if readings.is_empty() {
        return TestResult::discard();
    }
    with_env(|env| {
        env.truncate();
        let mut readings = readings;
        let k = poison_at % readings.len();
        // Ties on timestamp would make the claim order differ from the insert order: poison by content.
        match failure {
            Failure::Check => readings[k].unit = "poison-unit".into(),
            Failure::Trigger => readings[k].meter = "poison-raise".into(),
            Failure::TriggerData => readings[k].meter = "poison-data".into(),
        }
        insert(&mut env.pair.local.client(), &readings);
        let mut cfg = env.cfg.clone();
        cfg.batch_size = readings.len() as u32;
        let m = UploadSyncManager::new(&env.conns, &cfg);
        let (mut l, mut r) = (env.pair.local.client(), env.pair.remote.client());
        let before = local_full_state(&mut l);
        let b = m.claim_batch(None).expect("claim").expect("a batch");
        let err = match m.upload_batch(&b) {
            Ok(o) => return TestResult::error(format!("the upload succeeded: {o:?}")),
            Err(e) => e,
        };
        let expect_data = !matches!(failure, Failure::Trigger);
        if err.is_data_error() != expect_data || err.is_transient() {
            return TestResult::error(format!("misclassified ({failure:?}): {err}"));
        }
        let remote_rows = count(&mut r, "SELECT count(*) FROM meter_readings");
        let ledger_rows = count(&mut r, "SELECT count(*) FROM sync_upload_ledger");
        let after = local_full_state(&mut l);
        let still_claimed: Vec<i64> = l
            .query_one(
                "SELECT reading_ids FROM sync_upload_batches WHERE batch_id = $1::text::uuid",
                &[&b.batch_id],
            )
            .expect("batch row")
            .get(0);
        TestResult::from_bool(remote_rows == 0 && ledger_rows == 0 && after == before && still_claimed == ids_of(&b))
    })
}

#[test]
fn prop_3_transaction_atomicity() {
    let mut env = Env::new(&[]);
    env.remote
        .batch_execute(
            "ALTER TABLE meter_readings ADD CONSTRAINT no_poison_unit CHECK (unit <> 'poison-unit');
             CREATE FUNCTION reject_poison() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.meter_id = 'poison-raise' THEN RAISE EXCEPTION 'rejected by trigger'; END IF;
               IF NEW.meter_id = 'poison-data' THEN
                 RAISE EXCEPTION 'value out of range' USING ERRCODE = 'numeric_value_out_of_range';
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER reject_poison BEFORE INSERT ON meter_readings FOR EACH ROW EXECUTE FUNCTION reject_poison();",
        )
        .expect("remote constraint and trigger");
    check(
        env,
        100,
        prop_failed_upload_leaves_nothing_behind as fn(Vec<Reading>, usize, Failure) -> TestResult,
    );
}

// **Feature: database-sync-process, Property 4: Data preservation on failure**
// With the remote unreachable, a cycle fails and every reading stays local, unchanged and unsynchronized
// (is_synchronized false), whatever the queue and batch size; the error names the remote and is never taken
// for a data error; nothing is quarantined.
fn prop_unreachable_remote_keeps_everything(readings: Vec<Reading>, batch: u8) -> TestResult {
    with_env(|env| {
        env.truncate();
        insert(&mut env.pair.local.client(), &readings);
        let mut cfg = env.cfg.clone();
        cfg.batch_size = 1 + u32::from(batch % 30);
        let m = UploadSyncManager::new(&env.conns, &cfg);
        let mut l = env.pair.local.client();
        let before = local_full_state(&mut l);
        let res = m.sync_readings(Duration::from_secs(60));
        let after = local_full_state(&mut l);
        let unsynced = count(
            &mut l,
            "SELECT count(*) FROM meter_readings WHERE is_synchronized IS NOT TRUE",
        );
        let ok = if readings.is_empty() {
            res.success && res.records_uploaded == 0
        } else {
            !res.success
                && res.records_uploaded == 0
                && res.records_deleted == 0
                && res.records_quarantined == 0
                && res
                    .error
                    .as_deref()
                    .is_some_and(|e| e.contains(&format!("{}:{}", cfg.remote.host, cfg.remote.port)))
        };
        let direct = m.upload_batch(&ClaimedBatch {
            batch_id: "00000000-0000-0000-0000-000000000001".into(),
            readings: vec![],
            row_bytes: 0,
        });
        let classified = matches!(&direct, Err(e) if e.is_transient() && !e.is_data_error());
        TestResult::from_bool(
            ok && classified
                && after == before
                && unsynced == readings.len() as i64
                && count(&mut l, "SELECT count(*) FROM sync_quarantine") == 0,
        )
    })
}

#[test]
fn prop_4_data_preservation_on_failure() {
    // The remote is migrated directly, then reached through a port nobody listens on. That fails at once (the
    // pool's TCP probe sees the refusal before r2d2 would retry until DB_CONNECTION_TIMEOUT_MS), so the
    // connection timeout stays the harness's generous one: the local side must connect within it, also on a
    // loaded machine (a 20 ms timeout here timed out the local side under load).
    let port = closed_port().to_string();
    let env = Env::builder()
        .vars(&[
            ("MAX_CONNECTION_RETRIES", "0"),
            ("MAX_QUERY_RETRIES", "1"),
            ("RETRY_BASE_DELAY_MS", "1"),
        ])
        .edit(move |_, map| {
            map.insert("POSTGRES_CLIENT_PORT".into(), port);
        })
        .build();
    check(
        env,
        100,
        prop_unreachable_remote_keeps_everything as fn(Vec<Reading>, u8) -> TestResult,
    );
}

// ----- Exact values -----

#[test]
fn exact_values_round_trip_across_time_zones() {
    let pair = DbPair::new();
    // Three different zones: local server session, remote server session, and this test's sessions (UTC).
    pair.local
        .client()
        .batch_execute(&format!(
            "ALTER DATABASE {} SET timezone = 'America/New_York'",
            pair.local.name()
        ))
        .expect("tz");
    pair.remote
        .client()
        .batch_execute(&format!(
            "ALTER DATABASE {} SET timezone = 'Asia/Tokyo'",
            pair.remote.name()
        ))
        .expect("tz");
    let mut env = Env::builder().on(pair).vars(&[("BATCH_SIZE", "7")]).build();
    let thousand_digits: String = "1234567890".repeat(100);
    let fraction = format!("0.{}", "9876543210".repeat(50));
    let values = [
        thousand_digits.as_str(),
        fraction.as_str(),
        "1e-300",
        "NaN",
        "1.50",
        "1.5",
        "-0.000",
        "0",
        "-123456789012345678901234567890.000000000000000000001",
    ];
    let times = [
        "2024-02-29 23:59:59.999999",
        "2024-03-31 02:30:00.000001",
        "infinity",
        "-infinity",
        "0001-01-01 00:00:00",
        "0044-03-15 12:00:00 BC",
        "4713-01-01 00:00:00 BC",
        "294276-12-31 23:59:59.999999",
    ];
    let metas: [Option<&str>; 7] = [
        None,
        Some("null"),
        Some(r#"{"a": null, "b": [null, {"c": null}], "ü": "日本語 😀", "e": "\u00e9"}"#),
        Some(r#""just a string""#),
        Some("[]"),
        Some(r#"{"big": 123456789012345678901234567890.123456789, "tiny": 1e-300}"#),
        Some(r#"{"quote": "it's \"q\" \\ back"}"#),
    ];
    let meters = [
        "o'brien",
        "back\\slash",
        "\"double\"",
        "semi;colon --",
        "",
        "new\nline",
        "ünïcødé",
    ];
    let mut readings = Vec::new();
    for (i, v) in values.iter().enumerate() {
        for (j, t) in times.iter().enumerate() {
            let md = metas[(i + j) % metas.len()];
            readings.push(Reading::new(meters[(i * 3 + j) % meters.len()], t, v, md));
        }
    }
    // Identical readings are each their own reading.
    let twin = Reading::new("twin", "2024-05-05 05:05:05.5", "5.50", Some(r#"{"same": true}"#));
    readings.extend([twin.clone(), twin.clone(), twin]);
    insert(&mut env.local, &readings);
    let original = snapshot(&mut env.local);
    let r = env.sync();
    assert!(r.success, "{r:?}");
    assert_eq!(r.records_uploaded, readings.len() as u64);
    assert_eq!(r.records_deleted, readings.len() as u64);
    assert_exactly_once(&mut env.pair.local.client(), &mut env.pair.remote.client(), &original);
    // Spot checks in the remote's own zone and datestyle-independent forms.
    let mut remote = env.pair.remote.client();
    let n: i64 = remote
        .query_one(
            "SELECT count(*) FROM meter_readings WHERE value::text = $1 AND scale(value) = 2",
            &[&"1.50"],
        )
        .expect("1.50")
        .get(0);
    assert_eq!(n, times.len() as i64, "1.50 keeps its scale");
    let twins = count(
        &mut remote,
        "SELECT count(*) FROM meter_readings WHERE meter_id = 'twin'",
    );
    assert_eq!(twins, 3);
    let nulls = count(
        &mut remote,
        "SELECT count(*) FROM meter_readings WHERE metadata IS NULL",
    );
    let json_nulls = count(
        &mut remote,
        "SELECT count(*) FROM meter_readings WHERE metadata = 'null'::jsonb",
    );
    let expect_nulls = readings.iter().filter(|r| r.md.is_none()).count() as i64;
    let expect_json_nulls = readings.iter().filter(|r| r.md.as_deref() == Some("null")).count() as i64;
    assert_eq!(
        (nulls, json_nulls),
        (expect_nulls, expect_json_nulls),
        "SQL NULL and JSON null stay distinct"
    );
    let ordered: Vec<String> = remote
        .query("SELECT timestamp::text FROM meter_readings ORDER BY id", &[])
        .expect("remote order")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut sorted_by_time: Vec<String> = env
        .pair
        .local
        .client()
        .query(
            "SELECT t::timestamp::text FROM unnest($1::text[]) AS t ORDER BY t::timestamp",
            &[&readings.iter().map(|r| r.ts.clone()).collect::<Vec<_>>()],
        )
        .expect("sorted times")
        .iter()
        .map(|r| r.get(0))
        .collect();
    sorted_by_time.dedup();
    let mut seen = ordered.clone();
    seen.dedup();
    assert_eq!(seen, sorted_by_time, "remote insertion order follows timestamp order");
}
