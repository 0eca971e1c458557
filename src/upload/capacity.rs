//! How close the central's meter_readings id is to running out.
//!
//! Owns: reading the type of the remote `meter_readings.id` and the state of its sequence, and the warning
//! `check-config` prints and /status carries when the id is int4 (or int2) and its sequence is past half of
//! what the column can hold. The seed's `id SERIAL` is int4: at 1,000 sites x 100 meters x 1 reading / 15
//! min it runs out in about 224 days, and then every upload fails (2200H). Does not own: the failure itself
//! (fault.rs words it), the status server or check-config (they print what this returns).

use postgres::Client;

/// The central's id type, its sequence and how far the sequence has gone.
const ID_CAPACITY: &str = "
SELECT a.atttypid::regtype::text AS id_type, s.seq::text AS seq_name, pg_sequence_last_value(s.seq) AS last,
       p.seqmax AS seq_max
FROM pg_attribute a
CROSS JOIN LATERAL (SELECT pg_get_serial_sequence('meter_readings', 'id')::regclass AS seq) s
JOIN pg_sequence p ON p.seqrelid = s.seq
WHERE a.attrelid = to_regclass('meter_readings') AND a.attname = 'id' AND NOT a.attisdropped";

/// The warning when the remote id is int4/int2 and its sequence is past 50 % of what the column can hold;
/// None when it is not (or the table has no id with a sequence). An error when the catalog cannot be read.
pub fn id_capacity_warning(c: &mut Client) -> Result<Option<String>, postgres::Error> {
    let exists: bool = c
        .query_typed_one(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('meter_readings') \
             AND attname = 'id' AND NOT attisdropped)",
            &[],
        )?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let Some(row) = c.query_typed(ID_CAPACITY, &[])?.into_iter().next() else {
        return Ok(None);
    };
    let (id_type, seq, last, seq_max): (String, String, Option<i64>, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    Ok(warning(&id_type, &seq, last.unwrap_or(0), seq_max))
}

/// The pure rule behind [`id_capacity_warning`].
pub fn warning(id_type: &str, seq: &str, last: i64, seq_max: i64) -> Option<String> {
    let column_max: i64 = match id_type {
        "integer" => i64::from(i32::MAX),
        "smallint" => i64::from(i16::MAX),
        _ => return None,
    };
    let limit = column_max.min(seq_max).max(1);
    let used = i128::from(last.max(0)) * 100 / i128::from(limit);
    (i128::from(last.max(0)) * 2 > i128::from(limit)).then(|| {
        format!(
            "warning: the central meter_readings.id is {id_type} and its sequence {seq} is {used} % used ({last} of \
             {limit}): widen it to bigint before it runs out (then every upload fails with SQLSTATE 2200H): ALTER \
             TABLE meter_readings ALTER COLUMN id TYPE bigint; ALTER SEQUENCE {seq} AS bigint"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::warning;

    #[test]
    fn warns_past_half_of_an_int4_or_int2_id_only() {
        assert_eq!(warning("integer", "s", 1_073_741_823, i64::from(i32::MAX)), None);
        let w = warning("integer", "meter_readings_id_seq", 1_503_238_553, i64::from(i32::MAX)).expect("70 %");
        assert!(
            w.contains("70 %") && w.contains("integer") && w.contains("meter_readings_id_seq"),
            "{w}"
        );
        assert!(warning("bigint", "s", i64::MAX - 1, i64::MAX).is_none());
        assert!(warning("smallint", "s", 20_000, i64::MAX).is_some_and(|w| w.contains("61 %")));
        // A sequence capped below the column's maximum is what runs out first.
        assert!(warning("integer", "s", 600, 1000).is_some_and(|w| w.contains("60 %")));
    }
}
