//! The local quarantine: readings the remote rejected for a data reason, or that failed an UPLOAD_VALIDATE check,
//! kept until an operator acts.
//!
//! Owns: reading, retrying and discarding rows of `sync_quarantine`, and the `sync-process quarantine
//! list|retry|discard` command (its output on stdout). Moving a reading INTO the quarantine is part of the
//! upload protocol and lives in src/upload/poison.rs (rejected by the remote) and in the validated claim
//! statements of src/upload/sql.rs (failed a check; sqlstate NULL). Does not own: the table's schema
//! (sql/local).

use std::fmt::Write as _;

use postgres::types::Type;
use serde::Serialize;

use crate::cli::QuarantineCmd;
use crate::config::Config;
use crate::db::{ConnectionManager, Database};
use crate::error::{Error, Result, Side};
use crate::shutdown::Shutdown;

/// quarantined_at as RFC 3339 UTC with milliseconds (`2026-12-01T22:01:53.467Z`), like the logs and /status.
const AT_TEXT: &str = r#"to_char(quarantined_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"#;

/// One quarantined reading, as `quarantine list --json` prints it: keys in camelCase like /status and the
/// cycle result. Values are PostgreSQL's text forms (exact); `metadata` is the JSON text (or null for SQL
/// NULL); `quarantinedAt` is RFC 3339 UTC with milliseconds, the one time format of the logs and /status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuarantinedReading {
    pub id: i64,
    pub meter_id: String,
    pub timestamp: String,
    pub value: String,
    pub unit: String,
    pub metadata: Option<String>,
    pub error: String,
    pub sqlstate: Option<String>,
    pub quarantined_at: String,
}

/// Every quarantined reading, by id.
pub fn list(db: &Database) -> Result<Vec<QuarantinedReading>> {
    let mut c = db.try_get()?;
    let rows = c
        .query_typed(
            &format!(
                "SELECT id, meter_id, timestamp::text AS ts_text, value::text AS value_text, unit,
                        metadata::text AS metadata_text, error, sqlstate, {AT_TEXT} AS at_text
                 FROM sync_quarantine ORDER BY id"
            ),
            &[],
        )
        .map_err(|e| db.err("listing quarantined readings", e))?;
    Ok(rows.iter().map(from_row).collect())
}

/// A row whose first nine columns are those of [`QuarantinedReading`], in its order.
fn from_row(r: &postgres::Row) -> QuarantinedReading {
    QuarantinedReading {
        id: r.get(0),
        meter_id: r.get(1),
        timestamp: r.get(2),
        value: r.get(3),
        unit: r.get(4),
        metadata: r.get(5),
        error: r.get(6),
        sqlstate: r.get(7),
        quarantined_at: r.get(8),
    }
}

/// A bounded look for tools that must never carry whole payloads: the first `limit` (at least 1) quarantined
/// readings by id, with the texts (`meterId`, `value`, `unit`, `metadata`, `error`) cut to at most
/// `max_chars` (at least 4) characters in the database, so a big payload never leaves it (a cut text ends in
/// "..."), and how many readings are quarantined in all.
pub fn list_preview(db: &Database, limit: i64, max_chars: i32) -> Result<(Vec<QuarantinedReading>, u64)> {
    let cut =
        |expr: &str| format!("CASE WHEN char_length({expr}) > $2 THEN left({expr}, $2 - 3) || '...' ELSE {expr} END");
    let sql = format!(
        "SELECT id, {meter}, timestamp::text AS ts_text, {value}, {unit}, {metadata}, {error}, sqlstate,
                {AT_TEXT} AS at_text,
                (SELECT count(*) FROM sync_quarantine) AS total
         FROM sync_quarantine ORDER BY id LIMIT $1",
        meter = cut("meter_id::text"),
        value = cut("value::text"),
        unit = cut("unit"),
        metadata = cut("metadata::text"),
        error = cut("error"),
    );
    let mut c = db.try_get()?;
    let rows = c
        .query_typed(&sql, &[(&limit.max(1), Type::INT8), (&max_chars.max(4), Type::INT4)])
        .map_err(|e| db.err("listing quarantined readings", e))?;
    let total = rows.first().map_or(0, |r| r.get::<_, i64>(9));
    Ok((rows.iter().map(from_row).collect(), total.max(0) as u64))
}

/// Moves quarantined readings back into the upload queue (same id, values and created_at), all of them when
/// `ids` is empty. One transaction; when an id is not quarantined nothing changes and the error names it.
/// Returns how many moved.
pub fn retry(db: &Database, ids: &[i64]) -> Result<u64> {
    let mut c = db.try_get()?;
    let mut tx = c.transaction().map_err(|e| db.err("beginning quarantine retry", e))?;
    check_ids(&mut tx, db, ids)?;
    let all = ids.is_empty();
    let row = tx
        .query_typed_one(
            "WITH q AS (
               DELETE FROM sync_quarantine WHERE $1 OR id = ANY($2::int8[])
               RETURNING id, meter_id, timestamp, value, unit, metadata, created_at
             ), i AS (
               INSERT INTO meter_readings (id, meter_id, timestamp, value, unit, metadata, created_at)
               SELECT id, meter_id, timestamp, value, unit, metadata, created_at FROM q RETURNING 1
             )
             SELECT count(*) FROM i",
            &[(&all, Type::BOOL), (&ids, Type::INT8_ARRAY)],
        )
        .map_err(|e| db.err("moving quarantined readings back into the queue", e))?;
    tx.commit().map_err(|e| db.err("committing quarantine retry", e))?;
    let n: i64 = row.get(0);
    Ok(n.max(0) as u64)
}

/// Moves back into the queue the readings held by the `known-meter` check whose meter the local meters
/// table now holds (a meter created centrally reaches the box with the next download, after the upload of
/// the same cycle checked its readings). They are checked again by the next claim. Returns how many.
pub fn requeue_known_meters(db: &Database) -> Result<u64> {
    let mut c = db.try_get()?;
    let row = c
        .query_typed_one(
            "WITH q AS (
               DELETE FROM sync_quarantine q
               WHERE q.sqlstate IS NULL AND q.error LIKE 'known-meter:%'
                 AND EXISTS (SELECT 1 FROM meters m WHERE m.meter_id = q.meter_id)
               RETURNING id, meter_id, timestamp, value, unit, metadata, created_at
             ), i AS (
               INSERT INTO meter_readings (id, meter_id, timestamp, value, unit, metadata, created_at)
               SELECT id, meter_id, timestamp, value, unit, metadata, created_at FROM q RETURNING 1
             )
             SELECT count(*) FROM i",
            &[],
        )
        .map_err(|e| {
            db.err(
                "re-queueing the readings held by known-meter whose meter has arrived",
                e,
            )
        })?;
    let n: i64 = row.get(0);
    Ok(n.max(0) as u64)
}

/// Deletes quarantined readings for good: the given ids, or every one with `all`. One transaction; when an
/// id is not quarantined nothing changes and the error names it. Returns how many were deleted.
pub fn discard(db: &Database, ids: &[i64], all: bool) -> Result<u64> {
    if ids.is_empty() && !all {
        return Ok(0);
    }
    let mut c = db.try_get()?;
    let mut tx = c.transaction().map_err(|e| db.err("beginning quarantine discard", e))?;
    if !all {
        check_ids(&mut tx, db, ids)?;
    }
    let n = tx
        .execute("DELETE FROM sync_quarantine WHERE $1 OR id = ANY($2)", &[&all, &ids])
        .map_err(|e| db.err("discarding quarantined readings", e))?;
    tx.commit().map_err(|e| db.err("committing quarantine discard", e))?;
    Ok(n)
}

/// Fails naming the ids that are not in the quarantine.
fn check_ids(tx: &mut postgres::Transaction<'_>, db: &Database, ids: &[i64]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let rows = tx
        .query_typed(
            "SELECT x FROM unnest($1::int8[]) AS x WHERE NOT EXISTS (SELECT 1 FROM sync_quarantine q WHERE q.id = x)",
            &[(&ids, Type::INT8_ARRAY)],
        )
        .map_err(|e| db.err("checking quarantined ids", e))?;
    if rows.is_empty() {
        return Ok(());
    }
    let missing: Vec<String> = rows.iter().map(|r| r.get::<_, i64>(0).to_string()).collect();
    Err(Error::Other(format!(
        "no quarantined reading with id {}; nothing changed",
        missing.join(", ")
    )))
}

/// The human-readable table of `quarantine list`.
pub fn format_table(rows: &[QuarantinedReading]) -> String {
    if rows.is_empty() {
        return "no quarantined readings\n".to_string();
    }
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                printable(&r.meter_id, 40),
                r.timestamp.clone(),
                printable(&r.error, 100),
                r.quarantined_at.clone(),
            ]
        })
        .collect();
    let header = ["ID", "METER", "TIMESTAMP", "ERROR", "QUARANTINED AT"];
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cols: Vec<&str>| {
        let mut l = String::new();
        for (i, (c, w)) in cols.iter().zip(&widths).enumerate() {
            if i + 1 == cols.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in &cells {
        line(row.iter().map(String::as_str).collect());
    }
    let _ = writeln!(out, "{} quarantined reading(s)", rows.len());
    out
}

/// Control characters escaped, long text cut, so a row stays one line.
fn printable(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if out.chars().count() > max {
        out = out.chars().take(max.saturating_sub(3)).collect::<String>() + "...";
    }
    out
}

/// `sync-process quarantine list [--json] | retry [ID...] | discard ID...|--all`: prints to stdout.
pub fn command(cfg: &Config, cmd: &QuarantineCmd) -> Result<()> {
    let conns = ConnectionManager::new(cfg, Shutdown::new())?;
    let db = conns.db(Side::Local);
    match cmd {
        QuarantineCmd::List { json } => {
            let rows = list(db)?;
            if *json {
                let text = serde_json::to_string_pretty(&rows)
                    .map_err(|e| Error::Other(format!("encoding the quarantine list: {e}")))?;
                crate::output::println(&text)?;
            } else {
                crate::output::print(&format_table(&rows))?;
            }
        }
        QuarantineCmd::Retry { ids } => {
            let n = retry(db, ids)?;
            log::info!("quarantine: {n} reading(s) moved back to the upload queue");
            crate::output::println(&format!("{n} reading(s) moved back to the upload queue"))?;
        }
        QuarantineCmd::Discard { ids, all, yes } => {
            if *all && !*yes && !confirm_discard_all(list(db)?.len())? {
                crate::output::println("nothing discarded")?;
                return Ok(());
            }
            let n = discard(db, ids, *all)?;
            log::info!("quarantine: {n} reading(s) discarded");
            crate::output::println(&format!("{n} reading(s) discarded"))?;
        }
    }
    Ok(())
}

/// `discard --all` without `--yes`: asks on a terminal (stderr, then a line from stdin); without one (a
/// script, a pipe) refuses with a usage error, since nobody could have meant it unseen.
fn confirm_discard_all(n: usize) -> Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Err(Error::Usage(format!(
            "quarantine discard --all deletes all {n} quarantined reading(s) for good: add --yes to confirm \
             (stdin is not a terminal, so it cannot ask)"
        )));
    }
    let mut err = std::io::stderr();
    let _ = write!(err, "Delete all {n} quarantined reading(s) for good? [y/N] ");
    let _ = err.flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Error::io("reading the answer from stdin", e))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, meter: &str, err: &str) -> QuarantinedReading {
        QuarantinedReading {
            id,
            meter_id: meter.into(),
            timestamp: "2024-01-01 00:00:00".into(),
            value: "1.50".into(),
            unit: "kWh".into(),
            metadata: None,
            error: err.into(),
            sqlstate: Some("23514".into()),
            quarantined_at: "2024-01-02T00:00:00.000Z".into(),
        }
    }

    #[test]
    fn table_is_aligned_and_one_line_per_reading() {
        let t = format_table(&[row(7, "m-1", "check violation"), row(12345, "a\nb", &"x".repeat(300))]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].starts_with("ID     METER"), "{t}");
        assert!(lines[2].contains("a\\nb"), "{t}");
        assert!(lines[2].contains("..."), "{t}");
        assert_eq!(lines[3], "2 quarantined reading(s)");
        assert_eq!(format_table(&[]), "no quarantined readings\n");
    }
}
