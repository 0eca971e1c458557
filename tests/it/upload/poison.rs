//! Upload tests: poison readings, a remote that rejects everything, and the quarantine command
//! (src/upload/poison.rs, src/quarantine.rs).

use super::*;

// ----- Poison -----

#[test]
fn poison_readings_are_quarantined_and_the_others_arrive() {
    let mut env = Env::new(&[("BATCH_SIZE", "100")]);
    env.remote
        .batch_execute("ALTER TABLE meter_readings ADD CONSTRAINT no_thirteen CHECK (value <> 13)")
        .expect("constraint");
    let mut g = Gen::new(1000);
    let poison: Vec<usize> = vec![usize::arbitrary(&mut g) % 250, 250 + usize::arbitrary(&mut g) % 50];
    let readings: Vec<Reading> = (0..300)
        .map(|i| {
            let v = if poison.contains(&i) {
                "13".to_string()
            } else {
                format!("{}.5", i)
            };
            Reading::new(
                &format!("meter-{}", i % 7),
                &format!("2024-01-01 00:{:02}:{:02}", i / 60, i % 60),
                &v,
                None,
            )
        })
        .collect();
    let ids = insert(&mut env.local, &readings);
    let original = snapshot(&mut env.local);
    let r = env.sync();
    assert!(r.success, "{r:?}");
    assert_eq!(
        (r.records_uploaded, r.records_deleted, r.records_quarantined),
        (298, 298, 2),
        "{r:?}"
    );
    assert_eq!(count(&mut env.remote, "SELECT count(*) FROM meter_readings"), 298);
    assert_eq!(
        count(&mut env.remote, "SELECT count(*) FROM meter_readings WHERE value = 13"),
        0
    );
    let q = quarantine::list(&env.conns.local).expect("list");
    let mut want_ids: Vec<i64> = poison.iter().map(|&i| ids[i]).collect();
    want_ids.sort();
    assert_eq!(q.iter().map(|x| x.id).collect::<Vec<_>>(), want_ids);
    for x in &q {
        assert!(x.error.contains("no_thirteen"), "{x:?}");
        assert_eq!(x.sqlstate.as_deref(), Some("23514"));
        assert_eq!(x.value, "13");
    }
    assert_eq!(env.manager().quarantined_count().expect("count"), 2);
    assert_eq!(env.manager().queue_size().expect("queue"), 0);

    // The operator fixes the remote and retries: the readings go through, with their ids and values.
    env.remote
        .batch_execute("ALTER TABLE meter_readings DROP CONSTRAINT no_thirteen")
        .expect("drop");
    assert_eq!(quarantine::retry(&env.conns.local, &[]).expect("retry"), 2);
    assert_eq!(count(&mut env.local, "SELECT count(*) FROM sync_quarantine"), 0);
    let back: Vec<i64> = env
        .pair
        .local
        .client()
        .query("SELECT id::int8 FROM meter_readings ORDER BY id", &[])
        .expect("ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(back, want_ids);
    let r = env.sync();
    assert!(r.success && r.records_uploaded == 2, "{r:?}");
    assert_exactly_once(&mut env.pair.local.client(), &mut env.pair.remote.client(), &original);
}

#[test]
fn a_single_poison_reading_in_a_batch_of_one() {
    let mut env = Env::new(&[("BATCH_SIZE", "1")]);
    env.remote
        .batch_execute("ALTER TABLE meter_readings ADD CONSTRAINT short_unit CHECK (length(unit) < 5)")
        .expect("constraint");
    let mut readings: Vec<Reading> = (0..3)
        .map(|i| Reading::new("m", &format!("2024-01-01 00:00:0{i}"), "1", None))
        .collect();
    readings[1].unit = "too-long-unit".into();
    insert(&mut env.local, &readings);
    let r = env.sync();
    assert!(
        r.success && r.records_uploaded == 2 && r.records_quarantined == 1,
        "{r:?}"
    );
    assert_eq!(
        quarantine::list(&env.conns.local).expect("list")[0].unit,
        "too-long-unit"
    );
}

#[test]
fn a_remote_that_rejects_every_reading_is_not_a_poison_storm() {
    let mut env = Env::new(&[("BATCH_SIZE", "4")]);
    // A new NOT NULL column without default: every row is rejected with a data error (23502).
    env.remote
        .batch_execute("ALTER TABLE meter_readings ADD COLUMN site TEXT NOT NULL")
        .expect("alter");
    let readings = numbered(10, None);
    insert(&mut env.local, &readings);
    let original = snapshot(&mut env.local);
    for _ in 0..2 {
        let r = env.sync();
        assert!(!r.success, "{r:?}");
        assert_eq!((r.records_uploaded, r.records_quarantined), (0, 0), "{r:?}");
        let e = r.error.as_deref().unwrap_or("");
        assert!(
            e.contains("rejects every one of the 4 readings") && e.contains("site"),
            "{e}"
        );
        assert_eq!(count(&mut env.local, "SELECT count(*) FROM sync_quarantine"), 0);
        // The rejected batch, and the one claimed ahead while it was uploading, stay claimed.
        assert_eq!(
            env.manager().pending_batches().expect("pending").len(),
            2,
            "the batches stay claimed"
        );
        assert_eq!(snapshot(&mut env.local), original);
    }
    let last_error: Option<String> = env
        .pair
        .local
        .client()
        .query_one(
            "SELECT last_error FROM sync_upload_batches WHERE last_error IS NOT NULL",
            &[],
        )
        .expect("batch")
        .get(0);
    assert!(last_error.is_some_and(|e| e.contains("rejects every one")));
    env.remote
        .batch_execute("ALTER TABLE meter_readings DROP COLUMN site")
        .expect("fix");
    let r = env.sync();
    assert!(r.success, "{r:?}");
    assert_exactly_once(&mut env.pair.local.client(), &mut env.pair.remote.client(), &original);
}

#[test]
fn a_dropped_remote_column_fails_the_part_and_keeps_the_batch_claimed() {
    let mut env = Env::new(&[("BATCH_SIZE", "4")]);
    env.remote
        .batch_execute("ALTER TABLE meter_readings DROP COLUMN metadata")
        .expect("alter");
    let readings = numbered(6, Some("{}"));
    insert(&mut env.local, &readings);
    let original = snapshot(&mut env.local);
    let r = env.sync();
    assert!(!r.success, "{r:?}");
    let e = r.error.as_deref().unwrap_or("");
    assert!(
        e.contains("metadata") && e.contains("42703") && e.contains("4 readings"),
        "{e}"
    );
    assert_eq!(r.records_quarantined, 0);
    assert_eq!(count(&mut env.local, "SELECT count(*) FROM sync_quarantine"), 0);
    // The failed batch and the one claimed ahead while it was in flight (unnamed statements: the batch is sent
    // before the remote can say the statement is wrong); nothing else was sent.
    assert_eq!(env.manager().pending_batches().expect("pending").len(), 2);
    assert_eq!(snapshot(&mut env.local), original);
    env.remote
        .batch_execute("ALTER TABLE meter_readings ADD COLUMN metadata JSONB")
        .expect("fix");
    let r = env.sync();
    assert!(r.success, "{r:?}");
    assert_exactly_once(&mut env.pair.local.client(), &mut env.pair.remote.client(), &original);
}

// ----- The quarantine command -----

#[test]
fn quarantine_command_lists_retries_and_discards() {
    let mut env = Env::new(&[("BATCH_SIZE", "10")]);
    env.remote
        .batch_execute("ALTER TABLE meter_readings ADD CONSTRAINT positive CHECK (value > 0)")
        .expect("constraint");
    let readings: Vec<Reading> = (0..6)
        .map(|i| {
            Reading::new(
                if i % 2 == 0 { "o'neg" } else { "pos" },
                &format!("2024-01-01 00:00:0{i}"),
                if i % 2 == 0 { "-1.50" } else { "1" },
                None,
            )
        })
        .collect();
    let ids = insert(&mut env.local, &readings);
    let r = env.sync();
    assert!(r.success && r.records_quarantined == 3, "{r:?}");

    let out = run_command(&["quarantine", "list", "--json"], &env.map);
    assert!(out.status.success(), "{}", out.stderr);
    let list: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    let arr = list.as_array().expect("array");
    assert_eq!(arr.len(), 3);
    assert_eq!(arr[0]["id"], ids[0]);
    assert_eq!(arr[0]["meterId"], "o'neg");
    assert_eq!(arr[0]["value"], "-1.50");
    assert_eq!(arr[0]["sqlstate"], "23514");
    assert!(arr[0]["error"].as_str().is_some_and(|e| e.contains("positive")));
    // camelCase like /status, and the one time format (RFC 3339 UTC, milliseconds).
    assert!(
        arr[0].get("meter_id").is_none() && arr[0].get("quarantined_at").is_none(),
        "{}",
        arr[0]
    );
    let at = arr[0]["quarantinedAt"].as_str().expect("quarantinedAt");
    assert!(
        humantime::parse_rfc3339(at).is_ok() && at.ends_with('Z') && at.len() == 24,
        "{at}"
    );

    let out = run_command(&["quarantine", "list"], &env.map);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout.starts_with("ID") && out.stdout.contains("o'neg") && out.stdout.contains("3 quarantined reading(s)"),
        "{}",
        out.stdout
    );

    // An unknown id changes nothing and says so.
    let out = run_command(&["quarantine", "retry", &ids[0].to_string(), "999999"], &env.map);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert!(out.stderr.contains("999999"), "{}", out.stderr);
    assert_eq!(count(&mut env.local, "SELECT count(*) FROM sync_quarantine"), 3);

    let out = run_command(&["quarantine", "discard", &ids[2].to_string()], &env.map);
    assert!(
        out.status.success() && out.stdout.contains("1 reading(s) discarded"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    env.remote
        .batch_execute("ALTER TABLE meter_readings DROP CONSTRAINT positive")
        .expect("drop");
    let out = run_command(&["quarantine", "retry", &ids[0].to_string()], &env.map);
    assert!(
        out.status.success() && out.stdout.contains("1 reading(s) moved back"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let r = env.sync();
    assert!(r.success && r.records_uploaded == 1, "{r:?}");
    // --all without --yes and without a terminal: refused, nothing deleted.
    let out = run_command(&["quarantine", "discard", "--all"], &env.map);
    assert_eq!(out.status.code(), Some(2), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("add --yes"), "{}", out.stderr);
    // A command's error is one `sync-process: ...` line, not a log line.
    assert!(
        out.stderr.starts_with("sync-process: quarantine discard --all"),
        "{}",
        out.stderr
    );
    assert_eq!(count(&mut env.local, "SELECT count(*) FROM sync_quarantine"), 1);
    let out = run_command(&["quarantine", "discard", "--all", "--yes"], &env.map);
    assert!(
        out.status.success() && out.stdout.contains("1 reading(s) discarded"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(count(&mut env.local, "SELECT count(*) FROM sync_quarantine"), 0);
    assert_eq!(
        count(&mut env.remote, "SELECT count(*) FROM meter_readings WHERE value < 0"),
        1
    );
}
