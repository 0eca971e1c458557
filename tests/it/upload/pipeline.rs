//! Upload tests: several batches in flight, the chain statements, connection errors and an outage
//! (src/upload/drain.rs and uplink.rs).

use super::*;

// ----- Several batches in flight (UPLOAD_BATCHES_IN_FLIGHT > 1) -----

/// Remote readings whose timestamp is older than that of a reading inserted before them (by remote id).
fn remote_out_of_order(env: &Env) -> i64 {
    count(
        &mut env.pair.remote.client(),
        "SELECT count(*) FROM (SELECT timestamp < lag(timestamp) OVER (ORDER BY id) AS back \
         FROM meter_readings) AS x WHERE back",
    )
}

// With 2-4 batches in flight on as many connections, and poison readings among them (so that batches fail
// while later ones are in flight and must be sent again), every good reading arrives exactly once, the poison
// ones are quarantined, and remote insertion order still follows timestamp order.
fn prop_batches_in_flight_arrive_once_and_in_order(
    readings: Vec<Reading>,
    batch: u8,
    width: u8,
    poison_mask: u64,
) -> TestResult {
    with_env(|env| {
        env.truncate();
        env.pair
            .remote
            .client()
            .batch_execute("TRUNCATE sync_upload_chain")
            .expect("truncating the chain");
        insert(&mut env.pair.local.client(), &readings);
        // Poison by position in claim order, every fourth reading and the last one good: the control readings
        // of a rejected batch (the oldest 8 queued outside it) then always include a good one (a batch rejected
        // along with every control reading is a storm, the remote rejecting everything, which is not what this
        // property is about).
        let n = readings.len() as i64;
        let ranks: Vec<i64> = (1..n)
            .filter(|&rank| rank % 4 != 0 && poison_mask.rotate_right(rank as u32) & 0b11 == 0b11)
            .collect();
        env.pair
            .local
            .client()
            .execute(
                "UPDATE meter_readings SET unit = 'poison' WHERE id IN (SELECT id FROM \
                 (SELECT id, row_number() OVER (ORDER BY timestamp, id) AS rank FROM meter_readings) AS r \
                 WHERE rank = ANY($1))",
                &[&ranks],
            )
            .expect("poisoning");
        let poison = ranks.len() as u64;
        let original = snapshot(&mut env.pair.local.client());
        let mut cfg = env.cfg.clone();
        cfg.batch_size = 1 + u32::from(batch % 7);
        cfg.upload_batches_in_flight = 2 + u32::from(width % 3);
        let r = UploadSyncManager::new(&env.conns, &cfg).sync_readings(Duration::from_secs(600));
        if !r.success || r.records_quarantined != poison {
            return TestResult::error(format!("{r:?}, {poison} poison readings"));
        }
        let good: Vec<Reading> = original.into_iter().filter(|r| r.unit != "poison").collect();
        let remote = snapshot(&mut env.pair.remote.client());
        let left = count(&mut env.pair.local.client(), "SELECT count(*) FROM meter_readings")
            + count(&mut env.pair.local.client(), "SELECT count(*) FROM sync_upload_batches");
        let out_of_order = remote_out_of_order(env);
        let chained = count(&mut env.pair.remote.client(), "SELECT count(*) FROM sync_upload_chain");
        if r.batches >= 8 && chained == 0 {
            return TestResult::error(format!("{} batches, none went up chained: {r:?}", r.batches));
        }
        if remote != good || left != 0 || out_of_order != 0 {
            return TestResult::error(format!(
                "remote {} readings (want {}), {left} left locally, {out_of_order} out of order; {r:?}",
                remote.len(),
                good.len()
            ));
        }
        TestResult::passed()
    })
}

#[test]
fn batches_in_flight_arrive_once_and_in_order() {
    // A 2 ms round trip: the drain waits for the remote, so it keeps several batches in flight (on loopback it
    // stays at one).
    let mut env = Env::builder()
        .remote_via_proxy()
        .vars(&[("UPLOAD_BATCHES_IN_FLIGHT", "4")])
        .build();
    env.proxy().set_latency(Duration::from_millis(1));
    env.remote
        .batch_execute("ALTER TABLE meter_readings ADD CONSTRAINT no_poison CHECK (unit <> 'poison')")
        .expect("constraint");
    check(
        env,
        100,
        prop_batches_in_flight_arrive_once_and_in_order as fn(Vec<Reading>, u8, u8, u64) -> TestResult,
    );
}

/// Runs one of the remote upload statements for a batch of two readings at `ts` of `site`; `before` is the
/// ninth parameter of UPLOAD_AFTER (the tenth, how long it waits for `before` to arrive, is 200 ms). Returns
/// the readings inserted.
fn run_upload(
    c: &mut impl postgres::GenericClient,
    statement: &str,
    site: &str,
    id: &str,
    ts: &str,
    before: &str,
) -> u64 {
    run_upload_waiting(c, statement, site, id, ts, before, 200)
}

/// [`run_upload`] waiting at most `wait_ms` for `before` to arrive.
fn run_upload_waiting(
    c: &mut impl postgres::GenericClient,
    statement: &str,
    site: &str,
    id: &str,
    ts: &str,
    before: &str,
    wait_ms: i32,
) -> u64 {
    let n = 2i32;
    let (m, t, v, u, md) = (
        vec!["m".to_string(); 2],
        vec![ts.to_string(); 2],
        vec!["1".to_string(); 2],
        vec!["kWh".to_string(); 2],
        vec![None::<String>; 2],
    );
    use postgres::types::Type;
    let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![&site, &id, &n, &m, &t, &v, &u, &md];
    let mut types = vec![Type::TEXT, Type::TEXT, Type::INT4];
    types.extend([Type::TEXT_ARRAY; 5]);
    if statement == upload::sql::UPLOAD_AFTER {
        params.extend([&before as &(dyn postgres::types::ToSql + Sync), &wait_ms]);
        types.extend([Type::TEXT, Type::INT4]);
    }
    let st = c.prepare_typed(statement, &types).expect("prepare");
    c.execute(&st, &params).expect("upload statement")
}

// The chain statements themselves, on the remote: a batch sent after another waits for it (row lock), goes in
// after it when it commits, and inserts nothing when it rolls back or was never there.
#[test]
fn a_batch_in_flight_goes_in_only_after_the_batch_before_it() {
    use upload::sql::{UPLOAD_AFTER, UPLOAD_LEAD};
    let env = Env::new(&[]);
    let (a, b, c, d) = (
        "00000000-0000-0000-0000-00000000000a",
        "00000000-0000-0000-0000-00000000000b",
        "00000000-0000-0000-0000-00000000000c",
        "00000000-0000-0000-0000-00000000000d",
    );
    let mut r1 = env.pair.remote.client();
    for (site, commit) in [("commits", true), ("rolls-back", false)] {
        assert_eq!(run_upload(&mut r1, UPLOAD_LEAD, site, a, "2024-01-01 00:00:00", ""), 2);
        // Not after the head: nothing, not even a ledger row.
        assert_eq!(run_upload(&mut r1, UPLOAD_AFTER, site, b, "2024-01-01 00:00:01", c), 0);
        // C after A, in a transaction left open; D after C waits for it.
        let mut holder = env.pair.remote.client();
        let mut tx = holder.transaction().expect("begin");
        assert_eq!(run_upload(&mut tx, UPLOAD_AFTER, site, c, "2024-01-01 00:00:02", a), 2);
        let mut r2 = env.pair.remote.client();
        let site_owned = site.to_string();
        let waiting =
            thread::spawn(move || run_upload(&mut r2, UPLOAD_AFTER, &site_owned, d, "2024-01-01 00:00:03", c));
        thread::sleep(Duration::from_millis(300));
        assert!(!waiting.is_finished(), "the batch after waits for the one before it");
        if commit {
            tx.commit().expect("commit");
            assert_eq!(waiting.join().expect("thread"), 2, "in, after its predecessor");
        } else {
            tx.rollback().expect("rollback");
            assert_eq!(waiting.join().expect("thread"), 0, "nothing without its predecessor");
        }
        let head: String = r1
            .query_one(
                "SELECT head::text FROM sync_upload_chain WHERE source_id = $1",
                &[&site],
            )
            .expect("head")
            .get(0);
        assert_eq!(head, if commit { d } else { a });
    }
    // commits: A, C, D; rolls-back: A. Nothing else, in order.
    assert_eq!(count(&mut r1, "SELECT count(*) FROM meter_readings"), 8);
    assert_eq!(count(&mut r1, "SELECT count(*) FROM sync_upload_ledger"), 4);
    let order: Vec<String> = r1
        .query(
            "SELECT timestamp::text FROM meter_readings WHERE id > (SELECT min(id) + 1 FROM meter_readings) \
             AND id < (SELECT max(id) - 1 FROM meter_readings) ORDER BY id",
            &[],
        )
        .expect("order")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        order,
        [
            "2024-01-01 00:00:02",
            "2024-01-01 00:00:02",
            "2024-01-01 00:00:03",
            "2024-01-01 00:00:03"
        ]
    );
}

// Turn-taking: a batch whose statement reaches the server before that of the batch ahead of it (sent a moment
// earlier on another connection) waits for it instead of breaking the chain: it goes in after it once it
// commits. It holds no lock the batch ahead needs meanwhile, and it gives up (nothing inserted) only after its
// wait when the batch ahead never comes.
#[test]
fn a_batch_that_reaches_the_server_first_waits_for_the_batch_ahead_of_it() {
    use upload::sql::{UPLOAD_AFTER, UPLOAD_LEAD};
    let env = Env::new(&[]);
    let (a, b, c, d) = (
        "00000000-0000-0000-0000-0000000000a1",
        "00000000-0000-0000-0000-0000000000b1",
        "00000000-0000-0000-0000-0000000000c1",
        "00000000-0000-0000-0000-0000000000d1",
    );
    let mut r1 = env.pair.remote.client();
    assert_eq!(
        run_upload(&mut r1, UPLOAD_LEAD, "site", a, "2024-01-01 00:00:00", ""),
        2
    );
    // C (after B) and D (after C) arrive before B: both wait.
    let early = |id: &'static str, before: &'static str, ts: &'static str| {
        let mut c2 = env.pair.remote.client();
        thread::spawn(move || run_upload_waiting(&mut c2, UPLOAD_AFTER, "site", id, ts, before, 30_000))
    };
    let d_waits = early(d, c, "2024-01-01 00:00:03");
    let c_waits = early(c, b, "2024-01-01 00:00:02");
    thread::sleep(Duration::from_millis(300));
    assert!(!c_waits.is_finished() && !d_waits.is_finished(), "they wait for B");
    // B, after A, in a transaction held open: it is not blocked by the batches waiting for it.
    let mut holder = env.pair.remote.client();
    let mut tx = holder.transaction().expect("begin");
    assert_eq!(
        run_upload(&mut tx, UPLOAD_AFTER, "site", b, "2024-01-01 00:00:01", a),
        2
    );
    thread::sleep(Duration::from_millis(200));
    assert!(!c_waits.is_finished(), "C waits for B's commit");
    tx.commit().expect("commit");
    assert_eq!(c_waits.join().expect("thread"), 2);
    assert_eq!(d_waits.join().expect("thread"), 2);
    let order: Vec<String> = r1
        .query("SELECT timestamp::text FROM meter_readings ORDER BY id", &[])
        .expect("order")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let want: Vec<String> = (0..4)
        .flat_map(|i| [format!("2024-01-01 00:00:0{i}"), format!("2024-01-01 00:00:0{i}")])
        .collect();
    assert_eq!(order, want, "A, B, C, D in claim order");
    // A batch whose predecessor never comes gives up after its wait, having inserted nothing.
    let e = "00000000-0000-0000-0000-0000000000e1";
    assert_eq!(
        run_upload_waiting(&mut r1, UPLOAD_AFTER, "site", e, "2024-01-01 00:00:05", b, 100),
        0
    );
    assert_eq!(count(&mut r1, "SELECT count(*) FROM sync_upload_ledger"), 4);
}

// With several batches in flight through a link with some latency (5 ms each way: the drain keeps several in
// flight), breaks of the chain are rare: counted by the drain (and shown in /metrics as
// sync_process_upload_chain_breaks_total), fewer than one per 100 batches.
#[test]
fn batches_in_flight_rarely_break_the_chain() {
    let env = Env::builder()
        .remote_via_proxy()
        .vars(&[("UPLOAD_BATCHES_IN_FLIGHT", "4"), ("BATCH_SIZE", "20")])
        .build();
    env.proxy().set_latency(Duration::from_millis(5));
    let mut l = env.pair.local.client();
    insert_readings(&mut l, 8_000, "2024-01-01 00:00:00", "1 second");
    let original = snapshot(&mut l);
    let (batches0, breaks0) = (upload::uploaded_batches(), upload::chain_breaks());
    let r = env.sync();
    assert!(r.success && r.records_uploaded == 8_000, "{r:?}");
    let (batches, breaks) = (r.batches, r.chain_breaks);
    assert!(batches >= 400, "{batches} batches");
    assert!(breaks * 100 < batches, "{breaks} chain breaks in {batches} batches");
    assert_eq!(
        count(&mut env.pair.remote.client(), "SELECT count(*) FROM sync_upload_chain"),
        1,
        "the batches went up chained"
    );
    // The process-wide counters behind /metrics moved at least as much (other tests may drain meanwhile).
    assert!(upload::uploaded_batches() - batches0 >= batches);
    assert!(upload::chain_breaks() - breaks0 >= breaks);
    assert_exactly_once(&mut l, &mut env.pair.remote.client(), &original);
    assert_eq!(remote_order_inversions(&mut env.pair.remote.client()), 0);
}

// On loopback the drain soon keeps fewer batches in flight (more only pay where it waits for the link), and
// through a link with latency it keeps more again: across those changes of width (a batch claimed ahead
// while the width goes down waits its turn) every reading arrives once and in claim order.
#[test]
fn batches_in_flight_arrive_once_and_in_order_as_the_width_changes() {
    let env = Env::builder()
        .remote_via_proxy()
        .vars(&[("UPLOAD_BATCHES_IN_FLIGHT", "4"), ("BATCH_SIZE", "10")])
        .build();
    let mut l = env.pair.local.client();
    insert_readings(&mut l, 6_000, "2024-01-01 00:00:00", "1 second");
    let original = snapshot(&mut l);
    let r = thread::scope(|s| {
        let drain = s.spawn(|| sync_with(&env.conns, &env.cfg));
        // Latency on and off while the drain runs: the width goes up and down.
        let mut on = false;
        while !drain.is_finished() {
            thread::sleep(Duration::from_millis(150));
            on = !on;
            env.proxy().set_latency(Duration::from_millis(if on { 3 } else { 0 }));
        }
        drain.join().expect("the drain thread panicked")
    });
    assert!(r.success && r.records_uploaded == 6_000, "{r:?}");
    assert_exactly_once(&mut l, &mut env.pair.remote.client(), &original);
    assert_eq!(remote_order_inversions(&mut env.pair.remote.client()), 0);
}

// Through a link with latency (so uploads really overlap) that is cut again and again: exactly once, in order,
// and the chain head names the last batch uploaded.
#[test]
fn batches_in_flight_through_a_slow_link_that_is_cut() {
    let mut env = Env::builder()
        .remote_via_proxy()
        .vars(&[
            ("UPLOAD_BATCHES_IN_FLIGHT", "4"),
            ("BATCH_SIZE", "50"),
            ("MAX_QUERY_RETRIES", "3"),
            ("RETRY_BASE_DELAY_MS", "5"),
        ])
        .build();
    env.proxy().set_latency(Duration::from_millis(2));
    let mut l = env.pair.local.client();
    insert_many(&mut l, 6_000);
    let original = snapshot(&mut l);
    drain_while_cutting(&env, 20..100);
    assert_exactly_once(&mut env.pair.local.client(), &mut env.pair.remote.client(), &original);
    assert_eq!(
        remote_out_of_order(&env),
        0,
        "remote insertion order follows timestamp order"
    );
    // The head is a batch of the ledger.
    let head_in_ledger = count(
        &mut env.remote,
        "SELECT count(*) FROM sync_upload_chain c JOIN sync_upload_ledger l USING (source_id) \
         WHERE l.batch_id = c.head",
    );
    assert_eq!(head_in_ledger, 1);
}

#[test]
fn connection_errors_are_never_data_errors() {
    let env = Env::builder()
        .remote_via_proxy()
        .vars(&[("DB_STATEMENT_TIMEOUT_MS", "1500"), ("BATCH_SIZE", "5")])
        .build();
    let proxy = env.proxy();
    // A statement-level trigger that makes the remote statement take a while.
    env.pair.remote.client()
        .batch_execute(
            "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.6); RETURN NULL; END $$;
             CREATE TRIGGER slow AFTER INSERT ON meter_readings FOR EACH STATEMENT EXECUTE FUNCTION slow();",
        )
        .expect("slow trigger");
    let readings = numbered(15, None);
    insert(&mut env.pair.local.client(), &readings);
    let original = snapshot(&mut env.pair.local.client());
    let m = env.manager();
    let mut admin = env.pair.remote.client();

    // 1. The link is cut in the middle of the statement.
    let b1 = m.claim_batch(None).expect("claim").expect("batch");
    let e1 = thread::scope(|s| {
        let t = s.spawn(|| m.upload_batch(&b1));
        thread::sleep(Duration::from_millis(200));
        proxy.cut_all();
        t.join().expect("upload thread")
    })
    .expect_err("a cut link fails the statement");
    // 2. The server ends the session (pg_terminate_backend: SQLSTATE 57P01).
    // Each case claims the next readings (b1 stays pending with an unknown outcome: recovery settles it).
    let b2 = m.claim_batch(b1.cursor().as_ref()).expect("claim").expect("batch");
    let e2 = thread::scope(|s| {
        let t = s.spawn(|| m.upload_batch(&b2));
        thread::sleep(Duration::from_millis(200));
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = 'sync-process'",
                &[],
            )
            .expect("terminate");
        t.join().expect("upload thread")
    })
    .expect_err("a terminated session fails the statement");
    // 3. The statement times out (57014). The daemon sets nothing on remote sessions (a pooler would drop it):
    // a server-side statement timeout on the central is the operator's, per role or database.
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} SET statement_timeout = '1s'",
            env.pair.remote.name()
        ))
        .expect("statement timeout on the central");
    admin.batch_execute("CREATE OR REPLACE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(3); RETURN NULL; END $$").expect("slower");
    let b3 = m.claim_batch(b2.cursor().as_ref()).expect("claim").expect("batch");
    // (A pooled connection that the termination above killed may answer first with "connection closed".)
    let mut e3 = m
        .upload_batch(&b3)
        .expect_err("a statement timeout fails the statement");
    for _ in 0..3 {
        if e3.sqlstate().is_some() {
            break;
        }
        assert!(e3.is_transient() && !e3.is_data_error(), "{e3}");
        e3 = m
            .upload_batch(&b3)
            .expect_err("a statement timeout fails the statement");
    }
    // 4. Nobody listens.
    proxy.set_refuse(true);
    let e4 = m.upload_batch(&b3).expect_err("a refused connection fails");
    proxy.set_refuse(false);
    for (what, e) in [("cut", &e1), ("terminated", &e2), ("timeout", &e3), ("refused", &e4)] {
        assert!(!e.is_data_error(), "{what}: taken for a data error: {e}");
        assert!(e.is_transient(), "{what}: not transient: {e}");
        assert_ne!(e.kind(), "data", "{what}");
    }
    assert_eq!(e3.sqlstate(), Some("57014"), "{e3}");
    admin
        .batch_execute("DROP TRIGGER slow ON meter_readings")
        .expect("drop trigger");
    let r = sync_until_done(&env, 5);
    assert!(r.iter().all(|r| r.records_quarantined == 0), "{r:#?}");
    assert_exactly_once(&mut env.pair.local.client(), &mut env.pair.remote.client(), &original);
}

#[test]
fn outage_of_the_remote_server_and_recovery() {
    let remote_server = PgServer::start();
    let pair = DbPair::on(PgServer::shared(), &remote_server);
    let env = Env::builder()
        .on(pair)
        .vars(&[
            ("MAX_CONNECTION_RETRIES", "1"),
            ("RETRY_BASE_DELAY_MS", "10"),
            ("DB_CONNECTION_TIMEOUT_MS", "500"),
        ])
        .build();
    let mut l = env.pair.local.client();
    insert_many(&mut l, 3_000);
    let original = snapshot(&mut l);

    // Down before the cycle: it fails, everything stays local.
    remote_server.stop();
    let r = env.sync();
    assert!(!r.success && r.records_uploaded == 0, "{r:?}");
    assert!(
        r.error.as_deref().is_some_and(|e| e.contains("remote database")),
        "{r:?}"
    );
    assert_eq!(count(&mut l, "SELECT count(*) FROM meter_readings"), 3_000);
    remote_server.start_again();

    // Down in the middle of a drain (fast shutdown terminates the sessions), then back.
    insert_many(&mut l, 20_000);
    let original_all = snapshot(&mut l);
    let _ = original;
    thread::scope(|s| {
        let t = s.spawn(|| sync_with(&env.conns, &env.cfg));
        thread::sleep(Duration::from_millis(150));
        remote_server.stop();
        let during = t.join().expect("drain thread");
        eprintln!("during the outage: {during:?}");
        thread::sleep(Duration::from_millis(200));
        remote_server.start_again();
    });
    let results = sync_until_done(&env, 10);
    assert!(results.last().is_some_and(|r| r.success));
    assert_exactly_once(
        &mut env.pair.local.client(),
        &mut env.pair.remote.client(),
        &original_all,
    );
}
