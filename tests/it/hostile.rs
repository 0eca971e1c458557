//! Integration tests: hostile data and a stuck remote (issue 8), against real PostgreSQL and the real binary.
//!
//! Owns: (1) hostile readings uploaded by `sync-process once` — extreme NUMERICs, timestamps and JSON, meter ids
//! and units made to break quoting — arriving bit-exact, or, where the remote cannot hold them, quarantined
//! with the reason while the others arrive; the log never carries a 1 MB payload; (2) hostile remote meters
//! and tenants mirrored exactly, or that table's download failing cleanly (key and column named) while the
//! other table syncs; (3) a remote that accepts connections and never answers (the fault proxy's black hole):
//! the daemon's cycle fails within a bound, the daemon keeps running and recovers exactly once, and `once`
//! exits 1 in time with the remote named; (4) a quickcheck property over `Config::from_map` with hostile maps.
//! Does not own: the ordinary value round trips, crash safety and poison isolation (upload/), the download's
//! own properties (download.rs), TLS and secrets in outputs (security.rs).
//!
//! Comparisons are over the `::text` of every column as multisets; the remote's own `id` and `created_at`
//! are its own and not compared (readings: [`crate::support::readings`]). Failure messages shorten values, so a
//! 1 MB payload never floods the output.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use postgres::Client;
use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
use serde_json::Value;

use sync_process::config::{Config, VARIABLES};
use sync_process::db::ConnectionManager;
use sync_process::error::Side;
use sync_process::shutdown::Shutdown;

use crate::support::daemon::Daemon;
use crate::support::env::{migrate, once_json, tail, Env, Migrate};
use crate::support::pg::{self, DbPair};
use crate::support::readings::{
    assert_exactly_once, assert_same, insert, insert_many, short, snapshot, snapshot_of, Reading,
};
use crate::support::wait_until;

// ----- Helpers -----

/// One row of a query whose columns are all text.
type Row = Vec<Option<String>>;

const METERS: &str = "SELECT meter_id::text, name::text, location_id::text, meter_type::text, unit::text, \
                      configuration::text, updated_at::text FROM meters";
const TENANTS: &str =
    "SELECT tenant_id::text, name::text, configuration::text, metadata::text, updated_at::text FROM tenant";

/// The rows of `sql` (all columns text), sorted: a multiset.
fn rows(c: &mut Client, sql: &str) -> Vec<Row> {
    let mut out: Vec<Row> = c
        .query(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| (0..r.len()).map(|i| r.get::<_, Option<String>>(i)).collect())
        .collect();
    out.sort();
    out
}

fn short_row(r: &Row) -> String {
    let cells: Vec<String> = r
        .iter()
        .map(|c| c.as_deref().map(short).unwrap_or_else(|| "NULL".into()))
        .collect();
    format!("({})", cells.join(", "))
}

/// Asserts two multisets of rows are equal; on failure lists (shortened) what only one side has.
fn assert_same_rows(what: &str, got: &[Row], want: &[Row]) {
    assert_same(what, got, want, short_row);
}

fn env_with(pair: &DbPair, vars: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut env = pg::env_map(pair);
    for (k, v) in vars {
        env.insert(k.to_string(), v.to_string());
    }
    env
}

// ----- Hostile values -----

/// ~1 MB of text in which every 200-character window occurs once: `B0000000B0000001...`.
fn big_string() -> &'static str {
    static BIG: OnceLock<String> = OnceLock::new();
    BIG.get_or_init(|| (0..125_000).map(|i| format!("B{i:07}")).collect())
}

/// ~1 MB JSON array of numbers.
fn big_array() -> &'static str {
    static BIG: OnceLock<String> = OnceLock::new();
    BIG.get_or_init(|| {
        let items: Vec<String> = (0..150_000).map(|i| (i * 7).to_string()).collect();
        format!("[{}]", items.join(","))
    })
}

/// Windows of the big payloads that must never show in a log.
fn payload_needles() -> Vec<&'static str> {
    let s = big_string();
    let a = big_array();
    vec![
        &s[..200],
        &s[500_000..500_200],
        &s[s.len() - 200..],
        &a[1..201],
        &a[600_000..600_200],
    ]
}

/// Asserts a log holds no run of the big payloads (the whole-payload rule) and is not itself huge.
fn assert_no_payload(what: &str, log: &str) {
    for needle in payload_needles() {
        assert!(
            !log.contains(needle),
            "{what}: the log contains part of a 1 MB payload ({})",
            short(needle)
        );
    }
    assert!(
        log.len() < 256 * 1024,
        "{what}: {} bytes of log for a few dozen readings: a payload was logged?",
        log.len()
    );
}

fn nested_arrays(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

fn nested_objects(depth: usize) -> String {
    format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
}

/// Meter ids (and meter/tenant keys) made to break quoting, escaping, logs and length limits. VARCHAR(255)
/// counts characters: the long ones are exactly 255 in 1-, 2- and 4-byte characters and combining marks.
fn hostile_ids() -> Vec<String> {
    vec![
        "o'brien \"the meter\"".into(),
        "back\\slash\\\\".into(),
        "'); DROP TABLE meter_readings; --".into(),
        "\"); DROP TABLE sync_upload_ledger; --".into(),
        "%s%n{}$1 \\x00 \\u0000 ${PATH}".into(),
        "line\nbreak\r\n2024-01-01 ERROR forged".into(),
        "tab\there".into(),
        String::new(),
        " ".into(),
        "a".repeat(255),
        "é".repeat(255),
        "😀".repeat(255),
        format!("{}x", "e\u{301}".repeat(127)),
        "\u{FFFF}".into(),
        "\u{202E}gnp.exe".into(),
        "שלום-مرحبا".into(),
        "\u{FEFF}bom".into(),
        "👩‍👩‍👧‍👦 family".into(),
    ]
}

fn hostile_units() -> Vec<String> {
    vec![
        "kWh".into(),
        "°C".into(),
        "m³/h".into(),
        "µS/cm".into(),
        "\u{200F}kWh\u{200E}".into(),
        "'; --".into(),
        "\\".into(),
        String::new(),
        "\t\n".into(),
        "€".repeat(50),
        "😀".repeat(50),
        "\u{FFFF}".into(),
        "a\u{301}\u{308}".into(),
    ]
}

const TIMESTAMPS: &[&str] = &[
    "0001-01-01 00:00:00",
    "0001-01-01 00:00:00 BC",
    "infinity",
    "-infinity",
    "4713-01-01 00:00:00 BC",
    "294276-12-31 23:59:59.999999",
    "2024-02-29 12:34:56.000001",
    "1999-12-31 23:59:59.999999",
    "2000-01-01 00:00:00.5",
];

fn hostile_values() -> Vec<String> {
    let d = "1234567890".repeat(100);
    vec![
        d.clone(),
        format!("-{d}.{d}"),
        "1e-300".into(),
        "-1e-300".into(),
        "NaN".into(),
        "-0.000".into(),
        "Infinity".into(),
        "-Infinity".into(),
        "1.50".into(),
        "9".repeat(100_000),
        format!("0.{}1", "0".repeat(16_382)),
        "1e1000".into(),
    ]
}

/// Small hostile JSON documents; None is SQL NULL, `null` JSON null.
fn hostile_json() -> Vec<Option<String>> {
    let unicode = serde_json::json!({
        "emoji": "😀👩‍👩‍👧‍👦🏳️‍🌈",
        "rtl": "שלום עליכם مرحبا بالعالم",
        "combining": "e\u{301} a\u{308}\u{308}\u{308} Z\u{336}\u{337}",
        "ffff": "\u{FFFF}\u{FFFE}",
        "bom": "\u{FEFF}",
        "controls": "\u{1}\u{1f}\t\n\r\"\\",
        "ключ ü 😀": ["'); DROP TABLE meter_readings; --"]
    });
    vec![
        None,
        Some("null".into()),
        Some("{}".into()),
        Some("[]".into()),
        Some(r#""""#.into()),
        Some("0".into()),
        Some("true".into()),
        Some(r#"{"n": 1e400, "m": -0, "x": 1.50, "y": 1E-7, "z": -0.0e0}"#.into()),
        Some(unicode.to_string()),
        Some(r#"{"a": 1, "a": 2, "": "empty key", "\ud83d\ude00": "\uffff"}"#.into()),
        Some(nested_arrays(500)),
        Some(nested_objects(500)),
        Some(r#"{"null": null, "nested": {"null": null}}"#.into()),
    ]
}

/// Every hostile id, timestamp, value, unit and JSON at least once (in mixed combinations), the two 1 MB
/// payloads, and two identical readings (each its own reading).
fn hostile_readings() -> Vec<Reading> {
    let (ids, units, values, json) = (hostile_ids(), hostile_units(), hostile_values(), hostile_json());
    let n = ids
        .len()
        .max(units.len())
        .max(values.len())
        .max(json.len())
        .max(TIMESTAMPS.len())
        * 2;
    let mut out: Vec<Reading> = (0..n)
        .map(|i| Reading {
            meter: ids[i % ids.len()].clone(),
            ts: TIMESTAMPS[i % TIMESTAMPS.len()].to_string(),
            value: values[i % values.len()].clone(),
            unit: units[i % units.len()].clone(),
            md: json[i % json.len()].clone(),
        })
        .collect();
    let big = serde_json::json!({ "big": big_string() }).to_string();
    out.push(Reading::new(
        "'); DROP TABLE meter_readings; --",
        "2024-06-01 00:00:00",
        "NaN",
        Some(&big),
    ));
    out.push(Reading {
        unit: "°C".into(),
        ..Reading::new(
            &"😀".repeat(255),
            "infinity",
            &"1234567890".repeat(100),
            Some(big_array()),
        )
    });
    let dup = Reading::new("dup", "2024-01-01 00:00:00", "1.50", Some(r#"{"same": true}"#));
    out.push(dup.clone());
    out.push(dup);
    out
}

// ----- 1. Hostile readings -----

// **Feature: database-sync-process, Property 2: Upload-delete atomicity**
// Hostile readings go up bit-exact in a real `once` cycle (several batches), nothing stays behind, and the log
// carries none of the 1 MB payloads.
#[test]
fn hostile_readings_arrive_bit_exact() {
    let pair = DbPair::new();
    migrate(&pair, Migrate::Both);
    let readings = hostile_readings();
    insert(&mut pair.local.client(), &readings);
    let seeded = snapshot(&mut pair.local.client());
    assert_eq!(seeded.len(), readings.len());

    let (out, json) = once_json(&env_with(&pair, &[("BATCH_SIZE", "7")]));
    assert_eq!(out.status.code(), Some(0), "once failed: {}", short(&json.to_string()));
    let up = &json["uploadResult"];
    assert_eq!(up["success"], true, "{}", short(&up.to_string()));
    assert_eq!(up["recordsUploaded"], readings.len() as u64);
    assert_eq!(up["recordsDeleted"], readings.len() as u64);
    assert_eq!(up["recordsQuarantined"], 0);

    assert_exactly_once(&mut pair.local.client(), &mut pair.remote.client(), &seeded);
    assert_no_payload("once", &format!("{}{}", out.stderr, out.stdout));
}

// **Feature: database-sync-process, Property 4: Data preservation on failure**
// A remote narrower than the local schema (meter_id VARCHAR(100), a CHECK refusing NaN): the readings it cannot
// hold are quarantined with the remote's reason and kept bit-exact (one carries the 1 MB metadata), the others
// arrive bit-exact, `once` succeeds, and no log line carries the payload.
#[test]
fn readings_the_remote_cannot_hold_are_quarantined_with_the_reason() {
    let pair = DbPair::new();
    migrate(&pair, Migrate::Both);
    pair.remote
        .client()
        .batch_execute(
            "ALTER TABLE meter_readings ALTER COLUMN meter_id TYPE VARCHAR(100);
             ALTER TABLE meter_readings ADD CONSTRAINT no_nan CHECK (value <> 'NaN'::numeric);",
        )
        .expect("narrowing the remote");
    let readings = hostile_readings();
    insert(&mut pair.local.client(), &readings);
    let seeded = snapshot(&mut pair.local.client());
    let too_long = |r: &Reading| r.meter.chars().count() > 100;
    let nan = |r: &Reading| r.value == "NaN";
    let (bad, good): (Vec<Reading>, Vec<Reading>) = seeded.iter().cloned().partition(|r| too_long(r) || nan(r));
    assert!(
        bad.len() >= 6 && good.len() >= 20,
        "{} bad, {} good",
        bad.len(),
        good.len()
    );

    let (out, json) = once_json(&env_with(&pair, &[("BATCH_SIZE", "100")]));
    let up = &json["uploadResult"];
    assert_eq!(out.status.code(), Some(0), "once failed: {}", short(&json.to_string()));
    assert_eq!(up["recordsUploaded"], good.len() as u64);
    assert_eq!(up["recordsQuarantined"], bad.len() as u64);

    assert_same(
        "remote readings",
        &snapshot(&mut pair.remote.client()),
        &good,
        Reading::short,
    );
    assert_same(
        "quarantined readings",
        &snapshot_of(&mut pair.local.client(), "sync_quarantine"),
        &bad,
        Reading::short,
    );
    assert_eq!(pair.local.count("SELECT count(*) FROM meter_readings"), 0);
    assert_eq!(pair.local.count("SELECT count(*) FROM sync_upload_batches"), 0);

    // The reason of each: the remote's message and SQLSTATE.
    let mut local = pair.local.client();
    let reasons = local
        .query(
            "SELECT char_length(meter_id) > 100, value = 'NaN', error, sqlstate FROM sync_quarantine",
            &[],
        )
        .expect("reasons");
    for r in &reasons {
        let (long, is_nan, error, state): (bool, bool, String, Option<String>) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        if long {
            assert!(
                error.contains("value too long for type character varying(100)") && state.as_deref() == Some("22001"),
                "reason of a too-long meter id: {error} ({state:?})"
            );
        } else {
            assert!(
                is_nan && error.contains("no_nan") && state.as_deref() == Some("23514"),
                "reason of a NaN reading: {error} ({state:?})"
            );
        }
        assert!(
            error.len() < 1000,
            "the stored reason carries a payload: {}",
            short(&error)
        );
    }
    assert_no_payload("once", &format!("{}{}", out.stderr, out.stdout));
}

// **Feature: database-sync-process, Property 4: Data preservation on failure**
// A batch made only of readings the remote cannot hold (one meter whose id is too long for the remote sent a
// whole batch) is quarantined like any other rejected reading, and the readings queued behind it still arrive:
// the contract's "a reading the remote rejects does not block the others".
#[test]
fn a_batch_made_only_of_readings_the_remote_cannot_hold_does_not_block_the_queue() {
    let pair = DbPair::new();
    migrate(&pair, Migrate::Both);
    pair.remote
        .client()
        .batch_execute("ALTER TABLE meter_readings ALTER COLUMN meter_id TYPE VARCHAR(100)")
        .expect("narrowing the remote");
    let long = format!("'); DROP TABLE meter_readings; --{}", "ü".repeat(120));
    let mut readings = Vec::new();
    for i in 0..4 {
        readings.push(Reading::new(&long, &format!("2024-01-01 00:00:0{i}"), "1.5", None));
    }
    for i in 4..8 {
        readings.push(Reading::new("ok", &format!("2024-01-01 00:00:0{i}"), "2.50", None));
    }
    insert(&mut pair.local.client(), &readings);
    let seeded = snapshot(&mut pair.local.client());
    let (bad, good): (Vec<Reading>, Vec<Reading>) = seeded.iter().cloned().partition(|r| r.meter == long);

    let env = env_with(&pair, &[("BATCH_SIZE", "4")]);
    let mut runs = Vec::new();
    for _ in 0..2 {
        let (out, json) = once_json(&env);
        runs.push(format!(
            "exit {:?}, uploadResult.error: {}",
            out.status.code(),
            error_of(&json, "uploadResult")
        ));
    }
    let remote = snapshot(&mut pair.remote.client());
    let quarantined = snapshot_of(&mut pair.local.client(), "sync_quarantine");
    let queued = pair.local.count("SELECT count(*) FROM meter_readings");
    assert!(
        remote == good && quarantined == bad && queued == 0,
        "after two `once` runs: {} remote (expected the {} good ones), {} quarantined (expected {}), {queued} still \
         queued; runs: {runs:#?}",
        remote.len(),
        good.len(),
        quarantined.len(),
        bad.len()
    );
}

// ----- 2. Hostile remote meters and tenants -----

fn hostile_documents() -> Vec<Option<String>> {
    let mut docs = hostile_json();
    // A large one too (the download reads full rows in chunks of keys; one row may be big).
    docs.push(Some(
        serde_json::json!({ "blob": &big_string()[..300_000] }).to_string(),
    ));
    docs
}

const UPDATED_AT: &[Option<&str>] = &[
    Some("infinity"),
    Some("-infinity"),
    Some("4713-01-01 00:00:00 BC"),
    Some("294276-12-31 23:59:59.999999"),
    Some("0001-01-01 00:00:00 BC"),
    Some("2024-02-29 12:34:56.000001"),
    None,
];

/// Remote meters: every hostile id as a key, hostile names (up to 255 multibyte characters), NULL and empty
/// locations, odd types and units, hostile configuration, extreme or NULL updated_at.
fn hostile_meters() -> Vec<Row> {
    let (ids, units, docs) = (hostile_ids(), hostile_units(), hostile_documents());
    let names = [
        "Main \"meter\" 'A'".to_string(),
        "ñ".repeat(255),
        "'); DELETE FROM meters; --".into(),
        "\u{202E}eman".into(),
        String::new(),
    ];
    let locations = [
        None,
        Some(String::new()),
        Some("Bldg \\ 7 / 'east'".into()),
        Some("😀".repeat(255)),
    ];
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            vec![
                Some(id.clone()),
                Some(names[i % names.len()].clone()),
                locations[i % locations.len()].clone(),
                Some(if i % 3 == 0 {
                    "é".repeat(100)
                } else {
                    format!("type-{i}'\"\\")
                }),
                Some(units[i % units.len()].clone()),
                docs[i % docs.len()].clone(),
                UPDATED_AT[i % UPDATED_AT.len()].map(String::from),
            ]
        })
        .collect()
}

fn hostile_tenants() -> Vec<Row> {
    let (ids, docs) = (hostile_ids(), hostile_documents());
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            vec![
                Some(id.clone()),
                Some(if i % 2 == 0 {
                    "😀".repeat(255)
                } else {
                    format!("tenant {i} \"'\\")
                }),
                docs[i % docs.len()].clone(),
                docs[(i + 5) % docs.len()].clone(),
                UPDATED_AT[(i + 3) % UPDATED_AT.len()].map(String::from),
            ]
        })
        .collect()
}

fn column(rows: &[Row], i: usize) -> Vec<Option<&str>> {
    rows.iter().map(|r| r[i].as_deref()).collect()
}

fn insert_meters(c: &mut Client, meters: &[Row]) {
    c.execute(
        "INSERT INTO meters (meter_id, name, location_id, meter_type, unit, configuration, updated_at)
         SELECT k, n, l, t, u, cfg::jsonb, ts::timestamp
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
              AS x(k, n, l, t, u, cfg, ts)",
        &[
            &column(meters, 0),
            &column(meters, 1),
            &column(meters, 2),
            &column(meters, 3),
            &column(meters, 4),
            &column(meters, 5),
            &column(meters, 6),
        ],
    )
    .expect("inserting remote meters");
}

fn insert_tenants(c: &mut Client, tenants: &[Row]) {
    c.execute(
        "INSERT INTO tenant (tenant_id, name, configuration, metadata, updated_at)
         SELECT k, n, cfg::jsonb, md::jsonb, ts::timestamp
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) AS x(k, n, cfg, md, ts)",
        &[
            &column(tenants, 0),
            &column(tenants, 1),
            &column(tenants, 2),
            &column(tenants, 3),
            &column(tenants, 4),
        ],
    )
    .expect("inserting remote tenants");
}

/// How the download names a key in its errors: Rust's debug quoting, at most 64 characters.
fn quoted_key(key: &str) -> String {
    if key.chars().count() > 64 {
        format!("{:?}...", key.chars().take(64).collect::<String>())
    } else {
        format!("{key:?}")
    }
}

fn error_of(json: &Value, part: &str) -> String {
    json[part]["error"].as_str().unwrap_or_default().to_string()
}

// **Feature: database-sync-process, Property 8: Meter configuration upsert correctness**
// **Feature: database-sync-process, Property 10: Download failure isolation**
// **Feature: database-sync-process, Property 13: Tenant upsert correctness**
// **Feature: database-sync-process, Property 15: Tenant download failure isolation**
// Hostile remote meters and tenants are mirrored exactly (and a second cycle sees no change); a remote row the
// local schema cannot hold fails that table's download cleanly (key and column named, nothing written) while the
// other table syncs; both ways round.
#[test]
fn hostile_remote_meters_and_tenants_are_mirrored_exactly_or_fail_cleanly() {
    let pair = DbPair::new();
    migrate(&pair, Migrate::Both);
    let (meters, tenants) = (hostile_meters(), hostile_tenants());
    {
        let mut remote = pair.remote.client();
        insert_meters(&mut remote, &meters);
        insert_tenants(&mut remote, &tenants);
    }
    let env = env_with(&pair, &[]);
    let mirrored = |what: &str| {
        assert_same_rows(
            &format!("{what}: local meters"),
            &rows(&mut pair.local.client(), METERS),
            &rows(&mut pair.remote.client(), METERS),
        );
        assert_same_rows(
            &format!("{what}: local tenants"),
            &rows(&mut pair.local.client(), TENANTS),
            &rows(&mut pair.remote.client(), TENANTS),
        );
    };

    // Mirrored exactly.
    let (out, json) = once_json(&env);
    assert_eq!(out.status.code(), Some(0), "{}", short(&json.to_string()));
    assert_eq!(json["meterDownloadResult"]["newMeters"], meters.len() as u64);
    assert_eq!(json["tenantDownloadResult"]["newTenants"], tenants.len() as u64);
    let mut ids = hostile_ids();
    ids.sort();
    let reported: Vec<String> = serde_json::from_value(json["meterDownloadResult"]["newMeterIds"].clone())
        .expect("newMeterIds is a list of strings");
    let mut reported_sorted = reported.clone();
    reported_sorted.sort();
    assert!(
        reported_sorted == ids,
        "newMeterIds do not name the hostile keys exactly"
    );
    mirrored("first cycle");
    assert_no_payload("first cycle", &out.stderr);

    // Nothing changed: a second cycle writes nothing (the hostile values compare equal to themselves).
    let (out, json) = once_json(&env);
    assert_eq!(out.status.code(), Some(0), "{}", short(&json.to_string()));
    for (part, fields) in [
        ("meterDownloadResult", ["newMeters", "updatedMeters", "deletedMeters"]),
        (
            "tenantDownloadResult",
            ["newTenants", "updatedTenants", "deletedTenants"],
        ),
    ] {
        for f in fields {
            assert_eq!(json[part][f], 0, "second cycle: {part}.{f}");
        }
    }

    // A remote meter key longer than the local column: meters fail, naming key and column; tenants sync.
    let long_key = format!("'); DROP TABLE meters; --{}", "ü".repeat(275));
    let new_tenant = vec![
        Some("\"); DROP TABLE tenant; -- 2".to_string()),
        Some("ok".into()),
        Some(nested_objects(500)),
        None,
        Some("infinity".into()),
    ];
    let meters_before = rows(&mut pair.local.client(), METERS);
    {
        let mut remote = pair.remote.client();
        remote
            .batch_execute("ALTER TABLE meters ALTER COLUMN meter_id TYPE VARCHAR(400)")
            .expect("widening the remote key");
        let mut m = meters[0].clone();
        m[0] = Some(long_key.clone());
        insert_meters(&mut remote, &[m]);
        remote
            .execute(
                "UPDATE meters SET name = name || ' (renamed)' WHERE meter_id = $1",
                &[&hostile_ids()[2]],
            )
            .expect("renaming a remote meter");
        insert_tenants(&mut remote, &[new_tenant]);
        remote
            .execute(
                "UPDATE tenant SET metadata = 'null'::jsonb WHERE tenant_id = $1",
                &[&hostile_ids()[3]],
            )
            .expect("updating a remote tenant");
    }
    let (out, json) = once_json(&env);
    assert_eq!(out.status.code(), Some(1), "{}", short(&json.to_string()));
    let err = error_of(&json, "meterDownloadResult");
    assert_eq!(
        err,
        format!(
            "meters: bad remote data: meter_id {}: meter_id is 300 characters, the local column holds 255",
            quoted_key(&long_key)
        )
    );
    assert_same_rows(
        "meters after the failed download (unchanged)",
        &rows(&mut pair.local.client(), METERS),
        &meters_before,
    );
    assert_eq!(
        json["tenantDownloadResult"]["success"],
        true,
        "{}",
        error_of(&json, "tenantDownloadResult")
    );
    assert_eq!(json["tenantDownloadResult"]["newTenants"], 1);
    assert_eq!(json["tenantDownloadResult"]["updatedTenants"], 1);
    assert_same_rows(
        "tenants while meters fail",
        &rows(&mut pair.local.client(), TENANTS),
        &rows(&mut pair.remote.client(), TENANTS),
    );
    assert!(
        out.stderr.contains("meter_id is 300 characters"),
        "the failure is not logged"
    );

    // The other way round: a remote tenant name longer than the local column; meters (fixed) sync.
    let tenant_key = hostile_ids()[2].clone();
    let tenants_before = rows(&mut pair.local.client(), TENANTS);
    {
        let mut remote = pair.remote.client();
        remote
            .execute("DELETE FROM meters WHERE meter_id = $1", &[&long_key])
            .expect("deleting the long key");
        remote
            .batch_execute("ALTER TABLE tenant ALTER COLUMN name TYPE VARCHAR(400)")
            .expect("widening the remote tenant name");
        remote
            .execute(
                "UPDATE tenant SET name = repeat('n', 300) WHERE tenant_id = $1",
                &[&tenant_key],
            )
            .expect("lengthening a tenant name");
    }
    let (out, json) = once_json(&env);
    assert_eq!(out.status.code(), Some(1), "{}", short(&json.to_string()));
    assert_eq!(
        error_of(&json, "tenantDownloadResult"),
        format!(
            "tenant: bad remote data: tenant_id {}: name is 300 characters, the local column holds 255",
            quoted_key(&tenant_key)
        )
    );
    assert_same_rows(
        "tenants after the failed download (unchanged)",
        &rows(&mut pair.local.client(), TENANTS),
        &tenants_before,
    );
    assert_eq!(
        json["meterDownloadResult"]["success"],
        true,
        "{}",
        error_of(&json, "meterDownloadResult")
    );
    assert_eq!(json["meterDownloadResult"]["updatedMeters"], 1);
    assert_same_rows(
        "meters while tenants fail",
        &rows(&mut pair.local.client(), METERS),
        &rows(&mut pair.remote.client(), METERS),
    );
    assert_no_payload("last cycle", &out.stderr);
}

// ----- 3. A stuck remote -----

/// Short timeouts and intervals for a remote that goes silent.
const STUCK: &[(&str, &str)] = &[
    ("SYNC_INTERVAL_SECONDS", "1"),
    ("DB_CONNECTION_TIMEOUT_MS", "500"),
    ("DB_STATEMENT_TIMEOUT_MS", "1000"),
    ("RETRY_BASE_DELAY_MS", "10"),
    ("LOG_LEVEL", "info"),
];

/// A pair with the remote behind a proxy, the [`STUCK`] variables and `extra`.
fn stuck_env(sides: Migrate, extra: &[(&str, &str)]) -> Env {
    Env::builder()
        .remote_via_proxy()
        .migrate(sides)
        .vars(STUCK)
        .vars(extra)
        .build()
}

/// A generous bound that proves "no hang", not a performance figure.
const NO_HANG: Duration = Duration::from_secs(30);

// **Feature: database-sync-process, Property 4: Data preservation on failure**
// **Feature: database-sync-process, Property 2: Upload-delete atomicity**
// A daemon draining a queue; the remote goes silent (accepts, never answers): the cycle fails within a bound
// with the remote named, the daemon keeps cycling; when the remote answers again the queue drains exactly once.
#[test]
fn a_silent_remote_fails_the_cycle_in_time_and_the_daemon_recovers_exactly_once() {
    silent_remote_then_recovery(&[]);
}

// **Feature: database-sync-process, Property 4: Data preservation on failure**
// **Feature: database-sync-process, Property 2: Upload-delete atomicity**
// The same with four batches in flight: every one of them is abandoned in time, then settled exactly once.
#[test]
fn a_silent_remote_with_batches_in_flight_fails_in_time_and_recovers_exactly_once() {
    silent_remote_then_recovery(&[("UPLOAD_BATCHES_IN_FLIGHT", "4")]);
}

fn silent_remote_then_recovery(extra: &[(&str, &str)]) {
    let mut vars = vec![("BATCH_SIZE", "25"), ("UPLOAD_MAX_ROWS_PER_SECOND", "300")];
    vars.extend_from_slice(extra);
    let fixture = stuck_env(Migrate::Both, &vars);
    let (pair, proxy) = (&fixture.pair, fixture.proxy());
    if !extra.is_empty() {
        // A 2 ms round trip: the drain waits for the central and keeps several batches in flight (on loopback it
        // keeps one).
        proxy.set_latency(Duration::from_millis(1));
    }
    let n = 1500;
    insert_many(&mut pair.local.client(), n);
    let seeded = snapshot(&mut pair.local.client());
    let target = format!("{}:{}/{}", pg::HOST, proxy.port(), pair.remote.name());
    let mut daemon = Daemon::spawn(&["run"], &fixture.map);

    // Black hole while the queue is being uploaded.
    assert!(
        wait_until(NO_HANG, || pair.remote.count("SELECT count(*) FROM meter_readings")
            >= 100),
        "the drain did not start"
    );
    proxy.set_blackhole(true);
    let mark = daemon.stderr_text().len();
    let at = Instant::now();
    let since = |d: &Daemon| d.stderr_text()[mark..].to_string();
    let failed_at = || {
        let text = since(&daemon);
        let i = text.find("upload failed")?;
        let line_end = text[i..].find('\n').map_or(text.len(), |e| i + e);
        text[i..line_end].contains(&target).then_some(line_end)
    };
    assert!(
        wait_until(NO_HANG, || failed_at().is_some()),
        "no failed upload naming {target} within {NO_HANG:?} of the black hole:\n{}",
        tail(&since(&daemon), 4000)
    );
    let first_failure = at.elapsed();
    let end = failed_at().expect("found above");
    let failure_line = {
        let text = since(&daemon);
        let start = text[..end].rfind("upload failed").unwrap_or(0);
        text[start..end].to_string()
    };
    // The daemon goes on: that cycle ends and the next one starts, still during the black hole.
    assert!(
        wait_until(NO_HANG, || {
            let text = since(&daemon);
            text[end..].contains("finished in") && text[end..].contains("starting:")
        }),
        "no further cycle within {NO_HANG:?} after the failure (the daemon hangs?):\n{}",
        tail(&since(&daemon), 4000)
    );
    assert!(
        daemon.is_running(),
        "the daemon exited: {}",
        tail(&daemon.stderr_text(), 3000)
    );
    let stuck_for = at.elapsed();
    assert!(
        pair.local.count("SELECT count(*) FROM meter_readings") > 0,
        "the queue drained before the black hole had any effect"
    );

    // The remote answers again: the queue drains, exactly once.
    proxy.set_blackhole(false);
    let drained = || {
        pair.local.count("SELECT count(*) FROM meter_readings") == 0
            && pair.local.count("SELECT count(*) FROM sync_upload_batches") == 0
            && pair.remote.count("SELECT count(*) FROM meter_readings") >= n
    };
    assert!(
        wait_until(Duration::from_secs(60), drained),
        "the queue did not drain after the black hole ended: local {}, remote {}\n{}",
        pair.local.count("SELECT count(*) FROM meter_readings"),
        pair.remote.count("SELECT count(*) FROM meter_readings"),
        tail(&daemon.stderr_text(), 4000)
    );
    assert_exactly_once(&mut pair.local.client(), &mut pair.remote.client(), &seeded);
    daemon.signal("TERM");
    let status = daemon.wait_timeout(NO_HANG);
    assert_eq!(status.and_then(|s| s.code()), Some(0), "exit after SIGTERM");
    eprintln!(
        "silent remote: first failed upload logged {} ms after the black hole, next cycle started by {} ms: {}",
        first_failure.as_millis(),
        stuck_for.as_millis(),
        short(&failure_line)
    );
}

// **Feature: database-sync-process, Property 4: Data preservation on failure**
// `once` against a remote that is silent from the start exits 1 within a bound, every part's error names the
// remote, and every reading is still local.
#[test]
fn once_against_a_silent_remote_exits_1_in_time_and_keeps_every_reading() {
    let fixture = stuck_env(Migrate::Both, &[]);
    let (pair, proxy) = (&fixture.pair, fixture.proxy());
    insert_many(&mut pair.local.client(), 30);
    let seeded = snapshot(&mut pair.local.client());
    proxy.set_blackhole(true);
    let target = format!("{}:{}/{}", pg::HOST, proxy.port(), pair.remote.name());
    let mut run = Daemon::spawn(&["once"], &fixture.map);
    let started = Instant::now();
    let status = run.wait_timeout(NO_HANG);
    let took = started.elapsed();
    let Some(status) = status else {
        run.kill();
        panic!(
            "`once` did not finish within {NO_HANG:?} against a silent remote:\n{}",
            tail(&run.stderr_text(), 4000)
        );
    };
    assert_eq!(status.code(), Some(1), "{}", tail(&run.stderr_text(), 3000));
    let json: Value = serde_json::from_str(run.stdout_text().trim()).expect("once prints its JSON");
    assert_eq!(json["success"], false);
    for part in ["uploadResult", "meterDownloadResult", "tenantDownloadResult"] {
        assert_eq!(json[part]["success"], false, "{part}");
        let err = error_of(&json, part);
        assert!(
            err.contains(&target),
            "{part}.error does not name the remote {target}: {err}"
        );
    }
    assert_same(
        "local readings",
        &snapshot(&mut pair.local.client()),
        &seeded,
        Reading::short,
    );
    assert_eq!(pair.remote.count("SELECT count(*) FROM meter_readings"), 0);
    eprintln!("once against a silent remote: exit 1 after {} ms", took.as_millis());
}

// A pooled connection that was fine and whose server then goes silent: the connection test (used by the
// daemon's status measurement after every cycle and by check-config) must fail within a bound too.
#[test]
fn the_connection_test_of_a_silent_remote_is_bounded() {
    let mut fixture = stuck_env(Migrate::Nothing, &[]);
    let conns = std::sync::Arc::new(ConnectionManager::new(&fixture.cfg, Shutdown::new()).expect("connection manager"));
    let proxy = fixture.proxy.take().expect("a proxy");
    conns
        .test(Side::Remote)
        .expect("the remote answers before the black hole");
    proxy.set_blackhole(true);
    let (tx, rx) = std::sync::mpsc::channel();
    let c = std::sync::Arc::clone(&conns);
    std::thread::spawn(move || {
        let _ = tx.send(c.test(Side::Remote).map_err(|e| e.to_string()));
    });
    let result = rx.recv_timeout(Duration::from_secs(10));
    // Ends a still-blocked test (the proxy cuts its connections on drop).
    drop(proxy);
    match result {
        Ok(Err(e)) => assert!(e.contains("remote"), "{e}"),
        Ok(Ok(())) => panic!("the connection test succeeded against a silent remote"),
        Err(_) => panic!(
            "ConnectionManager::test(Side::Remote) still blocked 10 s after the remote went silent \
             (an idle pooled connection is used without a time bound)"
        ),
    }
}

// ----- 4. Configuration: hostile maps -----

/// A hostile variable map over every known key plus random ones. The two passwords (and the content of a
/// password file offered to *_PASSWORD_FILE) carry a marker at both ends that must never show.
#[derive(Clone, Debug)]
struct HostileVars(BTreeMap<String, String>);

const MARK: &str = "PWLEAK";

fn password_file() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = crate::support::unique_temp_dir("sync-process-hostile-pw");
        let path = dir.join("password");
        std::fs::write(&path, format!("{MARK}-file-secret-{MARK}\nsecond line\n")).expect("writing the password file");
        path.display().to_string()
    })
}

fn hostile_value(g: &mut Gen) -> String {
    match u8::arbitrary(g) % 12 {
        0 => String::arbitrary(g),
        1 => String::from_utf8_lossy(&Vec::<u8>::arbitrary(g)).into_owned(),
        2 => {
            let digits: String = (0..1 + usize::arbitrary(g) % 60)
                .map(|_| char::from(b'0' + u8::arbitrary(g) % 10))
                .collect();
            format!("{}{digits}", g.choose(&["", "-", "+", " "]).copied().unwrap_or(""))
        }
        3 => g
            .choose(&[
                "18446744073709551616",
                "340282366920938463463374607431768211456",
                "-9223372036854775809",
                "1e400",
                "NaN",
                "inf",
                "-0",
                "0x10",
                "5.0",
                "1_000",
                "٣",
                "５",
            ])
            .copied()
            .unwrap_or("")
            .to_string(),
        4 => g
            .choose(&["", " ", "\t\n", "\u{a0}", "\u{3000}", "\r\n", "\u{feff}"])
            .copied()
            .unwrap_or("")
            .to_string(),
        5 => g
            .choose(&[
                "\0",
                "a\0b",
                "\u{7f}",
                "\u{fffd}\u{fffd}",
                "\u{ffff}",
                "\u{202e}",
                "\u{1b}[31m",
            ])
            .copied()
            .unwrap_or("")
            .to_string(),
        6 => g
            .choose(&[
                "localhost",
                "5432",
                "true",
                "off",
                "127.0.0.1:0",
                "[::1]:17461",
                "http://x",
                "https://",
                "disable",
                "verify-full",
                "debug",
                "0.5",
                "1",
                "0",
            ])
            .copied()
            .unwrap_or("")
            .to_string(),
        7 => "x".repeat(usize::arbitrary(g) % 20_000),
        8 => g
            .choose(&["/", ".", "/nonexistent/x", "/tmp", "relative/path", "~/x"])
            .copied()
            .unwrap_or("")
            .to_string(),
        9 => password_file().to_string(),
        10 => format!("{} {}", String::arbitrary(g), u64::arbitrary(g)),
        _ => format!("'{}\"", String::arbitrary(g)),
    }
}

/// A password with the marker at both ends and garbage between.
fn marked_password(g: &mut Gen) -> String {
    format!("{MARK}{}{}{MARK}", u32::arbitrary(g), hostile_value(g))
}

/// A hostile value for `key`; a password is usually marked.
fn hostile_value_for(key: &str, g: &mut Gen) -> String {
    if key.ends_with("_PASSWORD") && u8::arbitrary(g) % 4 != 0 {
        marked_password(g)
    } else {
        hostile_value(g)
    }
}

/// Cases of the property that built a config, and that returned errors.
static BUILT: AtomicUsize = AtomicUsize::new(0);
static REFUSED: AtomicUsize = AtomicUsize::new(0);

impl Arbitrary for HostileVars {
    /// Half the cases start from a valid map and spoil a few variables (so that configs are also built and
    /// their Debug and summary checked); the other half are hostile throughout. Random extra keys in both.
    fn arbitrary(g: &mut Gen) -> HostileVars {
        let mut map = BTreeMap::new();
        if bool::arbitrary(g) {
            for side in ["POSTGRES_SYNC", "POSTGRES_CLIENT"] {
                map.insert(format!("{side}_HOST"), "localhost".to_string());
                map.insert(format!("{side}_DB"), "db".to_string());
                map.insert(format!("{side}_USER"), "user".to_string());
                if bool::arbitrary(g) {
                    map.insert(format!("{side}_PASSWORD"), marked_password(g));
                } else {
                    map.insert(format!("{side}_PASSWORD_FILE"), password_file().to_string());
                }
            }
            for _ in 0..usize::arbitrary(g) % 4 {
                let key = g.choose(VARIABLES).map_or("BATCH_SIZE", |(k, _, _)| *k);
                map.insert(key.to_string(), hostile_value_for(key, g));
            }
        } else {
            for (key, _, _) in VARIABLES {
                if u8::arbitrary(g) % 4 != 0 {
                    map.insert(key.to_string(), hostile_value_for(key, g));
                }
            }
        }
        for _ in 0..usize::arbitrary(g) % 6 {
            let key = match u8::arbitrary(g) % 3 {
                0 => String::arbitrary(g),
                1 => format!("POSTGRES_SYNC_{}", String::arbitrary(g)),
                _ => format!(
                    "{}_",
                    g.choose(&["SYNC", "DB", "MAX", "LOG", ""]).copied().unwrap_or("")
                ),
            };
            map.insert(key, hostile_value(g));
        }
        HostileVars(map)
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = HostileVars>> {
        let map = self.0.clone();
        Box::new(
            map.clone()
                .into_keys()
                .map(move |k| {
                    let mut m = map.clone();
                    m.remove(&k);
                    HostileVars(m)
                })
                .collect::<Vec<_>>()
                .into_iter(),
        )
    }
}

/// Any map over every variable (plus random keys), with garbage, huge numbers, empty values and whitespace:
/// `Config::from_map` returns a config or errors, never panics, and no password (nor a password file's content)
/// shows in the errors, the config's Debug or its summary.
fn prop_config_from_hostile_map_never_panics_nor_shows_a_password(vars: HostileVars) -> TestResult {
    let outcome = std::panic::catch_unwind(|| Config::from_map(&vars.0));
    let texts = match outcome {
        Err(_) => return TestResult::error("Config::from_map panicked"),
        Ok(Ok(cfg)) => {
            BUILT.fetch_add(1, Ordering::Relaxed);
            vec![format!("{cfg:?}"), cfg.summary()]
        }
        Ok(Err(errs)) => {
            REFUSED.fetch_add(1, Ordering::Relaxed);
            if errs.0.is_empty() {
                return TestResult::error("an error without any problem in it");
            }
            vec![errs.to_string(), format!("{errs:?}")]
        }
    };
    for text in &texts {
        if text.contains(MARK) {
            return TestResult::error(format!("a password shows: {}", short(text)));
        }
        for key in ["POSTGRES_SYNC_PASSWORD", "POSTGRES_CLIENT_PASSWORD"] {
            if let Some(p) = vars.0.get(key).map(|p| p.trim()) {
                // Long enough not to occur by chance in the messages' own words, and not also the value (or
                // name) of another variable, which the messages may quote.
                let elsewhere = vars.0.iter().any(|(k, v)| k != key && (v.contains(p) || k.contains(p)));
                if p.chars().count() >= 12 && !elsewhere && text.contains(p) {
                    return TestResult::error(format!("{key} shows: {}", short(text)));
                }
            }
        }
    }
    TestResult::passed()
}

// **Feature: database-sync-process, Configuration validation (issue 8 fuzzing; not a numbered design property)**
#[test]
fn prop_config_from_hostile_maps() {
    QuickCheck::new()
        .tests(200)
        .max_tests(2000)
        .rng(Gen::new(40))
        .quickcheck(prop_config_from_hostile_map_never_panics_nor_shows_a_password as fn(HostileVars) -> TestResult);
    let (built, refused) = (BUILT.load(Ordering::Relaxed), REFUSED.load(Ordering::Relaxed));
    assert!(
        built >= 20 && refused >= 20,
        "the generator is lopsided: {built} configs built, {refused} refused"
    );
    eprintln!("config property: {built} configs built, {refused} refused");
}
