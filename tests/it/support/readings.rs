//! Readings as the central-side tests (citus.rs, central_faults.rs) write, count and compare them.
//!
//! Owns: server-side generation of varied readings on the local database ([`insert_readings`]), the multiset
//! of every uploaded column as text ([`snapshot`]), and the exactly-once check
//! ([`assert_exactly_once`]). Does not own: databases or servers (pg.rs, citus.rs).

use postgres::Client;

use super::env::count;

/// Inserts `n` readings into the local queue, server-side: 50 meters, timestamps one `step` apart from
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

/// Every reading of `meter_readings` as the text of the row of its uploaded columns (SQL NULL and JSON null
/// differ), sorted: a multiset.
pub fn snapshot(c: &mut Client) -> Vec<String> {
    snapshot_of(c, "meter_readings")
}

/// [`snapshot`] of another table with the same columns.
pub fn snapshot_of(c: &mut Client, table: &str) -> Vec<String> {
    let mut v: Vec<String> = c
        .query(
            &format!(
                "SELECT ROW(meter_id::text, timestamp::text, value::text, unit::text, metadata::text)::text FROM {table}"
            ),
            &[],
        )
        .unwrap_or_else(|e| panic!("reading {table}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect();
    v.sort();
    v
}

/// Exactly once: the remote holds exactly `original` (as a multiset), the local queue, its batches and the
/// quarantine are empty.
pub fn assert_exactly_once(local: &mut Client, remote: &mut Client, original: &[String]) {
    let got = snapshot(remote);
    assert_eq!(got.len(), original.len(), "remote row count");
    assert!(got == original, "the remote readings differ from the originals");
    for table in ["meter_readings", "sync_upload_batches", "sync_quarantine"] {
        assert_eq!(
            count(local, &format!("SELECT count(*) FROM {table}")),
            0,
            "local {table} is not empty"
        );
    }
}

/// Pairs of remote readings whose remote id order contradicts their timestamp order (readings generated in
/// time order must reach the remote in claim order). Read to the client: the remote may be distributed.
pub fn remote_order_inversions(remote: &mut Client) -> usize {
    let rows = remote
        .query("SELECT id::int8, timestamp::text FROM meter_readings", &[])
        .unwrap_or_else(|e| panic!("reading remote ids: {e}"));
    let mut v: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    v.sort();
    v.windows(2).filter(|w| w[1].1 < w[0].1).count()
}
