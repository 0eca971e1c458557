//! The one error type of the program.
//!
//! Owns: `Error`, its context variants (which database, which batch, which variable) and the questions that
//! decide what to do with an error: [`Error::is_transient`] (retry later) and [`Error::is_data_error`] (the
//! remote rejected the *rows*, not the connection), [`Error::side`] (which database it is about). Every
//! condition code branches on has its own variant; `Other` is only ever displayed. Does not own: exit codes
//! (main.rs maps errors to them), logging, nor how databases and locks are named (db.rs: `Side`, `Target`,
//! `LockKey`).

use std::fmt;

use crate::config::ConfigErrors;
pub use crate::db::Side;
use crate::db::{LockKey, Target};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug)]
pub enum Error {
    /// The configuration is invalid: every problem, each naming its variable.
    Config(ConfigErrors),
    /// Bad command line.
    Usage(String),
    /// A PostgreSQL error on one database; `target` is `host:port/db`, `context` says what we were doing.
    Db {
        side: Side,
        target: String,
        context: String,
        source: postgres::Error,
    },
    /// No connection could be had from a pool (the database is down, refuses, or hangs).
    Connect { side: Side, target: String, cause: String },
    /// Files, sockets, child processes.
    Io { context: String, source: std::io::Error },
    /// The server stopped answering in the middle of an operation; its outcome is unknown.
    Stalled {
        side: Side,
        target: String,
        what: String,
        after: std::time::Duration,
    },
    /// TLS setup (bad CA file, ...).
    Tls {
        side: Side,
        context: String,
        source: native_tls::Error,
    },
    /// A shutdown was requested while we were waiting to retry.
    Shutdown,
    /// Another session (another sync-process) holds this advisory lock on this database.
    Busy { lock: LockKey, target: Target },
    /// A thread of ours working on `target` ended without a result (it panicked, or ended at once again and
    /// again): the outcome of `what` is unknown.
    WorkerLost {
        target: Target,
        what: String,
        how: &'static str,
    },
    /// Our own bookkeeping broke an invariant (a bug), e.g. no batch in flight where one must be.
    Internal(String),
    /// The remote rejects every reading for a data reason: all `readings` of the batch and the `controls`
    /// other queued readings probed with it. A schema change, not poison: nothing is quarantined.
    RejectsEverything {
        target: Target,
        batch_id: String,
        readings: usize,
        controls: usize,
        first_error: String,
    },
    /// The central database refuses readings for a reason of its own — no partition for their timestamps, a
    /// sequence at its maximum, a missing grant or column, a feature it does not support — recognised by its
    /// cause, not its SQLSTATE class: the readings are not at fault, nothing is quarantined, the batch stays
    /// queued. `cause` names what is wrong and what to do (upload/fault.rs).
    CentralFault {
        target: Target,
        /// What we were doing: `uploading batch <id> (<n> readings)`.
        context: String,
        cause: String,
        sqlstate: String,
    },
    /// Anything else, already worded for a person.
    Other(String),
}

impl Error {
    pub fn db(side: Side, target: &str, context: impl Into<String>, source: postgres::Error) -> Error {
        Error::Db {
            side,
            target: target.to_string(),
            context: context.into(),
            source,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The SQLSTATE of a database error, if the server sent one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Db { source, .. } => source.code().map(|c| c.code()),
            _ => None,
        }
    }

    /// A failure of the link or of the server's availability: worth retrying with backoff, never a reason to
    /// give up on the rows themselves.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Io { .. } | Error::Stalled { .. } => true,
            Error::Db { source, .. } => pg_error_is_transient(source),
            _ => false,
        }
    }

    /// The remote rejected the data itself (SQLSTATE class 22 data exception or 23 integrity constraint):
    /// the same rows will be rejected again, so they must be isolated rather than retried. A connection,
    /// timeout, shutdown or schema error is never a data error.
    pub fn is_data_error(&self) -> bool {
        match self {
            Error::Db { source, .. } => pg_error_is_data_error(source),
            _ => false,
        }
    }

    /// Which database the error is about, when it is about one.
    pub fn side(&self) -> Option<Side> {
        match self {
            Error::Db { side, .. }
            | Error::Connect { side, .. }
            | Error::Stalled { side, .. }
            | Error::Tls { side, .. } => Some(*side),
            Error::Busy { target, .. }
            | Error::WorkerLost { target, .. }
            | Error::RejectsEverything { target, .. }
            | Error::CentralFault { target, .. } => Some(target.side()),
            Error::Config(_)
            | Error::Usage(_)
            | Error::Io { .. }
            | Error::Shutdown
            | Error::Internal(_)
            | Error::Other(_) => None,
        }
    }

    /// Short name of the kind of error, for log lines and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Usage(_) => "usage",
            Error::Db { .. } if self.is_data_error() => "data",
            Error::Db { .. } if self.is_transient() => "connection",
            Error::Db { .. } => "query",
            Error::Connect { .. } | Error::Stalled { .. } => "connection",
            Error::Io { .. } => "io",
            Error::Tls { .. } => "tls",
            Error::Shutdown => "shutdown",
            Error::CentralFault { .. } => "central",
            // Kept as they were named before these had variants of their own (log lines and metrics labels).
            Error::Busy { .. }
            | Error::WorkerLost { .. }
            | Error::Internal(_)
            | Error::RejectsEverything { .. }
            | Error::Other(_) => "other",
        }
    }
}

/// Classifies a `postgres::Error` as transient: closed connection, I/O, or a SQLSTATE of class 08
/// (connection exception), 53 (insufficient resources), 57 (operator intervention: shutdown, statement
/// timeout), 58 (system error), 40 (serialization failure, deadlock).
pub fn pg_error_is_transient(e: &postgres::Error) -> bool {
    if e.is_closed() || e.as_db_error().is_some_and(is_citus_connection_failure) {
        return true;
    }
    match e.code() {
        Some(code) => matches!(&code.code()[..2], "08" | "53" | "57" | "58" | "40"),
        // No SQLSTATE: the error came from the client side (I/O, protocol, timeout), not from the server.
        None => e.as_db_error().is_none(),
    }
}

/// Citus's errors for a worker it cannot reach or lost. They come as XX000 ("internal error"), but are about
/// the link between the coordinator and a worker: transient, never a reading's fault.
pub fn is_citus_connection_failure(db: &postgres::error::DbError) -> bool {
    let m = db.message();
    db.code().code() == "XX000"
        && (m.contains("connection to the remote node")
            || m.contains("failure on connection marked as essential")
            || m.contains("could not establish any connections to the node"))
}

/// Classifies a `postgres::Error` as a data error: SQLSTATE class 22 or 23.
pub fn pg_error_is_data_error(e: &postgres::Error) -> bool {
    e.code().is_some_and(|code| matches!(&code.code()[..2], "22" | "23"))
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(errs) => write!(f, "{errs}"),
            Error::Usage(msg) => f.write_str(msg),
            Error::Db {
                side,
                target,
                context,
                source,
            } => {
                write!(f, "{side} database {target}: {context}: {}", describe_pg_error(source))
            }
            Error::Connect { side, target, cause } => write!(f, "{side} database {target}: cannot connect: {cause}"),
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Stalled {
                side,
                target,
                what,
                after,
            } => {
                write!(
                    f,
                    "{side} database {target}: {what}: no answer within {after:?} (outcome unknown)"
                )
            }
            Error::Tls { side, context, source } => write!(f, "{side} database TLS: {context}: {source}"),
            Error::Shutdown => f.write_str("shutdown requested"),
            Error::Busy { lock, target } => match lock {
                LockKey::Drain => write!(
                    f,
                    "{target}: another sync-process is uploading from this database; this upload is skipped"
                ),
                LockKey::Cycle => write!(
                    f,
                    "another sync-process holds the cycle lock on the {target}; skipping this cycle"
                ),
                LockKey::Migrate => write!(f, "{target}: another sync-process holds the {}", lock.name()),
            },
            Error::WorkerLost { target, what, how } => write!(f, "{target}: {what}: {how}"),
            Error::Internal(msg) => f.write_str(msg),
            Error::RejectsEverything {
                target,
                batch_id,
                readings,
                controls,
                first_error,
            } => {
                write!(
                    f,
                    "the {target} rejects every one of the {readings} readings of batch {batch_id}"
                )?;
                if *controls == 0 {
                    f.write_str(
                        ", and no other reading is queued to tell readings at fault from a central that rejects \
                         everything: nothing quarantined, the batch stays claimed until a reading from outside it \
                         is accepted",
                    )?;
                } else {
                    write!(
                        f,
                        " for a data reason, and {controls} other queued reading(s) too (a schema change such as a \
                         new NOT NULL column?); nothing quarantined, the batch stays claimed"
                    )?;
                }
                write!(f, "; first error: {first_error}")
            }
            Error::CentralFault {
                target, context, cause, ..
            } => write!(f, "{target}: {context}: {cause}"),
            Error::Other(msg) => f.write_str(msg),
        }
    }
}

/// The server's message with its SQLSTATE and detail, or the client-side error.
pub fn describe_pg_error(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                // Details of constraint violations quote the offending values; keep them short.
                let detail: String = detail.chars().take(200).collect();
                s.push_str(&format!("; {detail}"));
            }
            s
        }
        None => {
            let mut s = e.to_string();
            if let Some(src) = std::error::Error::source(e) {
                s.push_str(&format!(": {src}"));
            }
            s
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Db { source, .. } => Some(source),
            Error::Io { source, .. } => Some(source),
            Error::Tls { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<ConfigErrors> for Error {
    fn from(e: ConfigErrors) -> Error {
        Error::Config(e)
    }
}
