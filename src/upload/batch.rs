//! The data of the upload protocol: readings as they travel, claimed batches, the claim cursor, outcomes.
//!
//! Owns: [`QueuedReading`], [`ClaimedBatch`] (and narrowing one to its good readings), [`ClaimCursor`],
//! [`UploadOutcome`] (and how a remote statement's result reads as one), the column arrays the remote
//! statements take ([`Columns`]), and turning claim result rows into batches. Pure except for reading
//! `postgres::Row`s. Does not own: running any statement (session.rs, uplink.rs), the binary values
//! (wire.rs).

use std::collections::HashSet;

use super::wire::{Jsonb, Numeric, Timestamp, Wire};

/// One queued reading as it travels: every value in PostgreSQL's binary format, as the local server sent it
/// and as the remote receives it (never decoded in between).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedReading {
    pub id: i64,
    pub meter_id: String,
    /// Microseconds since 2000-01-01, or ±infinity; no time zone.
    pub timestamp: Wire<Timestamp>,
    /// Exact digits and scale, or NaN / ±infinity.
    pub value: Wire<Numeric>,
    pub unit: String,
    /// None is SQL NULL (JSON null is a value holding `null`).
    pub metadata: Option<Wire<Jsonb>>,
}

/// A claimed batch: its id (also its key in the remote ledger) and its readings in upload order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedBatch {
    /// The batch uuid as text.
    pub batch_id: String,
    pub readings: Vec<QueuedReading>,
    /// The readings' row data as the claim's byte bound counts it (`sql::CLAIM_MAX_BYTES`); 0 when not
    /// known (a batch loaded again in recovery). Only sizes the next claim (sizer.rs).
    pub row_bytes: u64,
}

impl ClaimedBatch {
    /// The key to continue claiming after this batch.
    pub fn cursor(&self) -> Option<ClaimCursor> {
        self.readings.last().map(|r| ClaimCursor {
            timestamp: r.timestamp.clone(),
            id: r.id,
        })
    }

    pub fn len(&self) -> usize {
        self.readings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.readings.is_empty()
    }

    /// The same batch (same id) without the readings at `bad` (indexes into `readings`), order kept.
    pub fn without(&self, bad: &HashSet<usize>) -> ClaimedBatch {
        ClaimedBatch {
            batch_id: self.batch_id.clone(),
            readings: self
                .readings
                .iter()
                .enumerate()
                .filter(|(i, _)| !bad.contains(i))
                .map(|(_, r)| r.clone())
                .collect(),
            row_bytes: self.row_bytes,
        }
    }
}

/// The last claimed (timestamp, id): the next claim continues strictly after it (keyset paging, so a drain
/// never rescans the dead index entries its own deletes left behind).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimCursor {
    pub timestamp: Wire<Timestamp>,
    pub id: i64,
}

/// What the remote statement of [`super::UploadSyncManager::upload_batch`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadOutcome {
    /// The readings and the ledger row were inserted (this many readings).
    Uploaded(u64),
    /// The ledger already holds this batch id: its readings are in; nothing was inserted.
    AlreadyPresent,
    /// With several batches in flight: the batch before it was not in (yet) when it ran, so nothing was
    /// inserted; it is sent again.
    OutOfTurn,
}

impl UploadOutcome {
    /// The outcome of an upload statement of `batch` that inserted `rows` rows: none for a batch with
    /// readings means the chain check held it back.
    pub fn of(batch: &ClaimedBatch, rows: u64) -> UploadOutcome {
        if rows == 0 && !batch.is_empty() {
            UploadOutcome::OutOfTurn
        } else {
            UploadOutcome::Uploaded(batch.len() as u64)
        }
    }
}

/// The reading values as the five typed arrays of the upload and probe statements (`text[]`, `timestamp[]`,
/// `numeric[]`, `text[]`, `jsonb[]`), borrowing the readings' bytes.
pub(super) struct Columns<'r> {
    pub meter: Vec<&'r str>,
    pub ts: Vec<&'r Wire<Timestamp>>,
    pub value: Vec<&'r Wire<Numeric>>,
    pub unit: Vec<&'r str>,
    pub metadata: Vec<Option<&'r Wire<Jsonb>>>,
}

impl<'r> Columns<'r> {
    pub fn of(readings: &'r [QueuedReading]) -> Columns<'r> {
        Columns {
            meter: readings.iter().map(|r| r.meter_id.as_str()).collect(),
            ts: readings.iter().map(|r| &r.timestamp).collect(),
            value: readings.iter().map(|r| &r.value).collect(),
            unit: readings.iter().map(|r| r.unit.as_str()).collect(),
            metadata: readings.iter().map(|r| r.metadata.as_ref()).collect(),
        }
    }
}

/// A reading from the six columns of `sql::reading_values!` starting at `offset`. An error if a column is
/// not of the type the statement casts it to (it cannot be, short of a changed statement).
pub(super) fn reading_from_row(row: &postgres::Row, offset: usize) -> Result<QueuedReading, postgres::Error> {
    Ok(QueuedReading {
        id: row.try_get(offset)?,
        meter_id: row.try_get(offset + 1)?,
        timestamp: row.try_get(offset + 2)?,
        value: row.try_get(offset + 3)?,
        unit: row.try_get(offset + 4)?,
        metadata: row.try_get(offset + 5)?,
    })
}

/// The claimed batch of a claim's result rows (batch id in column `offset`, the reading after it, then the
/// running byte sum of `sql::claimed_bytes!`); None when nothing was claimed.
pub(super) fn batch_from_rows(rows: &[postgres::Row], offset: usize) -> Result<Option<ClaimedBatch>, postgres::Error> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let Some(batch_id) = first.try_get::<_, Option<String>>(offset)? else {
        return Ok(None);
    };
    let readings = rows
        .iter()
        .map(|r| reading_from_row(r, offset + 1))
        .collect::<Result<_, _>>()?;
    let row_bytes = match rows.last() {
        Some(last) => last.try_get::<_, Option<i64>>(offset + 7)?.unwrap_or(0).max(0) as u64,
        None => 0,
    };
    Ok(Some(ClaimedBatch {
        batch_id,
        readings,
        row_bytes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1.50: one digit group (weight 0, positive, scale 2): 1, 5000.
    const ONE_FIFTY: [u8; 12] = [0, 2, 0, 0, 0, 0, 0, 2, 0, 1, 0x13, 0x88];

    fn reading(id: i64, second: i64) -> QueuedReading {
        QueuedReading {
            id,
            meter_id: format!("m{id}"),
            timestamp: Wire::from_micros(second * 1_000_000),
            value: Wire::from_bytes(ONE_FIFTY.to_vec()),
            unit: "kWh".into(),
            metadata: (id % 2 == 0).then(|| Wire::from_bytes(b"\x01null".to_vec())),
        }
    }

    fn batch(ids: &[i64]) -> ClaimedBatch {
        ClaimedBatch {
            batch_id: "b".into(),
            readings: ids.iter().map(|&i| reading(i, i)).collect(),
            row_bytes: 0,
        }
    }

    #[test]
    fn the_cursor_is_the_key_of_the_last_reading() {
        assert_eq!(batch(&[]).cursor(), None);
        assert_eq!(
            batch(&[3, 1, 7]).cursor(),
            Some(ClaimCursor {
                timestamp: Wire::from_micros(7_000_000),
                id: 7
            })
        );
        assert_eq!(batch(&[3, 1, 7]).len(), 3);
        assert!(batch(&[]).is_empty());
    }

    #[test]
    fn narrowing_keeps_the_id_and_the_order_of_the_good_readings() {
        let b = batch(&[10, 11, 12, 13, 14]);
        let narrowed = b.without(&HashSet::from([0, 3]));
        assert_eq!(narrowed.batch_id, b.batch_id);
        assert_eq!(
            narrowed.readings.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![11, 12, 14]
        );
        assert_eq!(b.without(&HashSet::new()), b);
        assert!(b.without(&(0..5).collect()).is_empty());
    }

    #[test]
    fn no_row_inserted_for_a_batch_with_readings_is_out_of_turn() {
        assert_eq!(UploadOutcome::of(&batch(&[1, 2]), 0), UploadOutcome::OutOfTurn);
        assert_eq!(UploadOutcome::of(&batch(&[1, 2]), 2), UploadOutcome::Uploaded(2));
        // An empty batch (every reading quarantined) inserts nothing and is in.
        assert_eq!(UploadOutcome::of(&batch(&[]), 0), UploadOutcome::Uploaded(0));
    }

    #[test]
    fn columns_are_the_readings_in_order_with_null_metadata_kept() {
        let b = batch(&[1, 2, 3]);
        let c = Columns::of(&b.readings);
        assert_eq!(c.meter, vec!["m1", "m2", "m3"]);
        assert_eq!(c.ts[2].to_text(), "2000-01-01 00:00:03");
        assert!(c.value.iter().all(|v| v.bytes() == ONE_FIFTY));
        assert_eq!(c.unit, vec!["kWh"; 3]);
        assert_eq!(
            c.metadata.iter().map(|m| m.map(Wire::bytes)).collect::<Vec<_>>(),
            vec![None, Some(&b"\x01null"[..]), None]
        );
    }
}
