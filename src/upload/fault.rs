//! Whose fault is a rejected upload: the central's own state, or the readings.
//!
//! Owns: recognising, from a remote error, the central database's own faults by their cause — no partition
//! for a reading's timestamp (23514 with no constraint name), a sequence at its maximum (2200H), a feature the
//! central does not support (0A000), a missing grant (42501), a missing column or table (42703, 42P01), a Citus
//! table distributed by a column the upload does not fill (22004, "the partition column ...") — and
//! wording each for an operator (which table, which timestamp range or sequence, what to do)
//! ([`CentralFault`]); whether an error may be about the readings, so that probing decides ([`maybe_data`]:
//! SQLSTATE classes 22 and 23, and Citus's XX000, which its COPY path reports for a worker's rejection); the
//! ledger's unique violation, also when Citus names a shard's constraint ([`is_ledger_conflict`]); and Citus's
//! worker-connection failures are transient (error.rs: `is_citus_connection_failure`), never data.
//! Does not own: probing, quarantining or retrying (the drain and poison isolation), nor the error type.
//! Pure functions of the server's error fields; no I/O.

use postgres::error::{DbError, SqlState};

use crate::error::is_citus_connection_failure;

/// The central's own reason for refusing readings, whatever they hold. Never a reason to quarantine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CentralFault {
    /// A partitioned table has no partition for a reading (23514 without a constraint name).
    NoPartition {
        table: String,
        /// The partition key of the first failing row, as the server printed it (from DETAIL).
        key: Option<String>,
    },
    /// A sequence reached its maximum (2200H), typically the seed's `id SERIAL` (int4).
    SequenceAtMaximum { sequence: Option<String>, message: String },
    /// 0A000: something the central cannot do with these rows (a compressed chunk, a distributed plan).
    Unsupported { message: String },
    /// 42501: the connecting role lacks a privilege.
    MissingGrant {
        /// (kind, name) from "permission denied for <kind> <name>": ("table", "meter_readings").
        object: Option<(String, String)>,
        message: String,
    },
    /// 42703 / 42P01: a column or table the upload writes does not exist on the central.
    MissingColumnOrTable { message: String, sqlstate: &'static str },
    /// 22004 from Citus, "the partition column of table T should have a value" (or "cannot be NULL"): the table
    /// is distributed by a column the upload does not fill (by site, without UPLOAD_SOURCE_COLUMN).
    UnfilledDistributionColumn { table: String, message: String },
}

/// The first and last timestamp of a batch (claim order is timestamp order), for the messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span<'a> {
    pub first: &'a str,
    pub last: &'a str,
    pub readings: usize,
}

impl CentralFault {
    /// Recognises the central's own faults by cause; None when the error may be about the readings (or is
    /// something else entirely).
    pub fn of(e: &postgres::Error) -> Option<CentralFault> {
        let db = e.as_db_error()?;
        CentralFault::of_db(db)
    }

    fn of_db(db: &DbError) -> Option<CentralFault> {
        let code = db.code();
        let message = db.message().to_string();
        if *code == SqlState::CHECK_VIOLATION
            && db.constraint().is_none()
            && message.starts_with("no partition of relation")
        {
            let table = db
                .table()
                .map(str::to_string)
                .or_else(|| quoted(&message).map(str::to_string))
                .unwrap_or_else(|| "meter_readings".to_string());
            let key = db.detail().and_then(partition_key).map(str::to_string);
            return Some(CentralFault::NoPartition { table, key });
        }
        if *code == SqlState::NULL_VALUE_NOT_ALLOWED {
            if let Some(rest) = message.strip_prefix("the partition column of table ") {
                if let Some(table) = rest
                    .strip_suffix(" should have a value")
                    .or_else(|| rest.strip_suffix(" cannot be NULL"))
                {
                    return Some(CentralFault::UnfilledDistributionColumn {
                        table: table.to_string(),
                        message,
                    });
                }
            }
        }
        if *code == SqlState::SEQUENCE_GENERATOR_LIMIT_EXCEEDED {
            return Some(CentralFault::SequenceAtMaximum {
                sequence: quoted(&message).map(str::to_string),
                message,
            });
        }
        if *code == SqlState::FEATURE_NOT_SUPPORTED {
            return Some(CentralFault::Unsupported { message });
        }
        if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            let object = message.strip_prefix("permission denied for ").and_then(|rest| {
                let (kind, name) = rest.split_once(' ')?;
                Some((kind.to_string(), name.trim_matches('"').to_string()))
            });
            return Some(CentralFault::MissingGrant { object, message });
        }
        if *code == SqlState::UNDEFINED_COLUMN || *code == SqlState::UNDEFINED_TABLE {
            let sqlstate = if *code == SqlState::UNDEFINED_COLUMN {
                "42703"
            } else {
                "42P01"
            };
            return Some(CentralFault::MissingColumnOrTable { message, sqlstate });
        }
        None
    }

    /// The SQLSTATE the fault was recognised by.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            CentralFault::NoPartition { .. } => "23514",
            CentralFault::SequenceAtMaximum { .. } => "2200H",
            CentralFault::Unsupported { .. } => "0A000",
            CentralFault::MissingGrant { .. } => "42501",
            CentralFault::MissingColumnOrTable { sqlstate, .. } => sqlstate,
            CentralFault::UnfilledDistributionColumn { .. } => "22004",
        }
    }

    /// The cause in an operator's words: what is wrong on the central, for which readings, and what to do.
    /// `role` is the connecting role (POSTGRES_CLIENT_USER).
    pub fn describe(&self, span: &Span<'_>, role: &str) -> String {
        let held = format!(
            "the {} reading(s) from {} to {} stay queued, nothing is quarantined",
            span.readings, span.first, span.last
        );
        match self {
            CentralFault::NoPartition { table, key } => format!(
                "the central table {table} has no partition for timestamp {} (no partition of relation \"{table}\" \
                 found for row, SQLSTATE 23514): {} reading(s) from {} to {} have none; create the partition(s) \
                 covering them; the batch stays queued, nothing is quarantined",
                key.as_deref().unwrap_or(span.first),
                span.readings,
                span.first,
                span.last
            ),
            CentralFault::SequenceAtMaximum { sequence, message } => {
                let seq = sequence.as_deref().unwrap_or("meter_readings_id_seq");
                format!(
                    "the central sequence {seq} reached its maximum ({message}, SQLSTATE 2200H): no reading can be \
                     inserted until it is widened, e.g. ALTER TABLE meter_readings ALTER COLUMN id TYPE bigint; \
                     ALTER SEQUENCE {seq} AS bigint; {held}"
                )
            }
            CentralFault::Unsupported { message } => format!(
                "the central database does not support inserting these readings: {message} (SQLSTATE 0A000; e.g. \
                 TimescaleDB before 2.11 refuses rows for a compressed chunk with a unique index: decompress it or \
                 upgrade; on Citus see README, \"At fleet scale\"); {held}"
            ),
            CentralFault::MissingGrant { message, .. }
                if message.starts_with("new row violates row-level security policy") =>
            {
                format!(
                    "the central refuses this site's bookkeeping rows for role {role}: {message} (SQLSTATE 42501): \
                     per-site row-level security (sql/per-site-remote-roles.sql) lets a role write only the source \
                     id that sync_site_role maps it to; set SYNC_SOURCE_ID to that source id, or map the role with \
                     the script; {held}"
                )
            }
            CentralFault::MissingGrant { object, message } => {
                let fix = match object {
                    Some((kind, name)) if kind == "sequence" => format!("GRANT USAGE ON SEQUENCE {name} TO {role}"),
                    Some((kind, name)) if kind == "table" => {
                        format!("GRANT {} ON {name} TO {role}", privileges_for(name))
                    }
                    _ => "run sql/least-privilege-remote-role.sql again".to_string(),
                };
                format!(
                    "the central role {role} lacks a privilege the upload needs: {message} (SQLSTATE 42501): {fix} \
                     (sql/least-privilege-remote-role.sql grants exactly what the daemon needs); {held}"
                )
            }
            CentralFault::MissingColumnOrTable { message, sqlstate } => format!(
                "the central schema does not match what the upload writes: {message} (SQLSTATE {sqlstate}): run `sync-process migrate \
                 --remote-only` as the owner, or add the column (see sql/remote/ and UPLOAD_SOURCE_COLUMN); {held}"
            ),
            CentralFault::UnfilledDistributionColumn { table, message } => format!(
                "the central table {table} is distributed (Citus) by a column the upload does not fill: {message} \
                 (SQLSTATE 22004): set UPLOAD_SOURCE_COLUMN to that column so each reading carries SYNC_SOURCE_ID \
                 (README, \"On Citus\", the layout by site); {held}"
            ),
        }
    }
}

/// The privileges the daemon's role needs on each of its central tables (sql/least-privilege-remote-role.sql).
fn privileges_for(table: &str) -> &'static str {
    match table {
        "sync_upload_ledger" => "INSERT, SELECT, DELETE",
        "sync_upload_chain" => "INSERT, SELECT, UPDATE",
        "meters" | "tenant" => "SELECT",
        _ => "INSERT",
    }
}

/// The first double-quoted name in a server message.
fn quoted(message: &str) -> Option<&str> {
    let (_, rest) = message.split_once('"')?;
    rest.split_once('"').map(|(name, _)| name)
}

/// `Partition key of the failing row contains ("timestamp") = (2025-01-01 00:00:00).` -> the key value.
fn partition_key(detail: &str) -> Option<&str> {
    let (_, rest) = detail.split_once(") = (")?;
    rest.strip_suffix(").").or_else(|| rest.strip_suffix(')'))
}

/// Whether a rejection may be about the readings themselves, so that probing decides: SQLSTATE class 22 (data
/// exception) or 23 (integrity constraint), or XX000, which Citus reports for a worker's rejection of a row
/// (its COPY path drops the worker's SQLSTATE) — unless it is a central fault by cause or a Citus
/// worker-connection failure.
pub fn maybe_data(e: &postgres::Error) -> bool {
    let Some(db) = e.as_db_error() else {
        return false;
    };
    if CentralFault::of_db(db).is_some() || is_citus_connection_failure(db) {
        return false;
    }
    let code = db.code().code();
    matches!(&code[..2], "22" | "23") || *db.code() == SqlState::INTERNAL_ERROR
}

/// What a remote rejection of an upload says about whose fault it is.
pub enum Verdict {
    /// The central's own: hold the batch, name the cause, quarantine nothing.
    Central(CentralFault),
    /// Perhaps the readings': probing decides.
    MaybeData,
    /// Neither (a connection, a timeout, a statement the central refuses outright): as any other error.
    Other,
}

/// The [`Verdict`] on an error of an upload or a probe.
pub fn verdict(e: &crate::error::Error) -> Verdict {
    match e {
        crate::error::Error::Db {
            side: crate::db::Side::Remote,
            source,
            ..
        } => match CentralFault::of(source) {
            Some(f) => Verdict::Central(f),
            None if maybe_data(source) => Verdict::MaybeData,
            None => Verdict::Other,
        },
        _ => Verdict::Other,
    }
}

/// A duplicate key on the upload ledger: the batch is already in. Plain PostgreSQL names the table and the
/// constraint; Citus relays a worker's error with neither, and its message names the shard's constraint
/// (`duplicate key value violates unique constraint "sync_upload_ledger_pkey_102040"`).
pub fn is_ledger_conflict(e: &postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| {
        *d.code() == SqlState::UNIQUE_VIOLATION
            && (d.table() == Some("sync_upload_ledger")
                || d.constraint()
                    .or_else(|| quoted(d.message()))
                    .is_some_and(is_ledger_key_name))
    })
}

/// `sync_upload_ledger_pkey` or `sync_upload_ledger_pkey_<shard id>`.
fn is_ledger_key_name(name: &str) -> bool {
    match name.strip_prefix("sync_upload_ledger_pkey") {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix('_')
            .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_key_names_of_plain_postgres_and_of_citus_shards() {
        assert!(is_ledger_key_name("sync_upload_ledger_pkey"));
        assert!(is_ledger_key_name("sync_upload_ledger_pkey_102040"));
        assert!(!is_ledger_key_name("sync_upload_ledger_pkey_"));
        assert!(!is_ledger_key_name("sync_upload_ledger_pkey_x1"));
        assert!(!is_ledger_key_name("meter_readings_pkey_102040"));
    }

    #[test]
    fn names_and_keys_from_server_messages() {
        assert_eq!(
            quoted("nextval: reached maximum value of sequence \"meter_readings_id_seq\" (2147483647)"),
            Some("meter_readings_id_seq")
        );
        assert_eq!(
            partition_key("Partition key of the failing row contains (\"timestamp\") = (2025-01-01 00:00:00)."),
            Some("2025-01-01 00:00:00")
        );
        assert_eq!(partition_key("something else"), None);
    }

    #[test]
    fn descriptions_name_the_cause_the_readings_and_the_fix() {
        let span = Span {
            first: "2024-12-31 23:10:00",
            last: "2025-01-01 00:49:00",
            readings: 100,
        };
        let gap = CentralFault::NoPartition {
            table: "meter_readings".into(),
            key: Some("2025-01-01 00:00:00".into()),
        };
        let text = gap.describe(&span, "sync_remote");
        for w in [
            "meter_readings",
            "no partition",
            "2025-01-01 00:00:00",
            "2024-12-31 23:10:00",
            "nothing is quarantined",
        ] {
            assert!(text.contains(w), "{w}: {text}");
        }
        let grant = CentralFault::MissingGrant {
            object: Some(("table".into(), "meter_readings".into())),
            message: "permission denied for table meter_readings".into(),
        };
        assert!(grant
            .describe(&span, "sync_remote")
            .contains("GRANT INSERT ON meter_readings TO sync_remote"));
        let seq = CentralFault::SequenceAtMaximum {
            sequence: Some("meter_readings_id_seq".into()),
            message: "nextval: reached maximum value of sequence \"meter_readings_id_seq\" (2147483647)".into(),
        };
        assert!(seq
            .describe(&span, "r")
            .contains("ALTER SEQUENCE meter_readings_id_seq AS bigint"));
        let unfilled = CentralFault::UnfilledDistributionColumn {
            table: "public.meter_readings".into(),
            message: "the partition column of table public.meter_readings should have a value".into(),
        };
        let text = unfilled.describe(&span, "r");
        assert!(
            text.contains("UPLOAD_SOURCE_COLUMN") && text.contains("public.meter_readings"),
            "{text}"
        );
    }
}
