//! Upload tests: validation before upload (UPLOAD_VALIDATE, src/upload/validate.rs and the validated claims of
//! src/upload/sql.rs): each check with passing and failing readings in one batch, a box clock far off, the
//! configuration errors, the quarantine round trip, /metrics, and the exactly-once property with checks on.

use std::collections::BTreeMap;

use sync_process::upload::validate::{invalid_readings, Check};

use super::*;
use crate::status::{daemon_env, get, wait_for_first_cycle};
use crate::support::readings::{snapshot_of, COLUMNS};

const ALL_CHECKS: &str = "known-meter,meter-unit,finite-value,timestamp-window";

/// Yesterday's date on the local server's clock (`2026-12-01`): readings at `{day} 00:mm:ss` lie well inside
/// the default window (-365d..+1h).
fn yesterday(c: &mut Client) -> String {
    c.query_one("SELECT (localtimestamp - interval '1 day')::date::text", &[])
        .expect("the local date")
        .get(0)
}

/// Local meters `m-a` (kWh) and `m-b` (m3).
fn add_meters(c: &mut Client) {
    c.batch_execute(
        "INSERT INTO meters (meter_id, name, meter_type, unit) VALUES ('m-a', 'A', 'electricity', 'kWh'),
                                                                    ('m-b', 'B', 'water', 'm3')
         ON CONFLICT (meter_id) DO NOTHING",
    )
    .expect("local meters");
}

/// A reading of `meter` in `unit` at `ts` with `value`.
fn reading(meter: &str, unit: &str, ts: &str, value: &str) -> Reading {
    Reading {
        unit: unit.into(),
        ..Reading::new(meter, ts, value, Some(r#"{"k": 1}"#))
    }
}

/// The remote readings in insertion order (by the remote's id).
fn remote_in_order(c: &mut Client) -> Vec<Reading> {
    c.query(&format!("SELECT {COLUMNS} FROM meter_readings ORDER BY id"), &[])
        .expect("remote readings")
        .iter()
        .map(Reading::from_row)
        .collect()
}

/// The quarantine by local id: (id, error).
fn quarantined(env: &Env) -> BTreeMap<i64, String> {
    quarantine::list(&env.conns.local)
        .expect("quarantine list")
        .into_iter()
        .map(|q| (q.id, q.error))
        .collect()
}

/// One batch mixing readings that pass every check with readings that fail each one (and one that fails two),
/// with the reason each failing reading must carry when every check is on. Timestamps ascend with the index.
fn mixed_batch(day: &str) -> Vec<(Reading, Option<&'static str>, Option<String>)> {
    let at = |i: usize| format!("{day} 00:00:{i:02}");
    let good = |i: usize| (reading("m-a", "kWh", &at(i), &format!("{i}.50")), None, None);
    vec![
        good(0),
        (
            reading("ghost", "kWh", &at(1), "1"),
            Some("known-meter"),
            Some("known-meter: meter \"ghost\" not in meters".into()),
        ),
        good(2),
        (
            reading("m-a", "m3", &at(3), "3"),
            Some("meter-unit"),
            Some("meter-unit: unit \"m3\" is not the unit \"kWh\" of meter \"m-a\"".into()),
        ),
        (reading("m-b", "m3", &at(4), "4.000"), None, None),
        (
            reading("m-a", "kWh", &at(5), "NaN"),
            Some("finite-value"),
            Some("finite-value: NaN".into()),
        ),
        (
            reading("m-b", "m3", &at(6), "Infinity"),
            Some("finite-value"),
            Some("finite-value: Infinity".into()),
        ),
        (
            reading("m-b", "m3", &at(7), "-Infinity"),
            Some("finite-value"),
            Some("finite-value: -Infinity".into()),
        ),
        good(8),
        // Fails known-meter and finite-value: the first check names it.
        (
            reading("ghost", "kWh", &at(9), "NaN"),
            Some("known-meter"),
            Some("known-meter: meter \"ghost\" not in meters".into()),
        ),
        good(10),
    ]
    .into_iter()
    .chain([
        (
            reading("m-a", "kWh", "1970-01-01 00:00:00", "5"),
            Some("timestamp-window"),
            Some("timestamp-window: 1970-01-01 00:00:00 outside -365d..+1h".into()),
        ),
        (
            reading("m-a", "kWh", "2099-06-01 12:00:00.5", "6"),
            Some("timestamp-window"),
            Some("timestamp-window: 2099-06-01 12:00:00.5 outside -365d..+1h".into()),
        ),
        (
            reading("m-a", "kWh", "infinity", "7"),
            Some("timestamp-window"),
            Some("timestamp-window: infinity outside -365d..+1h".into()),
        ),
    ])
    .collect()
}

#[test]
fn every_check_quarantines_exactly_its_failing_readings_of_a_mixed_batch() {
    let mut env = Env::new(&[("BATCH_SIZE", "100"), ("UPLOAD_VALIDATE", ALL_CHECKS)]);
    add_meters(&mut env.local);
    let day = yesterday(&mut env.local);
    let batch = mixed_batch(&day);
    let rows: Vec<Reading> = batch.iter().map(|(r, _, _)| r.clone()).collect();
    let ids = insert(&mut env.local, &rows);
    let before = invalid_readings();

    let r = env.sync();
    let bad = batch.iter().filter(|(_, check, _)| check.is_some()).count() as u64;
    assert!(r.success, "{r:?}");
    assert_eq!(
        (r.records_uploaded, r.records_deleted, r.records_quarantined),
        (rows.len() as u64 - bad, rows.len() as u64 - bad, bad),
        "{r:?}"
    );
    // The good ones arrive once, in claim order (timestamp, id): 1970 < yesterday < 2099 < infinity.
    let mut want: Vec<(String, i64, Reading)> = batch
        .iter()
        .zip(&ids)
        .filter(|((_, check, _), _)| check.is_none())
        .map(|((r, _, _), id)| (r.ts.clone(), *id, r.clone()))
        .collect();
    want.sort();
    let want: Vec<Reading> = want.into_iter().map(|(_, _, r)| r).collect();
    assert_eq!(remote_in_order(&mut env.remote), want);
    // The bad ones are in the quarantine, bit-exact, with the first failing check and the offending value.
    let expected: BTreeMap<i64, String> = batch
        .iter()
        .zip(&ids)
        .filter_map(|((_, _, reason), id)| reason.clone().map(|e| (*id, e)))
        .collect();
    assert_eq!(quarantined(&env), expected);
    let mut bad_rows: Vec<Reading> = batch
        .iter()
        .filter(|(_, check, _)| check.is_some())
        .map(|(r, _, _)| r.clone())
        .collect();
    bad_rows.sort();
    assert_eq!(snapshot_of(&mut env.local, "sync_quarantine"), bad_rows);
    assert!(quarantine::list(&env.conns.local)
        .expect("list")
        .iter()
        .all(|q| q.sqlstate.is_none()));
    assert_eq!(count(&mut env.local, "SELECT count(*) FROM meter_readings"), 0);
    assert_eq!(count(&mut env.local, "SELECT count(*) FROM sync_upload_batches"), 0);
    // Counted per check for /metrics (other tests of this binary may count too: at least ours).
    let after = invalid_readings();
    for (check, n) in [
        (Check::KnownMeter, 2),
        (Check::MeterUnit, 1),
        (Check::FiniteValue, 3),
        (Check::TimestampWindow, 3),
    ] {
        let i = Check::ALL.iter().position(|c| *c == check).expect("a check");
        assert!(after[i].1 >= before[i].1 + n, "{check}: {before:?} -> {after:?}");
    }
}

#[test]
fn each_check_alone_quarantines_only_what_it_rejects() {
    for check in Check::ALL {
        let mut env = Env::new(&[("BATCH_SIZE", "4"), ("UPLOAD_VALIDATE", check.name())]);
        add_meters(&mut env.local);
        let day = yesterday(&mut env.local);
        let batch = mixed_batch(&day);
        let rows: Vec<Reading> = batch.iter().map(|(r, _, _)| r.clone()).collect();
        let ids = insert(&mut env.local, &rows);
        let r = env.sync();
        assert!(r.success, "{check}: {r:?}");
        // Alone, a check also catches the readings whose first failing check is another one: the ghost NaN is
        // finite-value's when known-meter is off.
        let fails = |(rd, first, _): &(Reading, Option<&str>, Option<String>)| match check {
            Check::FiniteValue => ["NaN", "Infinity", "-Infinity"].contains(&rd.value.as_str()),
            _ => *first == Some(check.name()),
        };
        let expected: Vec<i64> = batch
            .iter()
            .zip(&ids)
            .filter(|(b, _)| fails(b))
            .map(|(_, id)| *id)
            .collect();
        let got = quarantined(&env);
        assert_eq!(got.keys().copied().collect::<Vec<_>>(), expected, "{check}");
        assert!(
            got.values().all(|e| e.starts_with(&format!("{check}: "))),
            "{check}: {got:?}"
        );
        assert_eq!(r.records_quarantined, expected.len() as u64, "{check}: {r:?}");
        assert_eq!(
            count(&mut env.remote, "SELECT count(*) FROM meter_readings") as usize,
            rows.len() - expected.len(),
            "{check}"
        );
    }
}

#[test]
fn without_upload_validate_nothing_is_checked() {
    let mut env = Env::new(&[("BATCH_SIZE", "5")]);
    let day = yesterday(&mut env.local);
    let rows: Vec<Reading> = mixed_batch(&day).into_iter().map(|(r, _, _)| r).collect();
    insert(&mut env.local, &rows);
    let original = snapshot(&mut env.local);
    let r = env.sync();
    assert!(r.success && r.records_quarantined == 0, "{r:?}");
    assert_exactly_once(&mut env.local, &mut env.remote, &original);
}

/// A box whose clock jumped to 1970, then to 2099: whole batches of readings outside the window go to the
/// quarantine (the claim goes on past batches in which nothing passed), the readings of the right time
/// arrive in order, and `once` reports them in uploadResult.recordsQuarantined.
#[test]
fn a_box_clock_far_off_does_not_flood_the_central() {
    let mut env = Env::new(&[("BATCH_SIZE", "10"), ("UPLOAD_VALIDATE", "timestamp-window")]);
    let day = yesterday(&mut env.local);
    let mut rows: Vec<Reading> = (0..45)
        .map(|i| reading("m-a", "kWh", &format!("1970-01-01 00:{:02}:{:02}", i / 60, i % 60), "1"))
        .collect();
    rows.extend((0..5).map(|i| reading("m-a", "kWh", &format!("{day} 00:00:{i:02}"), &i.to_string())));
    rows.extend((0..27).map(|i| reading("m-a", "kWh", &format!("2099-01-01 00:00:{i:02}"), "2")));
    rows.extend((5..8).map(|i| reading("m-a", "kWh", &format!("{day} 00:00:{i:02}"), &i.to_string())));
    insert(&mut env.local, &rows);
    let (out, v) = env.once_json();
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let up = &v["uploadResult"];
    assert_eq!(
        (
            up["success"].as_bool(),
            up["recordsUploaded"].as_u64(),
            up["recordsQuarantined"].as_u64()
        ),
        (Some(true), Some(8), Some(72)),
        "{v}"
    );
    let want: Vec<Reading> = (0..8)
        .map(|i| reading("m-a", "kWh", &format!("{day} 00:00:{i:02}"), &i.to_string()))
        .collect();
    assert_eq!(remote_in_order(&mut env.remote), want);
    let q = quarantined(&env);
    assert_eq!(q.len(), 72);
    assert!(
        q.values()
            .any(|e| e == "timestamp-window: 1970-01-01 00:00:44 outside -365d..+1h"),
        "{q:?}"
    );
    assert!(
        q.values()
            .any(|e| e == "timestamp-window: 2099-01-01 00:00:26 outside -365d..+1h"),
        "{q:?}"
    );
    assert_eq!(count(&mut env.local, "SELECT count(*) FROM meter_readings"), 0);

    // A narrower window of the operator's: the readings of the right time still pass, the others are named.
    env.truncate();
    let mut map = env.map.clone();
    map.insert("UPLOAD_TIMESTAMP_WINDOW".into(), "-3d..+5m".into());
    insert(
        &mut env.local,
        &[
            reading("m-a", "kWh", &format!("{day} 00:00:00"), "1"),
            reading("m-a", "kWh", "2020-02-02 02:02:02", "2"),
        ],
    );
    let (out, v) = crate::support::env::once_json(&map);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert_eq!(v["uploadResult"]["recordsQuarantined"], 1, "{v}");
    assert_eq!(
        quarantined(&env).into_values().collect::<Vec<_>>(),
        vec!["timestamp-window: 2020-02-02 02:02:02 outside -3d..+5m".to_string()]
    );
}

/// A meter created centrally reaches the box with the download that follows the upload of the same cycle:
/// its readings, held by known-meter in that upload, go back into the queue once it has arrived, and go up
/// with the next cycle. A reading of a meter the central does not have either stays quarantined.
#[test]
fn readings_held_by_known_meter_go_up_once_their_meter_arrives() {
    let mut env = Env::new(&[("UPLOAD_VALIDATE", "known-meter")]);
    let day = yesterday(&mut env.local);
    env.remote
        .batch_execute(
            "INSERT INTO meters (meter_id, name, meter_type, unit) VALUES ('m-new', 'N', 'electricity', 'kWh')",
        )
        .expect("a meter created centrally");
    let fresh = reading("m-new", "kWh", &format!("{day} 00:00:01"), "1.25");
    let ghost = reading("ghost", "kWh", &format!("{day} 00:00:02"), "2");
    insert(&mut env.local, &[fresh.clone(), ghost]);

    let (out, v) = env.once_json();
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert_eq!(v["uploadResult"]["recordsQuarantined"], 2, "{v}");
    assert_eq!(v["meterDownloadResult"]["newMeters"], 1, "{v}");
    assert!(
        out.stderr
            .contains("1 quarantined reading(s) held by the known-meter check went back into the queue"),
        "{}",
        out.stderr
    );
    assert_eq!(
        quarantined(&env).into_values().collect::<Vec<_>>(),
        vec!["known-meter: meter \"ghost\" not in meters".to_string()]
    );
    assert_eq!(count(&mut env.local, "SELECT count(*) FROM meter_readings"), 1);

    let (out, v) = env.once_json();
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert_eq!(v["uploadResult"]["recordsUploaded"], 1, "{v}");
    assert_eq!(remote_in_order(&mut env.remote), vec![fresh]);
    assert_eq!(quarantined(&env).len(), 1, "the ghost's reading stays quarantined");
}

#[test]
fn an_unknown_check_or_a_bad_window_is_a_configuration_error() {
    let env = Env::builder().migrate(crate::support::env::Migrate::Nothing).build();
    let mut map = env.map.clone();
    map.insert("UPLOAD_VALIDATE".into(), "known-meter, finite-values".into());
    map.insert("UPLOAD_TIMESTAMP_WINDOW".into(), "+1h..-1h".into());
    for args in [&["check-config"][..], &["once"][..]] {
        let out = run_command(args, &map);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stderr.contains(
                "UPLOAD_VALIDATE: \"finite-values\" is not a check (accepted: known-meter, meter-unit, \
                 finite-value, timestamp-window; empty = off)"
            ),
            "{args:?}: {}",
            out.stderr
        );
        assert!(
            out.stderr
                .contains("UPLOAD_TIMESTAMP_WINDOW: \"+1h..-1h\": the lower bound must be before the upper one"),
            "{args:?}: {}",
            out.stderr
        );
    }
    // Duplicates are harmless; check-config shows what is on.
    map.insert("UPLOAD_VALIDATE".into(), "finite-value,finite-value,known-meter".into());
    map.insert("UPLOAD_TIMESTAMP_WINDOW".into(), "-30d..+1h".into());
    let out = run_command(&["check-config"], &map);
    assert!(
        out.stdout.contains("validate: known-meter,finite-value\n"),
        "{}{}",
        out.stdout,
        out.stderr
    );
}

/// `quarantine list` shows the check's reason; `quarantine retry` puts the readings back and the next claim
/// checks them again: still failing ones return to the quarantine, fixed ones go up.
#[test]
fn quarantine_list_and_retry_round_trip() {
    let mut env = Env::new(&[("BATCH_SIZE", "10"), ("UPLOAD_VALIDATE", "known-meter,meter-unit")]);
    add_meters(&mut env.local);
    let day = yesterday(&mut env.local);
    let rows = [
        reading("m-new", "kWh", &format!("{day} 00:00:01"), "1.10"),
        reading("m-a", "kWh", &format!("{day} 00:00:02"), "2"),
        reading("m-new", "kWh", &format!("{day} 00:00:03"), "3.30"),
        reading("m-b", "kWh", &format!("{day} 00:00:04"), "4"),
    ];
    let ids = insert(&mut env.local, &rows);
    let r = env.sync();
    assert!(
        r.success && r.records_uploaded == 1 && r.records_quarantined == 3,
        "{r:?}"
    );

    let out = run_command(&["quarantine", "list"], &env.map);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout.contains("known-meter: meter \"m-new\" not in meters")
            && out
                .stdout
                .contains("meter-unit: unit \"kWh\" is not the unit \"m3\" of meter \"m-b\"")
            && out.stdout.contains("3 quarantined reading(s)"),
        "{}",
        out.stdout
    );
    let out = run_command(&["quarantine", "list", "--json"], &env.map);
    let list: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(list[0]["id"], ids[0]);
    assert_eq!(list[0]["value"], "1.10");
    assert_eq!(list[0]["sqlstate"], serde_json::Value::Null);

    // The meter arrives (as a download would mirror it); everything is retried; m-b's unit is still wrong.
    env.local
        .batch_execute("INSERT INTO meters (meter_id, name, meter_type, unit) VALUES ('m-new', 'N', 'x', 'kWh')")
        .expect("meter");
    let out = run_command(&["quarantine", "retry"], &env.map);
    assert!(
        out.status.success() && out.stdout.contains("3 reading(s) moved back"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let r = env.sync();
    assert!(
        r.success && r.records_uploaded == 2 && r.records_quarantined == 1,
        "{r:?}"
    );
    assert_eq!(
        quarantined(&env).into_iter().collect::<Vec<_>>(),
        vec![(
            ids[3],
            "meter-unit: unit \"kWh\" is not the unit \"m3\" of meter \"m-b\"".to_string()
        )]
    );
    let mut want = vec![rows[1].clone(), rows[0].clone(), rows[2].clone()];
    assert_eq!(remote_in_order(&mut env.remote), want);
    // The operator decides the unit was right after all: off goes that check, and the reading goes up.
    let mut cfg = env.cfg.clone();
    cfg.upload_validate = vec![Check::KnownMeter];
    assert_eq!(quarantine::retry(&env.conns.local, &[ids[3]]).expect("retry"), 1);
    let r = sync_with(&env.conns, &cfg);
    assert!(
        r.success && r.records_uploaded == 1 && r.records_quarantined == 0,
        "{r:?}"
    );
    want.push(rows[3].clone());
    assert_eq!(remote_in_order(&mut env.remote), want);
    assert!(quarantined(&env).is_empty());
}

/// The running daemon's /metrics counts the readings each check quarantined, and the quarantine gauge and
/// counter include them.
#[test]
fn metrics_count_invalid_readings_per_check() {
    let mut env = Env::new(&[("UPLOAD_VALIDATE", ALL_CHECKS)]);
    add_meters(&mut env.local);
    let day = yesterday(&mut env.local);
    let rows: Vec<Reading> = mixed_batch(&day).into_iter().map(|(r, _, _)| r).collect();
    insert(&mut env.local, &rows);
    let (map, addr) = daemon_env(&env);
    let _d = Daemon::spawn(&["run"], &map);
    wait_for_first_cycle(addr);
    let m = get(addr, "/metrics").expect("GET /metrics");
    assert_eq!(m.code, 200);
    let value = |name: &str| {
        m.body
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(str::to_string))
    };
    for (check, n) in [
        ("known-meter", "2"),
        ("meter-unit", "1"),
        ("finite-value", "3"),
        ("timestamp-window", "3"),
    ] {
        let name = format!("sync_process_readings_invalid_total{{check=\"{check}\"}}");
        assert_eq!(value(&name).as_deref(), Some(n), "{name}: {}", m.body);
    }
    assert!(
        m.body.contains("# TYPE sync_process_readings_invalid_total counter\n"),
        "{}",
        m.body
    );
    assert_eq!(value("sync_process_readings_quarantined_total").as_deref(), Some("9"));
    assert_eq!(value("sync_process_quarantined_readings").as_deref(), Some("9"));
    assert_eq!(value("sync_process_readings_uploaded_total").as_deref(), Some("5"));
}

// ----- The property -----

/// What a generated reading is: valid, or failing one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Valid,
    Fails(Check),
}

/// A mix of valid readings and readings that fail one check each, and a batch size.
#[derive(Clone, Debug)]
struct Mix {
    readings: Vec<(Kind, Reading)>,
    batch_size: u32,
}

impl Arbitrary for Mix {
    fn arbitrary(g: &mut Gen) -> Mix {
        let n = usize::arbitrary(g) % 40;
        let readings = (0..n)
            .map(|_| {
                // Few distinct instants yesterday (ties on timestamp are common); the day is filled in later.
                let ts = format!("00:0{}:{:02}", u8::arbitrary(g) % 3, u8::arbitrary(g) % 4);
                let value = pick(g, &["1.50", "-0.000001", "42", "0", "123456789012345678901234567890.5"]).to_string();
                let md = pick(g, &[None, Some("null"), Some(r#"{"a": [1, null]}"#)]);
                let (meter, unit) = pick(g, &[("m-a", "kWh"), ("m-b", "m3")]);
                let valid = || reading(meter, unit, &ts, &value);
                let kind = match u8::arbitrary(g) % 8 {
                    0 => Kind::Fails(Check::KnownMeter),
                    1 => Kind::Fails(Check::MeterUnit),
                    2 => Kind::Fails(Check::FiniteValue),
                    3 => Kind::Fails(Check::TimestampWindow),
                    _ => Kind::Valid,
                };
                let mut r = match kind {
                    Kind::Valid => valid(),
                    Kind::Fails(Check::KnownMeter) => reading(pick(g, &["ghost", "o'neil", ""]), unit, &ts, &value),
                    Kind::Fails(Check::MeterUnit) => {
                        reading(meter, if unit == "kWh" { "m3" } else { "kWh" }, &ts, &value)
                    }
                    Kind::Fails(Check::FiniteValue) => {
                        reading(meter, unit, &ts, pick(g, &["NaN", "Infinity", "-Infinity"]))
                    }
                    Kind::Fails(Check::TimestampWindow) => reading(
                        meter,
                        unit,
                        pick(
                            g,
                            &["1970-01-01 00:00:00", "2099-01-01 00:00:00", "infinity", "-infinity"],
                        ),
                        &value,
                    ),
                };
                r.md = md.map(str::to_string);
                (kind, r)
            })
            .collect();
        Mix {
            readings,
            batch_size: 1 + u32::from(u8::arbitrary(g) % 12),
        }
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Mix>> {
        // One reading fewer at a time.
        let (all, batch_size) = (self.readings.clone(), self.batch_size);
        Box::new((0..all.len()).map(move |i| {
            let mut readings = all.clone();
            readings.remove(i);
            Mix { readings, batch_size }
        }))
    }
}

// **Feature: database-sync-process, Property 2: Upload-delete atomicity**
// With every UPLOAD_VALIDATE check on, for any mix of valid and invalid readings and any batch size: exactly
// the invalid readings are quarantined (each with the check it fails as its reason), every valid reading
// arrives at the remote exactly once, in claim order (timestamp, id), and nothing is left queued or claimed.
fn prop_exactly_the_invalid_readings_are_quarantined(mix: Mix) -> TestResult {
    with_env(|env| {
        env.truncate();
        let mut l = env.pair.local.client();
        let day = yesterday(&mut l);
        let rows: Vec<Reading> = mix
            .readings
            .iter()
            .map(|(kind, r)| {
                let mut r = r.clone();
                if *kind != Kind::Fails(Check::TimestampWindow) {
                    r.ts = format!("{day} {}", r.ts);
                }
                r
            })
            .collect();
        let ids = insert(&mut l, &rows);
        let mut cfg = env.cfg.clone();
        cfg.batch_size = mix.batch_size;
        let res = sync_with(&env.conns, &cfg);
        let invalid: BTreeMap<i64, Check> = mix
            .readings
            .iter()
            .zip(&ids)
            .filter_map(|((kind, _), id)| match kind {
                Kind::Fails(c) => Some((*id, *c)),
                Kind::Valid => None,
            })
            .collect();
        if !res.success || res.records_quarantined != invalid.len() as u64 {
            return TestResult::error(format!("{res:?}, {} invalid", invalid.len()));
        }
        let q = quarantined(env);
        if q.keys().ne(invalid.keys()) {
            return TestResult::error(format!("quarantined {:?}, invalid {:?}", q.keys(), invalid.keys()));
        }
        if let Some((id, e)) = q.iter().find(|(id, e)| !e.starts_with(&format!("{}: ", invalid[id]))) {
            return TestResult::error(format!("reading {id} quarantined as {e:?}, expected {}", invalid[id]));
        }
        let mut valid: Vec<(String, i64, Reading)> = rows
            .iter()
            .zip(&ids)
            .filter(|(_, id)| !invalid.contains_key(id))
            .map(|(r, id)| (r.ts.clone(), *id, r.clone()))
            .collect();
        valid.sort();
        let want: Vec<Reading> = valid.into_iter().map(|(_, _, r)| r).collect();
        let got = remote_in_order(&mut env.pair.remote.client());
        if got != want {
            return TestResult::error(format!("remote {got:?}, expected {want:?}"));
        }
        let left = count(&mut l, "SELECT count(*) FROM meter_readings")
            + count(&mut l, "SELECT count(*) FROM sync_upload_batches");
        TestResult::from_bool(left == 0)
    })
}

#[test]
fn prop_2_exactly_the_invalid_readings_are_quarantined() {
    let env = Env::new(&[("UPLOAD_VALIDATE", ALL_CHECKS)]);
    add_meters(&mut env.pair.local.client());
    check(
        env,
        100,
        prop_exactly_the_invalid_readings_are_quarantined as fn(Mix) -> TestResult,
    );
}

/// The validated claims' generic plans (the drain prepares its statements once per connection, with
/// plan_cache_mode=force_generic_plan) take the readings by the claim index and delete the failing ones by
/// the primary key: never a scan of the queue.
#[test]
fn the_validated_claims_use_the_indexes() {
    let env = Env::new(&[]);
    let mut l = env.pair.local.client();
    insert_many(&mut l, 20_000);
    add_meters(&mut l);
    l.batch_execute("ANALYZE meter_readings; ANALYZE meters; SET plan_cache_mode = force_generic_plan")
        .expect("analyze");
    let plan =
        |l: &mut Client, prepare: String, execute: &str| -> String { explain(l, &prepare, "", execute).join("\n") };
    let checks = format!("'{{{ALL_CHECKS}}}'");
    for (prepare, execute) in [
        (
            format!(
                "PREPARE c1(int8, text[], int8, int8, text) AS {}",
                upload::sql::CLAIM_FIRST_CHECKED
            ),
            format!("EXECUTE c1(100, {checks}, -86400, 3600, '-1d..+1h')"),
        ),
        (
            format!(
                "PREPARE c2(int8, text, int8, text[], int8, int8, text) AS {}",
                upload::sql::CLAIM_NEXT_CHECKED
            ),
            format!("EXECUTE c2(100, '2024-01-01 03:00:00', 10000, {checks}, -86400, 3600, '-1d..+1h')"),
        ),
        (
            format!(
                "PREPARE fc(int8, text, int8, text, text[], int8, int8, text) AS {}",
                upload::sql::FINISH_AND_CLAIM_CHECKED
            ),
            format!(
                "EXECUTE fc(100, '2024-01-01 03:00:00', 10000, '00000000-0000-0000-0000-000000000001', {checks}, \
                 -86400, 3600, '-1d..+1h')"
            ),
        ),
    ] {
        let p = plan(&mut l, prepare, &execute);
        assert!(
            p.contains("idx_meter_readings_claim") && p.contains("meter_readings_pkey"),
            "{p}"
        );
        assert!(!p.contains("Seq Scan on meter_readings"), "{p}");
    }
}

/// With a confirmation window the settling statement marks instead of deleting (MARK_AND_CLAIM_CHECKED): the
/// checks run the same, and the readings that passed wait, marked, for their confirmation.
#[test]
fn checks_with_a_confirmation_window() {
    let mut env = Env::new(&[
        ("BATCH_SIZE", "2"),
        ("UPLOAD_VALIDATE", "finite-value"),
        ("UPLOAD_CONFIRM_SECONDS", "60"),
    ]);
    let day = yesterday(&mut env.local);
    let values = ["1", "NaN", "2", "3", "Infinity", "NaN", "4", "5.00"];
    let rows: Vec<Reading> = values
        .iter()
        .enumerate()
        .map(|(i, v)| reading("m-a", "kWh", &format!("{day} 00:00:{i:02}"), v))
        .collect();
    insert(&mut env.local, &rows);
    let r = env.sync();
    assert!(r.success, "{r:?}");
    assert_eq!((r.records_uploaded, r.records_quarantined), (5, 3), "{r:?}");
    let want: Vec<Reading> = rows
        .iter()
        .filter(|r| !["NaN", "Infinity"].contains(&r.value.as_str()))
        .cloned()
        .collect();
    assert_eq!(remote_in_order(&mut env.remote), want);
    assert_eq!(
        count(
            &mut env.local,
            "SELECT count(*) FROM meter_readings WHERE is_synchronized"
        ),
        5
    );
    assert_eq!(
        quarantined(&env).into_values().collect::<Vec<_>>(),
        vec!["finite-value: NaN", "finite-value: Infinity", "finite-value: NaN"]
    );
}
