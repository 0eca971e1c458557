//! [`Reading`]: a meter reading as the tests write and compare it, the `::text` of each column (the server
//! casts on insert), so that a comparison is bit-exact whatever the type. Written once for the whole binary.
//!
//! Owns: the type and its quickcheck generator; inserting readings ([`insert`] given ones; server-side
//! [`insert_many`] plain ones and [`insert_readings`] varied ones); reading them back as a sorted multiset
//! ([`snapshot`], [`snapshot_of`], [`query_readings`]); multiset equality with shortened failure messages
//! ([`assert_same`], so a 1 MB payload never floods the output); the exactly-once check
//! ([`assert_exactly_once`]); and the remote's insertion order ([`remote_order_inversions`]).
//! Does not own: databases or servers ([`super::pg`], [`super::citus`]) or the daemon's set-up
//! ([`super::env`]). The remote's own `id` and `created_at` are its own and never compared.

use std::collections::BTreeMap;

use postgres::types::ToSql;
use postgres::Client;
use quickcheck::{Arbitrary, Gen};

use super::env::count;

/// The compared columns of `meter_readings` (and of `sync_quarantine`), as text, in [`Reading`]'s order.
pub const COLUMNS: &str = "meter_id::text, timestamp::text, value::text, unit::text, metadata::text";

/// A reading as text. Ordered, so that a sorted `Vec<Reading>` is a multiset.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reading {
    pub meter: String,
    pub ts: String,
    pub value: String,
    pub unit: String,
    pub md: Option<String>,
}

impl Reading {
    /// A reading in kWh (set `unit` for another).
    pub fn new(meter: &str, ts: &str, value: &str, md: Option<&str>) -> Reading {
        Reading {
            meter: meter.into(),
            ts: ts.into(),
            value: value.into(),
            unit: "kWh".into(),
            md: md.map(Into::into),
        }
    }

    /// For failure messages: every column shortened.
    pub fn short(&self) -> String {
        let md = self.md.as_deref().map(short).unwrap_or_else(|| "NULL".into());
        format!(
            "({}, {}, {}, {}, {md})",
            short(&self.meter),
            short(&self.ts),
            short(&self.value),
            short(&self.unit)
        )
    }
}

/// One of `items`.
pub fn pick<T: Clone>(g: &mut Gen, items: &[T]) -> T {
    g.choose(items).expect("non-empty choice").clone()
}

impl Arbitrary for Reading {
    fn arbitrary(g: &mut Gen) -> Reading {
        let meter = match u8::arbitrary(g) % 4 {
            0 => pick(
                g,
                &["o'brien", "back\\slash", "\"quoted\"", "ünï-çødé 😀", "tab\there", ""],
            )
            .to_string(),
            _ => format!("meter-{}", u8::arbitrary(g) % 5),
        };
        // Few distinct instants, so that ties on timestamp are common; now and then the extremes.
        let ts = match u8::arbitrary(g) % 16 {
            0 => "infinity".to_string(),
            1 => "-infinity".to_string(),
            2 => "0044-03-15 12:34:56.5 BC".to_string(),
            3 => "0001-01-01 00:00:00".to_string(),
            _ => format!(
                "2024-01-0{} 0{}:00:00.{:06}",
                1 + u8::arbitrary(g) % 3,
                u8::arbitrary(g) % 3,
                u32::arbitrary(g) % 3 * 250_000
            ),
        };
        let value = match u8::arbitrary(g) % 8 {
            0 => "NaN".to_string(),
            1 => "1.50".to_string(),
            2 => "-0.000001".to_string(),
            3 => {
                let digits: String = (0..1 + usize::arbitrary(g) % 80)
                    .map(|_| char::from(b'0' + u8::arbitrary(g) % 10))
                    .collect();
                format!("{}9{digits}.{digits}0", if bool::arbitrary(g) { "-" } else { "" })
            }
            _ => format!(
                "{}.{:0w$}",
                i32::arbitrary(g),
                u16::arbitrary(g),
                w = usize::from(u8::arbitrary(g) % 6)
            ),
        };
        let md = match u8::arbitrary(g) % 5 {
            0 => None,
            1 => Some("null".to_string()),
            2 => Some(r#"{"a": [1, null, {"b": null}], "ü": "😀", "q": "'\"\\"}"#.to_string()),
            _ => Some(
                serde_json::json!({ "k": String::arbitrary(g).replace('\0', ""), "n": i64::arbitrary(g) }).to_string(),
            ),
        };
        Reading {
            meter,
            ts,
            value,
            unit: pick(g, &["kWh", "m3", "°C"]).to_string(),
            md,
        }
    }
}

/// Inserts readings into `meter_readings`, in order (ids ascending); returns their ids.
pub fn insert(c: &mut Client, readings: &[Reading]) -> Vec<i64> {
    let m: Vec<&str> = readings.iter().map(|r| r.meter.as_str()).collect();
    let t: Vec<&str> = readings.iter().map(|r| r.ts.as_str()).collect();
    let v: Vec<&str> = readings.iter().map(|r| r.value.as_str()).collect();
    let u: Vec<&str> = readings.iter().map(|r| r.unit.as_str()).collect();
    let md: Vec<Option<&str>> = readings.iter().map(|r| r.md.as_deref()).collect();
    c.query(
        "INSERT INTO meter_readings (meter_id, timestamp, value, unit, metadata)
         SELECT m, t::timestamp, v::numeric, u, md::jsonb
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY AS x(m, t, v, u, md, o)
         ORDER BY o RETURNING id::int8",
        &[&m, &t, &v, &u, &md],
    )
    .expect("inserting readings")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Inserts `n` simple readings quickly (server-side): meters `meter-0..49`, one a second from 2024-01-01,
/// metadata `{"seq": 1..=n}`.
pub fn insert_many(c: &mut Client, n: i64) {
    c.execute(
        "INSERT INTO meter_readings (meter_id, timestamp, value, unit, metadata)
         SELECT 'meter-' || (g % 50), timestamp '2024-01-01' + g * interval '1 second',
                (g % 1000)::numeric / 100, 'kWh', jsonb_build_object('seq', g)
         FROM generate_series(1, $1::int8) AS g",
        &[&n],
    )
    .expect("inserting many readings");
}

/// Inserts `n` varied readings into the local queue, server-side: 50 meters, timestamps one `step` apart from
/// `start` (a timestamp literal) in time order, NUMERIC values with their scale (`12.340`), SQL NULL, JSON
/// null and nested JSONB metadata.
pub fn insert_readings(c: &mut Client, n: i64, start: &str, step: &str) {
    c.execute(
        "INSERT INTO meter_readings (meter_id, timestamp, value, unit, metadata)
         SELECT 'meter-' || (g % 50), $2::text::timestamp + (g - 1) * $3::text::interval,
                ((g % 1000)::numeric / 100)::numeric(12,3), CASE WHEN g % 7 = 0 THEN 'm³' ELSE 'kWh' END,
                CASE g % 4 WHEN 0 THEN NULL WHEN 1 THEN 'null'::jsonb
                           ELSE jsonb_build_object('seq', g, 'nested', jsonb_build_object('x', NULL)) END
         FROM generate_series(1, $1::int8) AS g",
        &[&n, &start, &step],
    )
    .unwrap_or_else(|e| panic!("inserting {n} readings from {start}: {e}"));
}

impl Reading {
    /// A row of `SELECT` [`COLUMNS`].
    pub fn from_row(r: &postgres::Row) -> Reading {
        Reading {
            meter: r.get(0),
            ts: r.get(1),
            value: r.get(2),
            unit: r.get(3),
            md: r.get(4),
        }
    }
}

/// `SELECT` [`COLUMNS`] `{from_where}` as a sorted multiset (e.g. `"FROM meter_readings WHERE id = ANY($1)"`).
pub fn query_readings(c: &mut Client, from_where: &str, params: &[&(dyn ToSql + Sync)]) -> Vec<Reading> {
    let sql = format!("SELECT {COLUMNS} {from_where}");
    let mut v: Vec<Reading> = c
        .query(&sql, params)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(Reading::from_row)
        .collect();
    v.sort();
    v
}

/// The readings of a database (`meter_readings`) as a sorted multiset (SQL NULL and JSON null differ).
pub fn snapshot(c: &mut Client) -> Vec<Reading> {
    snapshot_of(c, "meter_readings")
}

/// [`snapshot`] of another table with the same columns (e.g. `sync_quarantine`).
pub fn snapshot_of(c: &mut Client, table: &str) -> Vec<Reading> {
    query_readings(c, &format!("FROM {table}"), &[])
}

/// Asserts exactly-once: the remote holds exactly `expected` (as a multiset), and the local queue, the batch
/// bookkeeping and the quarantine are empty.
pub fn assert_exactly_once(local: &mut Client, remote: &mut Client, expected: &[Reading]) {
    assert_same("remote readings", &snapshot(remote), expected, Reading::short);
    for (table, what) in [
        ("meter_readings", "local queue not empty"),
        ("sync_upload_batches", "batches still claimed"),
        ("sync_quarantine", "readings quarantined"),
    ] {
        assert_eq!(count(local, &format!("SELECT count(*) FROM {table}")), 0, "{what}");
    }
}

/// Pairs of remote readings whose remote id order contradicts their timestamp order (readings generated in
/// time order must reach the remote in claim order). Read to the client: the remote may be distributed. The
/// timestamps are compared as text: for readings of [`insert_readings`] (AD, finite, one format), not for
/// arbitrary ones.
pub fn remote_order_inversions(remote: &mut Client) -> usize {
    let rows = remote
        .query("SELECT id::int8, timestamp::text FROM meter_readings", &[])
        .unwrap_or_else(|e| panic!("reading remote ids: {e}"));
    let mut v: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    v.sort();
    v.windows(2).filter(|w| w[1].1 < w[0].1).count()
}

/// Asserts two multisets are equal (in any order); on failure lists (shortened by `show`, at most five each)
/// what only one side has.
pub fn assert_same<T: Ord>(what: &str, got: &[T], want: &[T], show: impl Fn(&T) -> String) {
    let mut balance: BTreeMap<&T, i64> = BTreeMap::new();
    for r in got {
        *balance.entry(r).or_default() += 1;
    }
    for r in want {
        *balance.entry(r).or_default() -= 1;
    }
    if balance.values().all(|n| *n == 0) {
        return;
    }
    let list = |sign: i64| -> Vec<String> {
        balance
            .iter()
            .filter(|(_, n)| **n * sign > 0)
            .take(5)
            .map(|(r, n)| format!("  {} x {}", n * sign, show(r)))
            .collect()
    };
    panic!(
        "{what}: {} rows, expected {}\nunexpected:\n{}\nmissing:\n{}",
        got.len(),
        want.len(),
        list(1).join("\n"),
        list(-1).join("\n")
    );
}

/// A value for a failure message: quoted, at most 300 characters, with its length when longer.
pub fn short(s: &str) -> String {
    let n = s.chars().count();
    if n <= 300 {
        format!("{s:?}")
    } else {
        format!("{:?}...({n} chars)", s.chars().take(300).collect::<String>())
    }
}
