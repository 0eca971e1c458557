//! Every SQL statement of the upload, both sides.
//!
//! Owns: the statement texts (claim, finish, upload in its three orders, probe, recovery, quarantine, prune,
//! and the counts that status and the drain ask for). Fragments that several statements share are written
//! once, as macros that expand to string literals (`concat!`), so the copies cannot drift apart.
//! Does not own: running them (session.rs locally, uplink.rs remotely), the advisory lock statements (db.rs).
//!
//! Reading values are selected cast to exactly the types the upload carries in binary (text, timestamp,
//! numeric, jsonb: no-op casts for the seed schema's columns), with aliases that differ from the column names,
//! and queries order by the real columns (pitfalls.md: ordering by a cast loses the index). The remote takes
//! them as typed arrays of the same types, so no value is converted on the way.

/// A reading's columns, each cast to the one type the upload carries it as (wire.rs: `Wire` accepts exactly
/// that type), with `$p` (`r.`, `c.` or nothing) naming the row: id, meter, timestamp, value, unit, metadata.
macro_rules! reading_values {
    ($p:literal) => {
        concat!(
            $p,
            "id::int8 AS id_num, ",
            $p,
            "meter_id::text AS meter_text, ",
            $p,
            "timestamp::timestamp AS ts_wire,\n       ",
            $p,
            "value::numeric AS value_wire, ",
            $p,
            "unit::text AS unit_text, ",
            $p,
            "metadata::jsonb AS metadata_wire"
        )
    };
}

/// The byte bound of a claim, as a literal for [`claim_ctes!`]: [`CLAIM_MAX_BYTES`].
macro_rules! claim_max_bytes {
    () => {
        "1048576"
    };
}

/// The column after a claim's readings: the row data claimed up to and including this reading (the running
/// sum the byte bound cuts at), so the last row holds the batch's total ([`ClaimedBatch::row_bytes`]).
///
/// [`ClaimedBatch::row_bytes`]: super::batch::ClaimedBatch::row_bytes
macro_rules! claimed_bytes {
    () => {
        ", c.bytes::int8 AS claimed_bytes"
    };
}

/// A claim takes readings only while their row data (the stored size of their columns, as `pg_column_size`
/// counts it: TOAST-compressed values count compressed) adds up to at most this many bytes, and always at least
/// one reading: a 1 MB metadata row makes a batch of two, not one of 5 GB.
pub const CLAIM_MAX_BYTES: usize = 1024 * 1024;

/// CTEs `c` (the next `$1` queued readings in claim order, cut where their row data passes
/// [`CLAIM_MAX_BYTES`] but at least one: `first` from the start of the queue, `next` after the key ($2, $3),
/// keyset paging over `idx_meter_readings_claim`, `late` from the start but only ids above $2; the running
/// sum streams, so the scan stops at `$1` rows and reads no value to size it) and `b` (their batch row, with a random id and the reading ids in claim order).
/// With `checked` (UPLOAD_VALIDATE), the readings taken are `k` and [`validate_ctes!`] makes `c` of those that
/// pass, with the check parameters `$c`..`$w`.
macro_rules! claim_ctes {
    (first) => {
        claim_ctes!("", "c", "")
    };
    (next) => {
        claim_ctes!("(timestamp, id) > ($2::timestamp, $3) AND ", "c", "")
    };
    (late) => {
        claim_ctes!("id > $2 AND ", "c", "")
    };
    (first, checked $c:literal, $lo:literal, $hi:literal, $w:literal) => {
        claim_ctes!("", "k", validate_ctes!($c, $lo, $hi, $w))
    };
    (next, checked $c:literal, $lo:literal, $hi:literal, $w:literal) => {
        claim_ctes!(
            "(timestamp, id) > ($2::timestamp, $3) AND ",
            "k",
            validate_ctes!($c, $lo, $hi, $w)
        )
    };
    (late, checked $c:literal, $lo:literal, $hi:literal, $w:literal) => {
        claim_ctes!("id > $2 AND ", "k", validate_ctes!($c, $lo, $hi, $w))
    };
    ($after:literal, $taken:literal, $checks:expr) => {
        concat!(
            $taken,
            " AS (
  SELECT id, meter_id, timestamp, value, unit, metadata, bytes FROM (
    SELECT id, meter_id, timestamp, value, unit, metadata, row_number() OVER w AS n,
           sum(16 + pg_column_size(meter_id) + pg_column_size(value) + pg_column_size(unit)
               + coalesce(pg_column_size(metadata), 0)) OVER w AS bytes
    FROM meter_readings
    WHERE ",
            $after,
            "is_synchronized IS NOT TRUE
    WINDOW w AS (ORDER BY timestamp, id ROWS UNBOUNDED PRECEDING)
    ORDER BY timestamp, id LIMIT $1
  ) AS q WHERE q.n = 1 OR q.bytes <= ",
            claim_max_bytes!(),
            "
)",
            $checks,
            ", b AS (
  INSERT INTO sync_upload_batches (batch_id, reading_ids)
  SELECT gen_random_uuid(), array_agg(c.id::int8 ORDER BY c.timestamp, c.id) FROM c HAVING count(*) > 0
  RETURNING batch_id
)"
        )
    };
}

/// UPLOAD_VALIDATE's CTEs between the readings taken (`k`) and the batch (`b`): `o` (once per statement, hence
/// MATERIALIZED, not inlined into every row: which checks `$c` names, and the window `$lo`..`$hi`, in seconds
/// from `localtimestamp`), `v` (the readings that fail an enabled check, each with the reason of the first:
/// `finite-value: NaN`, the window's text `$w` in timestamp-window's), `q` (those deleted from the queue, by an
/// id array: the generic plan then probes the primary key instead of scanning the queue), `i` (the same
/// inserted into sync_quarantine, each returning its check's name) and `c` (the others, for `b` and the
/// result; NOT MATERIALIZED: each reads `k`, no copy). `v` holds only the failing readings' ids, so the
/// readings that pass are not copied once more. `value + 1 = value` holds exactly for NaN, Infinity and
/// -Infinity (numeric is exact), with no text conversion and on servers without numeric infinities.
macro_rules! validate_ctes {
    ($c:literal, $lo:literal, $hi:literal, $w:literal) => {
        concat!(
            ", o AS MATERIALIZED (
  SELECT 'known-meter' = ANY(",
            $c,
            "::text[]) AS known_meter, 'meter-unit' = ANY(",
            $c,
            "::text[]) AS meter_unit,
         'finite-value' = ANY(",
            $c,
            "::text[]) AS finite_value, 'timestamp-window' = ANY(",
            $c,
            "::text[]) AS in_window,
         localtimestamp + ",
            $lo,
            " * interval '1 second' AS lo, localtimestamp + ",
            $hi,
            " * interval '1 second' AS hi
), v AS (
  SELECT * FROM (
    SELECT k.id, CASE
      WHEN o.known_meter AND m.meter_id IS NULL
        THEN 'known-meter: meter \"' || k.meter_id || '\" not in meters'
      WHEN o.meter_unit AND m.unit <> k.unit
        THEN 'meter-unit: unit \"' || k.unit || '\" is not the unit \"' || m.unit || '\" of meter \"' || k.meter_id || '\"'
      WHEN o.finite_value AND k.value + 1 = k.value
        THEN 'finite-value: ' || k.value::text
      WHEN o.in_window AND (k.timestamp < o.lo OR k.timestamp > o.hi)
        THEN 'timestamp-window: ' || k.timestamp::text || ' outside ' || ",
            $w,
            "::text
    END AS reason
    FROM k CROSS JOIN o LEFT JOIN meters m ON m.meter_id = k.meter_id
  ) AS checked WHERE reason IS NOT NULL
), q AS (
  DELETE FROM meter_readings r WHERE r.id = ANY(ARRAY(SELECT v.id FROM v))
  RETURNING r.id, r.meter_id, r.timestamp, r.value, r.unit, r.metadata, r.created_at
), i AS (
  INSERT INTO sync_quarantine (id, meter_id, timestamp, value, unit, metadata, created_at, error)
  SELECT q.id, q.meter_id, q.timestamp, q.value, q.unit, q.metadata, q.created_at, v.reason FROM q JOIN v ON v.id = q.id
  RETURNING split_part(error, ':', 1) AS check_name
), c AS NOT MATERIALIZED (
  SELECT * FROM k WHERE k.id <> ALL(ARRAY(SELECT v.id FROM v))
)"
        )
    };
}

/// The columns a validated claim returns before the batch: the readings quarantined per check (in
/// `validate::Check::ALL` order) and, when none passed, the key of the last reading taken (to continue after
/// it; the subqueries run only then).
macro_rules! validated_columns {
    () => {
        "(SELECT ARRAY[count(*) FILTER (WHERE check_name = 'known-meter'),
              count(*) FILTER (WHERE check_name = 'meter-unit'),
              count(*) FILTER (WHERE check_name = 'finite-value'),
              count(*) FILTER (WHERE check_name = 'timestamp-window')]::int8[] FROM i) AS invalid,
       CASE WHEN b.batch_id IS NULL THEN (SELECT k.timestamp FROM k ORDER BY k.timestamp DESC, k.id DESC LIMIT 1)
       END AS last_ts,
       CASE WHEN b.batch_id IS NULL THEN (SELECT k.id::int8 FROM k ORDER BY k.timestamp DESC, k.id DESC LIMIT 1)
       END AS last_id"
    };
}

/// CTEs `$b` (the batch row `$id`, deleted) and `d` (exactly the readings it names, deleted).
macro_rules! finish_ctes {
    ($b:literal, $id:literal) => {
        concat!(
            $b,
            " AS (
  DELETE FROM sync_upload_batches WHERE batch_id = ",
            $id,
            "::uuid RETURNING reading_ids
), d AS (
  DELETE FROM meter_readings r USING ",
            $b,
            " WHERE r.id = ANY(",
            $b,
            ".reading_ids) RETURNING 1
)"
        )
    };
}

/// CTEs `$b` (the batch row `$id`, acknowledged: `uploaded_at` set the first time, `acknowledged_at` every
/// time) and `d` (exactly the readings it names, marked `is_synchronized`: out of the queue). The finish of a
/// batch when UPLOAD_CONFIRM_SECONDS > 0.
macro_rules! mark_ctes {
    ($b:literal, $id:literal) => {
        concat!(
            $b,
            " AS (
  UPDATE sync_upload_batches SET uploaded_at = coalesce(uploaded_at, now()), acknowledged_at = now()
  WHERE batch_id = ",
            $id,
            "::uuid RETURNING reading_ids
), d AS (
  UPDATE meter_readings r SET is_synchronized = true FROM ",
            $b,
            " WHERE r.id = ANY(",
            $b,
            ".reading_ids) RETURNING 1
)"
        )
    };
}

/// The remote insert of the readings from five typed arrays (binary from the local server, unchanged), in
/// upload order. `$from` is what the arrays are
/// joined to (`l CROSS JOIN ` for the ledger row), `$m`..`$md` their parameters.
macro_rules! insert_readings {
    ($from:literal, $m:literal, $t:literal, $v:literal, $u:literal, $md:literal) => {
        concat!(
            "INSERT INTO meter_readings (meter_id, timestamp, value, unit, metadata)
SELECT x.m, x.t, x.v, x.u, x.md
FROM ",
            $from,
            "unnest(",
            $m,
            "::text[], ",
            $t,
            "::timestamp[], ",
            $v,
            "::numeric[], ",
            $u,
            "::text[], ",
            $md,
            "::jsonb[])
     WITH ORDINALITY AS x(m, t, v, u, md, ord)
ORDER BY x.ord"
        )
    };
}

/// The ledger row `$rest` (`VALUES (...)` or a `SELECT`), returning its batch id as CTE `l`, then the
/// readings joined to it: a batch already in fails on the ledger key before any reading is inserted.
macro_rules! ledger_then_readings {
    ($rest:literal) => {
        concat!(
            "l AS (
  INSERT INTO sync_upload_ledger (source_id, batch_id, row_count) ",
            $rest,
            "
  RETURNING batch_id
)
",
            insert_readings!("l CROSS JOIN ", "$4", "$5", "$6", "$7", "$8")
        )
    };
}

/// A whole claim statement (`first`, `next` or `late`, as [`claim_ctes!`]): the batch id and the readings.
macro_rules! claim {
    ($which:ident) => {
        concat!(
            "\nWITH ",
            claim_ctes!($which),
            "\nSELECT b.batch_id::text AS batch_text, ",
            reading_values!("c."),
            claimed_bytes!(),
            "\nFROM b CROSS JOIN c ORDER BY c.timestamp, c.id"
        )
    };
}

/// Local. The first claim of a drain: the oldest readings.
pub const CLAIM_FIRST: &str = claim!(first);

/// Local. The next claim: keyset after the last claimed (timestamp, id).
pub const CLAIM_NEXT: &str = claim!(next);

/// Local. A claim from the start of the queue of only the readings with an id above $2 (the largest id when
/// the drain's pass began): those that arrived behind its cursor. The drained readings' index entries, dead
/// until vacuum, fail the id condition inside the index, so this claim does not visit their rows (a claim
/// from the start would, one by one: BENCHMARKS.md, run 5 of the field-shaped drain).
pub const CLAIM_LATE: &str = claim!(late);

/// Local. The largest reading id, queued or not (NULL for an empty table): where a drain's pass begins.
pub const MAX_READING_ID: &str = "SELECT max(id)::int8 FROM meter_readings";

/// A whole validated claim statement (UPLOAD_VALIDATE; `first`, `next` or `late`, the check parameters as
/// [`validate_ctes!`]): the readings that fail a check are quarantined, the others claimed. Always one row
/// at least: [`validated_columns!`], then the batch id and the readings as text (NULLs when none passed).
macro_rules! claim_checked {
    ($which:ident, $c:literal, $lo:literal, $hi:literal, $w:literal) => {
        concat!(
            "\nWITH ",
            claim_ctes!($which, checked $c, $lo, $hi, $w),
            "\nSELECT ",
            validated_columns!(),
            ",\n       b.batch_id::text AS batch_text, ",
            reading_values!("c."),
            claimed_bytes!(),
            "\nFROM (SELECT 1) AS one LEFT JOIN (b CROSS JOIN c) ON true ORDER BY c.timestamp, c.id"
        )
    };
}

/// Local. [`CLAIM_FIRST`] with UPLOAD_VALIDATE's checks ($2 names, $3/$4 window seconds, $5 window text).
pub const CLAIM_FIRST_CHECKED: &str = claim_checked!(first, "$2", "$3", "$4", "$5");

/// Local. [`CLAIM_NEXT`] with UPLOAD_VALIDATE's checks ($4 names, $5/$6 window seconds, $7 window text).
pub const CLAIM_NEXT_CHECKED: &str = claim_checked!(next, "$4", "$5", "$6", "$7");

/// Local. [`CLAIM_LATE`] with UPLOAD_VALIDATE's checks ($3 names, $4/$5 window seconds, $6 window text).
pub const CLAIM_LATE_CHECKED: &str = claim_checked!(late, "$3", "$4", "$5", "$6");

/// A settling step (the CTEs `f` and `d` of batch $4) and the CLAIM after ($2, $3), in one statement: the
/// body of [`FINISH_AND_CLAIM`] and [`MARK_AND_CLAIM`]; with `checked`, of their UPLOAD_VALIDATE forms (check
/// parameters $5..$8, [`validated_columns!`] after `deleted`).
macro_rules! settle_and_claim {
    ($settle:expr) => {
        settle_and_claim!($settle, claim_ctes!(next), "")
    };
    ($settle:expr, checked) => {
        settle_and_claim!(
            $settle,
            claim_ctes!(next, checked "$5", "$6", "$7", "$8"),
            concat!(" ", validated_columns!(), ",\n      ")
        )
    };
    ($settle:expr, $claim:expr, $columns:expr) => {
        concat!(
            "
WITH ",
            $settle,
            ", ",
            $claim,
            "
SELECT (SELECT count(*) FROM f) AS finished, (SELECT count(*) FROM d) AS deleted,",
            $columns,
            "
       b.batch_id::text AS batch_text, ",
            reading_values!("c."),
            claimed_bytes!(),
            "
FROM (SELECT 1) AS one LEFT JOIN (b CROSS JOIN c) ON true
ORDER BY c.timestamp, c.id"
        )
    };
}

/// Local. FINISH of batch $4 and CLAIM after ($2, $3) in one statement, so one commit per batch. The claim
/// sees the queue as it was before the delete (one snapshot), which is right: the finished readings all lie
/// at or before the key it continues after. Always returns a row: (finished, deleted, NULLs) when nothing
/// is left to claim.
pub const FINISH_AND_CLAIM: &str = settle_and_claim!(finish_ctes!("f", "$4"));

/// Local. [`FINISH_AND_CLAIM`] with a confirmation window: the finished batch is marked, not deleted (same
/// columns; `deleted` counts the readings marked).
pub const MARK_AND_CLAIM: &str = settle_and_claim!(mark_ctes!("f", "$4"));

/// Local. [`FINISH_AND_CLAIM`] with UPLOAD_VALIDATE's checks ($5 names, $6/$7 window seconds, $8 window text).
pub const FINISH_AND_CLAIM_CHECKED: &str = settle_and_claim!(finish_ctes!("f", "$4"), checked);

/// Local. [`MARK_AND_CLAIM`] with UPLOAD_VALIDATE's checks, as [`FINISH_AND_CLAIM_CHECKED`].
pub const MARK_AND_CLAIM_CHECKED: &str = settle_and_claim!(mark_ctes!("f", "$4"), checked);

/// Local. [`FINISH`] with a confirmation window: the batch row is acknowledged and its readings marked (they
/// leave the queue and stay until the confirmation step). Also acknowledges again a batch sent again.
pub const MARK: &str = concat!(
    "
WITH ",
    mark_ctes!("b", "$1"),
    "
SELECT (SELECT count(*) FROM b), (SELECT count(*) FROM d)"
);

/// Local. The batches awaiting confirmation whose window ($1 seconds) has passed, in claim order, at most
/// $2, with when the remote first acknowledged each (UTC, for the log).
pub const DUE_FOR_CONFIRMATION: &str = "
SELECT b.batch_id::text, coalesce(to_char(b.uploaded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), '?')
FROM sync_upload_batches b LEFT JOIN meter_readings r ON r.id = b.reading_ids[1]
WHERE b.acknowledged_at IS NOT NULL AND b.acknowledged_at <= now() - $1 * interval '1 second'
ORDER BY r.timestamp NULLS FIRST, r.id, b.claimed_at, b.batch_id
LIMIT $2";

/// Local. The batches $1 (awaiting confirmation, found in the ledger) and exactly their marked readings,
/// deleted in one statement.
pub const CONFIRM: &str = "
WITH b AS (
  DELETE FROM sync_upload_batches WHERE batch_id = ANY($1::uuid[]) AND acknowledged_at IS NOT NULL
  RETURNING reading_ids
), d AS (
  DELETE FROM meter_readings r USING b WHERE r.id = ANY(b.reading_ids) AND r.is_synchronized IS TRUE RETURNING 1
)
SELECT (SELECT count(*) FROM b), (SELECT count(*) FROM d)";

/// Local. Every batch row, pending or awaiting confirmation (the prune keeps their ledger rows).
pub const BATCH_IDS: &str = "SELECT batch_id::text FROM sync_upload_batches";

/// Local. Readings awaiting confirmation, and seconds since the oldest of their batches was first
/// acknowledged (NULL when none).
pub const AWAITING_CONFIRMATION: &str = "
SELECT coalesce(sum(cardinality(reading_ids)), 0)::int8, extract(epoch FROM now() - min(uploaded_at))::float8
FROM sync_upload_batches WHERE acknowledged_at IS NOT NULL";

/// Local. Deletes the batch row and exactly the readings it names.
pub const FINISH: &str = concat!(
    "
WITH ",
    finish_ctes!("b", "$1"),
    "
SELECT (SELECT count(*) FROM b), (SELECT count(*) FROM d)"
);

/// Remote. The ledger row first (the readings are joined to it, so a duplicate batch fails on the ledger
/// key before any reading is inserted), then the readings in upload order. One statement, one transaction.
pub const UPLOAD: &str = concat!(
    "
WITH ",
    ledger_then_readings!("VALUES ($1, $2::uuid, $3)")
);

/// Remote. [`UPLOAD`] that also makes this batch the site's chain head (UPLOAD_BATCHES_IN_FLIGHT > 1, with
/// no older batch in flight, or sent again: it takes no turn lock, so a batch after it that failed before
/// and still holds its shared wait on this id never blocks it). A batch sent after this one finds its head
/// once it commits ([`UPLOAD_AFTER`] looks again every millisecond meanwhile). `updated_at` comes from the proposed row (its default, `now()`): Citus refuses a non-IMMUTABLE function in
/// the DO UPDATE SET of an insert into a distributed or reference table.
pub const UPLOAD_LEAD: &str = concat!(
    "
WITH h AS (
  INSERT INTO sync_upload_chain (source_id, head) VALUES ($1, $2::uuid)
  ON CONFLICT (source_id) DO UPDATE SET head = EXCLUDED.head, updated_at = EXCLUDED.updated_at
  RETURNING 1
), ",
    ledger_then_readings!("SELECT $1, $2::uuid, $3 FROM h")
);

/// Remote. [`UPLOAD`] of a batch sent while the batch $9 is in flight: `sync_upload_turn`
/// (sql/remote/0004_upload_turn.sql) waits for its turn (for $9 to commit, also when this statement reached
/// the server first; at most $10 ms while $9 is neither in nor in flight) and moves the site's head from $9
/// to this batch. Only then are the ledger row and readings inserted, so readings reach the remote in claim
/// order. Otherwise nothing is inserted (0 rows): the batch is sent again.
pub const UPLOAD_AFTER: &str = concat!(
    "
WITH h AS (
  SELECT sync_upload_turn($1, $2::uuid, $9::uuid, $10) AS moved
), ",
    ledger_then_readings!("SELECT $1, $2::uuid, $3 FROM h WHERE h.moved")
);

/// Remote. The readings alone, for probing a rejected batch inside a transaction that is rolled back.
pub const PROBE: &str = concat!("\n", insert_readings!("", "$1", "$2", "$3", "$4", "$5"));

/// Local. The pending batches in upload order: by the key of their first reading (claims never overlap,
/// so this is the order they were claimed in, whatever the clock did), empty batches first. Batches awaiting
/// confirmation are not pending: the remote acknowledged them (the confirmation step settles them).
pub const PENDING: &str = "
SELECT b.batch_id::text, cardinality(b.reading_ids)
FROM sync_upload_batches b LEFT JOIN meter_readings r ON r.id = b.reading_ids[1]
WHERE b.acknowledged_at IS NULL
ORDER BY r.timestamp NULLS FIRST, r.id, b.claimed_at, b.batch_id";

/// Local. A pending batch's readings, in the order of its array.
pub const BATCH_ROWS: &str = concat!(
    "
SELECT ",
    reading_values!("r."),
    "
FROM sync_upload_batches b CROSS JOIN LATERAL unnest(b.reading_ids) WITH ORDINALITY AS u(id, ord)
JOIN meter_readings r ON r.id = u.id
WHERE b.batch_id = $1::uuid
ORDER BY u.ord"
);

/// Remote.
pub const LEDGER_LOOKUP: &str = "
SELECT batch_id::text FROM sync_upload_ledger WHERE source_id = $1 AND batch_id = ANY($2::uuid[])";

/// Local. Moves rejected readings into the quarantine and narrows their batch to the good ones.
pub const QUARANTINE: &str = "
WITH e AS (
  SELECT * FROM unnest($2::int8[], $3::text[], $4::text[]) AS e(id, error, sqlstate)
), q AS (
  DELETE FROM meter_readings r USING e WHERE r.id = e.id
  RETURNING r.id, r.meter_id, r.timestamp, r.value, r.unit, r.metadata, r.created_at, e.error, e.sqlstate
), i AS (
  INSERT INTO sync_quarantine (id, meter_id, timestamp, value, unit, metadata, created_at, error, sqlstate)
  SELECT * FROM q RETURNING 1
), u AS (
  UPDATE sync_upload_batches SET reading_ids = $5::int8[], attempts = attempts + 1, last_error = $6
  WHERE batch_id = $1::uuid RETURNING 1
)
SELECT (SELECT count(*) FROM i), (SELECT count(*) FROM u)";

/// Local. A few queued readings outside a rejected batch (ids $1), to probe whether the remote accepts
/// anything at all.
pub const CONTROL_READINGS: &str = concat!(
    "
SELECT ",
    reading_values!(""),
    "
FROM meter_readings WHERE is_synchronized IS NOT TRUE AND id <> ALL($1::int8[])
ORDER BY timestamp, id LIMIT 8"
);

/// Local.
pub const NOTE_FAILURE: &str = "
UPDATE sync_upload_batches SET attempts = attempts + 1, last_error = $2 WHERE batch_id = $1::uuid";

/// Remote. Ledger rows of this source older than $2 seconds, except batches still pending locally.
pub const PRUNE: &str = "
WITH d AS (
  DELETE FROM sync_upload_ledger
  WHERE source_id = $1 AND uploaded_at < now() - $2 * interval '1 second' AND batch_id <> ALL($3::uuid[])
  RETURNING 1
)
SELECT count(*) FROM d";

/// Local. Readings waiting (claimed or not), not counting quarantined ones. A row that another program marked
/// `is_synchronized = true` (the design's flag; this daemon deletes instead) is not queued.
pub const QUEUE_SIZE: &str = "SELECT count(*) FROM meter_readings WHERE is_synchronized IS NOT TRUE";

/// Local. Whether any reading is queued.
pub const BACKLOG_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM meter_readings WHERE is_synchronized IS NOT TRUE)";

/// Local. Seconds since the oldest queued reading was created (NULL when the queue is empty). An age, not a
/// reading: float seconds are fine here.
pub const OLDEST_PENDING_AGE: &str = "SELECT extract(epoch FROM localtimestamp - min(created_at))::float8 \
                                      FROM meter_readings WHERE is_synchronized IS NOT TRUE";

/// Local. Readings in the quarantine.
pub const QUARANTINED_COUNT: &str = "SELECT count(*) FROM sync_quarantine";

/// The column list and the select list of the remote readings insert, as [`insert_readings!`] writes them.
const INSERT_COLUMNS: &str = "INSERT INTO meter_readings (meter_id, timestamp, value, unit, metadata)";
const INSERT_VALUES: &str = "SELECT x.m, x.t, x.v, x.u, x.md";

/// `statement` (one of [`UPLOAD`], [`UPLOAD_LEAD`], [`UPLOAD_AFTER`], [`PROBE`]) writing the source id,
/// parameter `source_param` (text), into the remote column `column` (UPLOAD_SOURCE_COLUMN, a checked
/// identifier; quoted here) as well; the statement itself when `column` is None.
pub fn with_source_column(statement: &str, column: Option<&str>, source_param: &str) -> String {
    match column {
        None => statement.to_string(),
        Some(col) => {
            let quoted = format!("\"{}\"", col.replace('"', "\"\""));
            statement
                .replacen(
                    INSERT_COLUMNS,
                    &format!("{}, {quoted})", INSERT_COLUMNS.trim_end_matches(')')),
                    1,
                )
                .replacen(INSERT_VALUES, &format!("{INSERT_VALUES}, {source_param}::text"), 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The statements as they were written out in full before the shared fragments became macros: the
    /// expansion must be the same SQL (compared with runs of whitespace collapsed).
    fn words(sql: &str) -> String {
        sql.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn shared_fragments_expand_to_the_statements_written_out() {
        assert_eq!(
            words(CLAIM_NEXT),
            words(
                "WITH c AS ( SELECT id, meter_id, timestamp, value, unit, metadata, bytes FROM ( \
                 SELECT id, meter_id, timestamp, value, unit, metadata, row_number() OVER w AS n, \
                 sum(16 + pg_column_size(meter_id) + pg_column_size(value) + pg_column_size(unit) \
                 + coalesce(pg_column_size(metadata), 0)) OVER w AS bytes FROM meter_readings \
                 WHERE (timestamp, id) > ($2::timestamp, $3) AND is_synchronized IS NOT TRUE \
                 WINDOW w AS (ORDER BY timestamp, id ROWS UNBOUNDED PRECEDING) \
                 ORDER BY timestamp, id LIMIT $1 ) AS q WHERE q.n = 1 OR q.bytes <= 1048576 ), b AS ( INSERT INTO sync_upload_batches (batch_id, reading_ids) \
                 SELECT gen_random_uuid(), array_agg(c.id::int8 ORDER BY c.timestamp, c.id) FROM c HAVING count(*) > 0 \
                 RETURNING batch_id ) \
                 SELECT b.batch_id::text AS batch_text, c.id::int8 AS id_num, c.meter_id::text AS meter_text, \
                 c.timestamp::timestamp AS ts_wire, c.value::numeric AS value_wire, c.unit::text AS unit_text, \
                 c.metadata::jsonb AS metadata_wire, c.bytes::int8 AS claimed_bytes \
                 FROM b CROSS JOIN c ORDER BY c.timestamp, c.id"
            )
        );
        assert_eq!(
            words(UPLOAD),
            words(
                "WITH l AS ( INSERT INTO sync_upload_ledger (source_id, batch_id, row_count) VALUES ($1, $2::uuid, $3) \
                 RETURNING batch_id ) INSERT INTO meter_readings (meter_id, timestamp, value, unit, metadata) \
                 SELECT x.m, x.t, x.v, x.u, x.md \
                 FROM l CROSS JOIN unnest($4::text[], $5::timestamp[], $6::numeric[], $7::text[], $8::jsonb[]) \
                 WITH ORDINALITY AS x(m, t, v, u, md, ord) ORDER BY x.ord"
            )
        );
        assert_eq!(
            words(PROBE),
            words(
                "INSERT INTO meter_readings (meter_id, timestamp, value, unit, metadata) \
                 SELECT x.m, x.t, x.v, x.u, x.md \
                 FROM unnest($1::text[], $2::timestamp[], $3::numeric[], $4::text[], $5::jsonb[]) \
                 WITH ORDINALITY AS x(m, t, v, u, md, ord) ORDER BY x.ord"
            )
        );
        assert_eq!(
            words(FINISH),
            words(
                "WITH b AS ( DELETE FROM sync_upload_batches WHERE batch_id = $1::uuid RETURNING reading_ids ), \
                 d AS ( DELETE FROM meter_readings r USING b WHERE r.id = ANY(b.reading_ids) RETURNING 1 ) \
                 SELECT (SELECT count(*) FROM b), (SELECT count(*) FROM d)"
            )
        );
        assert_eq!(
            words(BATCH_ROWS),
            words(
                "SELECT r.id::int8 AS id_num, r.meter_id::text AS meter_text, r.timestamp::timestamp AS ts_wire, \
                 r.value::numeric AS value_wire, r.unit::text AS unit_text, r.metadata::jsonb AS metadata_wire \
                 FROM sync_upload_batches b CROSS JOIN LATERAL unnest(b.reading_ids) WITH ORDINALITY AS u(id, ord) \
                 JOIN meter_readings r ON r.id = u.id WHERE b.batch_id = $1::uuid ORDER BY u.ord"
            )
        );
    }

    #[test]
    fn the_claims_byte_bound_is_the_constant() {
        assert_eq!(claim_max_bytes!().parse::<usize>().ok(), Some(CLAIM_MAX_BYTES));
        for claim in [CLAIM_FIRST, CLAIM_NEXT, CLAIM_LATE, FINISH_AND_CLAIM, MARK_AND_CLAIM] {
            assert!(claim.contains(&format!("q.bytes <= {CLAIM_MAX_BYTES}")), "{claim}");
        }
    }

    #[test]
    fn validated_claims_are_the_claims_with_the_checks_between_taking_and_batching() {
        for plain in [CLAIM_FIRST, CLAIM_NEXT, CLAIM_LATE, FINISH_AND_CLAIM, MARK_AND_CLAIM] {
            assert!(
                !plain.contains("sync_quarantine") && !plain.contains("meters m"),
                "{plain}"
            );
        }
        let taken = |sql: &str| {
            let w = words(sql);
            let from = w.find(" AS ( SELECT id, meter_id, timestamp, value, unit, metadata, bytes FROM (");
            let to = w.find("q.bytes <= ");
            w[from.unwrap_or(0)..to.unwrap_or(0)].to_string()
        };
        for (plain, checked, names, window) in [
            (CLAIM_FIRST, CLAIM_FIRST_CHECKED, "$2", "$5"),
            (CLAIM_NEXT, CLAIM_NEXT_CHECKED, "$4", "$7"),
            (CLAIM_LATE, CLAIM_LATE_CHECKED, "$3", "$6"),
            (FINISH_AND_CLAIM, FINISH_AND_CLAIM_CHECKED, "$5", "$8"),
            (MARK_AND_CLAIM, MARK_AND_CLAIM_CHECKED, "$5", "$8"),
        ] {
            assert_eq!(taken(plain), taken(checked));
            let w = words(checked);
            assert!(w.contains("INSERT INTO sync_quarantine"), "{w}");
            assert!(w.contains(&format!("'finite-value' = ANY({names}::text[])")), "{w}");
            assert!(w.contains(&format!("' outside ' || {window}::text")), "{w}");
            assert!(
                w.contains("<> ALL(ARRAY(SELECT v.id FROM v)) ), b AS ( INSERT INTO sync_upload_batches"),
                "{w}"
            );
            assert!(
                w.contains("AS invalid, CASE WHEN b.batch_id IS NULL THEN (SELECT k.timestamp FROM k"),
                "{w}"
            );
            assert!(w.contains("LEFT JOIN (b CROSS JOIN c) ON true"), "{w}");
        }
    }

    #[test]
    fn the_source_column_is_written_by_every_readings_insert() {
        for (statement, param) in [(UPLOAD, "$1"), (UPLOAD_LEAD, "$1"), (UPLOAD_AFTER, "$1"), (PROBE, "$6")] {
            assert_eq!(statement.matches(INSERT_COLUMNS).count(), 1, "{statement}");
            assert_eq!(statement.matches(INSERT_VALUES).count(), 1, "{statement}");
            assert_eq!(with_source_column(statement, None, param), statement);
            let with = words(&with_source_column(statement, Some("Site_Id"), param));
            assert!(
                with.contains("INSERT INTO meter_readings (meter_id, timestamp, value, unit, metadata, \"Site_Id\")"),
                "{with}"
            );
            assert!(with.contains(&format!("x.md, {param}::text FROM")), "{with}");
        }
    }

    #[test]
    fn the_upload_statements_differ_only_before_the_ledger_row() {
        let tail = |sql: &str| words(&sql[sql.find("INSERT INTO sync_upload_ledger").unwrap_or(0)..]);
        let after_row = |sql: &str| {
            let t = tail(sql);
            t[t.find("RETURNING batch_id").unwrap_or(0)..].to_string()
        };
        assert_eq!(after_row(UPLOAD), after_row(UPLOAD_LEAD));
        assert_eq!(after_row(UPLOAD), after_row(UPLOAD_AFTER));
        assert!(UPLOAD_AFTER.contains("WHERE h.moved"));
    }
}
